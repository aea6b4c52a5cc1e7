"""Build script: only declares the Cython extensions of mq._core."""
from Cython.Build import cythonize
from setuptools import Extension, setup

CORE_MODULES = ["frames", "message", "msgqueue", "topic", "headers", "hashring", "records",
                "paged", "replay", "delivery", "publish", "channel", "connection", "idmap",
                "storecore", "dedup"]
LIBRARIES = {"replay": ["z"]}  # zlib's crc32, called from C per record

extensions = [
    Extension(f"mq._core.{name}", [f"mq/_core/{name}.pyx"], extra_compile_args=["-O2"],
              libraries=LIBRARIES.get(name, []))
    for name in CORE_MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False},
    )
)
