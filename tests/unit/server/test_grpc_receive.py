"""``ModelInfer`` requests decoded with their raw inputs left in the bytes received."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from protos import inference_pb2 as pb
from server.grpc.converters import infer_request, receive_infer


def _request(seed: int) -> pb.ModelInferRequest:
    """Every kind of field a client sends, raw inputs of random sizes among them."""
    rng = np.random.default_rng(seed)
    message = pb.ModelInferRequest(model_name="m", model_version="3", id=f"call-{seed}")
    message.parameters["priority"].int64_param = int(rng.integers(0, 2**40))
    message.parameters["tag"].string_param = "x" * int(rng.integers(0, 300))
    for index in range(int(rng.integers(1, 5))):
        size = int(rng.choice([0, 1, 127, 128, 16_384, 602_112]))
        entry = message.inputs.add(name=f"in{index}", datatype="UINT8", shape=[size])
        entry.parameters["binary_data_size"].int64_param = size
        message.raw_input_contents.append(rng.bytes(size))
    message.outputs.add(name="out").parameters["classification"].int64_param = 2
    return message


@pytest.mark.parametrize("seed", range(8))
def test_a_request_decodes_to_the_same_message_and_its_raw_inputs(seed: int) -> None:
    """Put back together, the two parts are the message the client sent."""
    sent = _request(seed)
    data = sent.SerializeToString()

    received = receive_infer(data)

    assert not received.message.raw_input_contents
    assert [bytes(raw) for raw in received.raw] == list(sent.raw_input_contents)
    whole = pb.ModelInferRequest()
    whole.CopyFrom(received.message)
    whole.raw_input_contents.extend(bytes(raw) for raw in received.raw)
    assert whole == sent


def test_raw_inputs_are_views_of_the_bytes_received_not_copies() -> None:
    """No input's bytes are copied on the way in."""
    data = _request(1).SerializeToString()

    received = receive_infer(data)

    assert received.raw
    assert all(raw.obj is data for raw in received.raw)


def test_the_decoded_request_reads_its_inputs_from_the_views() -> None:
    """The service's request holds the tensors the raw inputs carried."""
    image = np.arange(2 * 3, dtype=np.float32).reshape(2, 3)
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    message.raw_input_contents.append(image.tobytes())

    received = receive_infer(message.SerializeToString())
    parsed = infer_request(received.message, received.raw)

    np.testing.assert_array_equal(parsed.inputs[0].data, image)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x08", "truncated varint"),  # a varint field's key, then nothing
        (b"\x3a\x05abc", "truncated field"),  # raw_input_contents claims 5 bytes, has 3
        (b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "longer than 64 bits"),
        (b"\x0b", "wire type 3"),  # a group: no field of these messages is one
    ],
)
def test_a_malformed_request_is_refused_as_undecodable(data: bytes, problem: str) -> None:
    """Bytes that are no message fail as upb's own parse would: ``DecodeError``."""
    with pytest.raises(DecodeError, match=problem):
        receive_infer(data)


def test_a_request_with_typed_contents_only_decodes_whole() -> None:
    """No raw inputs: the message is the one sent, with nothing set apart."""
    sent = pb.ModelInferRequest(model_name="m")
    sent.inputs.add(name="x", datatype="FP32", shape=[3]).contents.fp32_contents.extend([1, 2, 3])

    received = receive_infer(sent.SerializeToString())

    assert received.message == sent
    assert received.raw == []
