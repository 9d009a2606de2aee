"""Lazy imports of TensorFlow, Keras and LiteRT.

The gateway imports ``compress`` for its types and options but must never pay
for (or be exposed to) TensorFlow, so every heavy import goes through these
functions, called inside the functions that need them. A missing extra turns
into ``RuntimeUnavailable`` with the install hint, not an ``ImportError`` deep
in a job.

TensorFlow and Keras ship no type information; models cross this package as
``Any`` under the alias ``KerasModel`` so signatures still say what they hold.
"""

from __future__ import annotations

import importlib
import os
from functools import cache
from typing import Any

from compress.errors import RuntimeUnavailable

KerasModel = Any

_INSTALL_HINT = "install the 'compress' extra (pip install 'sealserve[compress]')"


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise RuntimeUnavailable(
            f"model compression needs {name.partition('.')[0]}: {_INSTALL_HINT}", detail=repr(exc)
        ) from exc


@cache
def tensorflow() -> Any:
    """Import TensorFlow once, quietly, with deterministic kernels.

    Determinism makes a job reproducible: the same upload, data and options
    give the same model and report (on the same machine and versions), which
    is what an operator re-running a job to explain a report expects. A
    compress job owns its process, so the global switch hurts no one.
    """
    # C++ INFO/WARNING lines (oneDNN notices, CPU feature hints) are noise in a
    # job's log; real failures still raise.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    tf = _import("tensorflow")
    tf.get_logger().setLevel("ERROR")
    tf.config.experimental.enable_op_determinism()
    return tf


@cache
def keras() -> Any:
    """Import Keras 3 on the TensorFlow backend (the converter needs TF graphs)."""
    tensorflow()
    module = _import("keras")
    backend = module.backend.backend()
    if backend != "tensorflow":
        raise RuntimeUnavailable(
            "model compression needs Keras on the TensorFlow backend",
            detail=f"KERAS_BACKEND is {backend!r}",
        )
    return module


@cache
def litert_interpreter() -> Any:
    """Return LiteRT's ``Interpreter`` class (the runtime the workers serve with)."""
    return _import("ai_edge_litert.interpreter").Interpreter


@cache
def litert_schema() -> Any:
    """Return LiteRT's generated flatbuffer schema module, to read ``.tflite`` files."""
    return _import("ai_edge_litert.schema_py_generated")
