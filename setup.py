"""Build script: only declares the Cython extensions of mq._core."""
from Cython.Build import cythonize
from setuptools import Extension, setup

CORE_MODULES = ["frames", "message", "msgqueue", "topic", "headers", "hashring", "records",
                "paged"]

extensions = [
    Extension(f"mq._core.{name}", [f"mq/_core/{name}.pyx"], extra_compile_args=["-O2"])
    for name in CORE_MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False},
    )
)
