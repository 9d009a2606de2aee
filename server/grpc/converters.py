"""Protobuf (``inference.*``) ⇄ service types: the only code that knows both.

Inputs arrive either as typed ``contents`` or as ``raw_input_contents`` (one
entry per input, in order); outputs always leave as ``raw_output_contents``,
which every Open Inference Protocol client reads and which costs no
per-element encoding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from google.protobuf.message import DecodeError

from protos import inference_pb2 as pb
from server.service.datatypes import element_count, from_raw, numpy_dtype, to_raw
from server.service.errors import InvalidRequest
from server.service.types import InferRequest, InferResponse, RequestedOutput, Tensor

if TYPE_CHECKING:
    from collections.abc import Sequence

# Which typed-contents field carries each datatype (FP16 travels only raw).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


_RAW_INPUTS = pb.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number
_VARINT, _FIXED64, _DELIMITED, _FIXED32 = 0, 1, 2, 5
"""Protobuf wire types (groups, 3 and 4, have no place in these messages)."""
_MORE = 0x80
"""Set in every byte of a varint but its last."""
_VARINT_BITS = 64


class ReceivedInfer(NamedTuple):
    """A ``ModelInferRequest`` as it arrived: its raw inputs apart, uncopied."""

    message: pb.ModelInferRequest
    """Every field but ``raw_input_contents``."""
    raw: list[memoryview]
    """``raw_input_contents``, in order: views of the bytes received."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and where the next field starts."""
    value = shift = 0
    while shift < _VARINT_BITS:
        if pos >= len(data):
            raise DecodeError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & ~_MORE) << shift
        if not byte & _MORE:
            return value, pos
        shift += 7
    raise DecodeError("varint longer than 64 bits")


def receive_infer(data: bytes) -> ReceivedInfer:
    """Decode a received ``ModelInferRequest`` without copying its raw inputs.

    The gRPC request deserializer of ``ModelInfer``. upb copies a bytes field
    when it parses one and again when Python reads it: two copies of a 602 KB
    image into fresh memory, which cost a bare ``grpc.aio`` handler a third
    to a half of its throughput. So the message's top-level fields are walked here:
    ``raw_input_contents`` become views of ``data``, and upb parses the rest
    as usual (a malformed message fails as it would there: ``DecodeError``).
    """
    view = memoryview(data)
    kept: list[memoryview] = []
    raw: list[memoryview] = []
    pos, end = 0, len(data)
    while pos < end:
        start = pos
        key, pos = _varint(data, pos)
        wire = key & 7
        if wire == _VARINT:
            pos = _varint(data, pos)[1]
        elif wire == _FIXED64:
            pos += 8
        elif wire == _FIXED32:
            pos += 4
        elif wire == _DELIMITED:
            length, pos = _varint(data, pos)
            pos += length
        else:
            raise DecodeError(f"unexpected wire type {wire}")
        if pos > end:
            raise DecodeError("truncated field")
        if key >> 3 == _RAW_INPUTS and wire == _DELIMITED:
            raw.append(view[pos - length : pos])
        else:
            kept.append(view[start:pos])
    rest = b"".join(kept) if raw else data  # typed contents only: nothing to leave out
    return ReceivedInfer(pb.ModelInferRequest.FromString(rest), raw)


def _typed(entry: Any, datatype: str, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidRequest(f"input '{entry.name}': {datatype} must be sent in raw_input_contents")
    values = getattr(entry.contents, field)
    if len(values) != element_count(shape):
        raise InvalidRequest(
            f"input '{entry.name}': {len(values)} values in {field} for shape {list(shape)} "
            f"({element_count(shape)} expected)"
        )
    dtype = numpy_dtype(datatype)
    if datatype == "BYTES":
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    wide = np.asarray(values)
    if dtype.kind in "iu" and wide.size:
        limits = np.iinfo(dtype)
        if wide.min() < limits.min or wide.max() > limits.max:
            raise InvalidRequest(f"input '{entry.name}': values out of range for {datatype}")
    return wide.astype(dtype, copy=False).reshape(shape)


def _parameters(params: Any) -> dict[str, Any]:
    return {
        key: getattr(value, value.WhichOneof("parameter_choice") or "bool_param")
        for key, value in params.items()
    }


def infer_request(message: pb.ModelInferRequest, raw: Sequence[memoryview]) -> InferRequest:
    """Decode a ``ModelInferRequest``; every problem names the input.

    ``raw``: its ``raw_input_contents``, which arrive apart (``receive_infer``).
    """
    if raw and len(raw) != len(message.inputs):
        raise InvalidRequest(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs"
        )
    inputs = []
    for index, entry in enumerate(message.inputs):
        if not entry.name:
            raise InvalidRequest(f"inputs[{index}] needs a name")
        shape = tuple(int(dim) for dim in entry.shape)
        if any(dim < 0 for dim in shape):
            raise InvalidRequest(f"input '{entry.name}': shape must not be negative")
        numpy_dtype(entry.datatype)
        if "shared_memory_region" in entry.parameters:
            raise InvalidRequest(f"input '{entry.name}': shared memory is not supported")
        if raw:
            array = from_raw(raw[index], entry.datatype, shape, name=entry.name)
        else:
            array = _typed(entry, entry.datatype, shape)
        inputs.append(Tensor(entry.name, entry.datatype, shape, array))
    if not inputs:
        raise InvalidRequest("request must have at least one input")
    return InferRequest(
        inputs=tuple(inputs),
        outputs=tuple(RequestedOutput(name=o.name) for o in message.outputs),
        id=message.id or None,
        parameters=_parameters(message.parameters),
        one_per_turn=True,
    )


def infer_response(response: InferResponse) -> pb.ModelInferResponse:
    """Encode outputs as tensor metadata plus ``raw_output_contents``."""
    message = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id or "",
    )
    for tensor in response.outputs:
        message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape))
        message.raw_output_contents.append(to_raw(tensor.data, tensor.datatype))
    return message


def model_metadata(data: dict[str, Any]) -> pb.ModelMetadataResponse:
    """The service's metadata dict as a ``ModelMetadataResponse``."""
    message = pb.ModelMetadataResponse(
        name=data["name"], versions=data["versions"], platform=data["platform"]
    )
    for tensor in data["inputs"]:
        message.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
    for tensor in data["outputs"]:
        message.outputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
    return message
