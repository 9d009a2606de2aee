"""A TFLite model's inputs and outputs, in Open Inference Protocol terms, as plain data.

The gateway validates every request against this (names, datatypes, shapes)
without loading the model or importing LiteRT, so it is computed once, when
the model is compressed, and stored with it. Names are the signature's names
when the model has a signature (stable across converter versions), otherwise
the tensor names. Shapes come from ``shape_signature``: -1 marks a dynamic
dimension, which the ``shape`` field (the allocated shape) would hide as 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compress import _tf
from compress.errors import UnsupportedFormat

SERVING_KEY = "serving_default"

_OIP_DATATYPES: dict[type[np.generic], str] = {
    np.bool_: "BOOL",
    np.uint8: "UINT8",
    np.uint16: "UINT16",
    np.uint32: "UINT32",
    np.uint64: "UINT64",
    np.int8: "INT8",
    np.int16: "INT16",
    np.int32: "INT32",
    np.int64: "INT64",
    np.float16: "FP16",
    np.float32: "FP32",
    np.float64: "FP64",
    np.bytes_: "BYTES",
    np.str_: "BYTES",
    np.object_: "BYTES",
}


def oip_datatype(dtype: Any) -> str:
    """The Open Inference Protocol name of a numpy dtype (``FP32``, ``INT8``, ``BYTES``...)."""
    kind = np.dtype(dtype).type
    try:
        return _OIP_DATATYPES[kind]
    except KeyError:
        raise UnsupportedFormat(f"tensor type {np.dtype(dtype).name} cannot be served") from None


def _tensor(name: str, detail: dict[str, Any]) -> dict[str, Any]:
    scale, zero_point = detail["quantization"]
    return {
        "name": name,
        "datatype": oip_datatype(detail["dtype"]),
        "shape": [int(dim) for dim in detail["shape_signature"]],
        "quantization": (
            {"scale": float(scale), "zero_point": int(zero_point)} if float(scale) > 0 else None
        ),
    }


def _ordered(details: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        _tensor(name, detail)
        for name, detail in sorted(details.items(), key=lambda item: item[1]["index"])
    ]


def extract_signature(content: bytes) -> dict[str, Any]:
    """Describe a TFLite model's inputs and outputs as a JSON-serialisable dict.

    ``{"signature_key": str | None, "inputs": [...], "outputs": [...]}``, each
    tensor ``{"name", "datatype", "shape", "quantization"}``, where
    ``quantization`` is ``{"scale", "zero_point"}`` for a quantized tensor (a
    client of an int8-I/O model needs both) and ``None`` otherwise.
    """
    interpreter_class = _tf.litert_interpreter()
    try:
        interpreter = interpreter_class(model_content=content)
    except (ValueError, RuntimeError) as exc:
        raise UnsupportedFormat(
            "the TFLite model does not load in LiteRT", detail=repr(exc)
        ) from exc
    signatures = interpreter.get_signature_list()
    if signatures:
        key = SERVING_KEY if SERVING_KEY in signatures else min(signatures)
        runner = interpreter.get_signature_runner(key)
        return {
            "signature_key": key,
            "inputs": _ordered(runner.get_input_details()),
            "outputs": _ordered(runner.get_output_details()),
        }
    return {
        "signature_key": None,
        "inputs": [_tensor(detail["name"], detail) for detail in interpreter.get_input_details()],
        "outputs": [_tensor(detail["name"], detail) for detail in interpreter.get_output_details()],
    }
