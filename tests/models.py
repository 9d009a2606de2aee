"""Test models built here with TensorFlow (once per session through fixtures)."""

from __future__ import annotations

import os

import numpy as np

# The Open Inference Protocol datatypes a TFLite signature can carry.
DATATYPES = (
    "BOOL",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
)


def identity_model() -> bytes:
    """A TFLite model with one input ``x_<type>`` [-1, 3] and one output ``y_<type>`` per datatype.

    Each output is its input reshaped to its own shape: builtin RESHAPE only,
    so the model runs in LiteRT workers like any upload.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf_types = {
        "BOOL": tf.bool,
        "INT8": tf.int8,
        "INT16": tf.int16,
        "INT32": tf.int32,
        "INT64": tf.int64,
        "UINT8": tf.uint8,
        "UINT16": tf.uint16,
        "UINT32": tf.uint32,
        "UINT64": tf.uint64,
        "FP16": tf.float16,
        "FP32": tf.float32,
        "FP64": tf.float64,
        "BYTES": tf.string,
    }
    specs = [tf.TensorSpec([None, 3], tf_types[d], name=f"x_{d.lower()}") for d in DATATYPES]

    class Identity(tf.Module):
        @tf.function(input_signature=specs)
        def serve(self, *inputs):
            return {
                f"y_{d.lower()}": tf.reshape(x, tf.shape(x))
                for d, x in zip(DATATYPES, inputs, strict=True)
            }

    module = Identity()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module
    )
    return converter.convert()


def widening_model(factor: int) -> bytes:
    """A TFLite model whose output ``y`` [-1, n * factor] is its input ``x`` [-1, n] repeated.

    Builtin TILE only: answers ``factor`` times the size of the calls, to
    test what a worker does when its answers outgrow its requests.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    class Widen(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.tile(x, [1, factor])}

    module = Widen()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module
    )
    return converter.convert()


def sample(datatype: str) -> np.ndarray:
    """Two rows of edge values for ``datatype`` (extremes, zero, non-ASCII bytes)."""
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if datatype == "BYTES":
        return np.array(
            [[b"", b"caf\xc3\xa9", b"x" * 40], [b"a", b"\xff\x00bin", b"z"]], dtype=object
        )
    dtype = np.dtype(
        datatype.replace("FP", "float").replace("UINT", "uint").replace("INT", "int").lower()
    )
    if dtype.kind == "f":
        info = np.finfo(dtype)
        return np.array([[info.min, 0.0, info.max], [-1.5, info.tiny, 3.25]], dtype=dtype)
    info = np.iinfo(dtype)
    return np.array([[info.min, 0, info.max], [1, info.max - 1, info.min + 1]], dtype=dtype)
