import json

import numpy as np
import pytest

from compress.errors import UnsupportedFormat
from compress.signature import extract_signature, oip_datatype


def test_float_model_signature_uses_names_and_dynamic_batch(cnn_tflite):
    """The signature lists FP32 tensors by signature name, with -1 for the batch."""
    signature = extract_signature(cnn_tflite)
    assert signature["signature_key"] == "serving_default"
    (tensor_in,) = signature["inputs"]
    (tensor_out,) = signature["outputs"]
    assert tensor_in == {
        "name": tensor_in["name"],
        "datatype": "FP32",
        "shape": [-1, 8, 8, 1],
        "quantization": None,
    }
    assert tensor_out["datatype"] == "FP32"
    assert tensor_out["shape"] == [-1, 10]
    assert ":" not in tensor_in["name"]
    json.dumps(signature)


def test_int8_io_signature_carries_scale_and_zero_point(cnn_tflite_int8_io):
    """int8 tensors are INT8 with the quantization a client needs to feed them."""
    signature = extract_signature(cnn_tflite_int8_io)
    (tensor_in,) = signature["inputs"]
    assert tensor_in["datatype"] == "INT8"
    assert tensor_in["quantization"]["scale"] > 0
    assert isinstance(tensor_in["quantization"]["zero_point"], int)
    assert signature["outputs"][0]["datatype"] == "INT8"


@pytest.mark.parametrize(
    ("dtype", "name"),
    [
        (np.float32, "FP32"),
        (np.float16, "FP16"),
        (np.float64, "FP64"),
        (np.int8, "INT8"),
        (np.uint8, "UINT8"),
        (np.int16, "INT16"),
        (np.int32, "INT32"),
        (np.int64, "INT64"),
        (np.bool_, "BOOL"),
        (np.bytes_, "BYTES"),
        (np.object_, "BYTES"),
    ],
)
def test_numpy_types_map_to_open_inference_protocol_names(dtype, name):
    """Each tensor type gets its Open Inference Protocol datatype name."""
    assert oip_datatype(dtype) == name


def test_unservable_types_are_refused():
    """A type the protocol cannot carry (complex) is refused."""
    with pytest.raises(UnsupportedFormat, match="complex64"):
        oip_datatype(np.complex64)


def test_bytes_that_do_not_load_are_refused():
    """A signature cannot be read from bytes LiteRT rejects."""
    with pytest.raises(UnsupportedFormat, match="does not load"):
        extract_signature(b"\x00" * 32)
