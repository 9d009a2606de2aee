"""Protobuf (``inference.*``) ⇄ service types: the only code that knows both.

Inputs arrive either as typed ``contents`` or as ``raw_input_contents`` (one
entry per input, in order); outputs always leave as ``raw_output_contents``,
which every Open Inference Protocol client reads and which costs no
per-element encoding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from protos import inference_pb2 as pb
from server.service.datatypes import element_count, from_raw, numpy_dtype, to_raw
from server.service.errors import InvalidRequest
from server.service.types import InferRequest, InferResponse, RequestedOutput, Tensor

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


def infer_request(message: pb.ModelInferRequest) -> InferRequest:
    """Decode a ``ModelInferRequest``; every problem names the input."""
    raw = list(message.raw_input_contents)
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
