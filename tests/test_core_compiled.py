"""The Cython core is what runs: every mq._core module is a compiled extension module, with no
pure-Python fallback (a .py beside the .pyx, pyximport) in the way."""
from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys

import pytest

import mq._core

CORE_DIR = os.path.dirname(mq._core.__file__)
PYX_MODULES = sorted(name[:-4] for name in os.listdir(CORE_DIR) if name.endswith(".pyx"))


def test_core_has_modules():
    """Design (mq/_core is Cython): the listing below is not vacuous."""
    assert {"frames", "message", "msgqueue"} <= set(PYX_MODULES)


@pytest.mark.parametrize("name", PYX_MODULES)
def test_core_module_is_a_compiled_extension(name: str):
    """Design (mq/_core is Cython): mq._core.<name> is loaded by the extension loader from a
    shared library in the package, and no .py of the same name could shadow it."""
    module = importlib.import_module(f"mq._core.{name}")
    assert isinstance(module.__loader__, importlib.machinery.ExtensionFileLoader), module
    assert module.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert os.path.dirname(module.__file__) == CORE_DIR
    assert not os.path.exists(os.path.join(CORE_DIR, f"{name}.py"))


def test_protocol_layer_uses_the_compiled_codec():
    """Design (mq/_core is Cython): the connection and channel import the compiled frame codec,
    not some other `frames`."""
    from mq.amqp import channel, connection

    compiled = sys.modules["mq._core.frames"]
    assert connection.frames is compiled and channel.frames is compiled
    assert isinstance(compiled.__loader__, importlib.machinery.ExtensionFileLoader)
