"""Conversion between the service layer's types and the worker protocol's messages.

The only module that knows both ``server.service.types`` and ``worker_pb2``
(MLServer's ``grpc/converters.py`` role). Tensor data crosses as raw bytes in
both directions: ``to_raw`` on the way out, ``numpy.frombuffer`` (through
``from_raw``) on the way in, so nothing here loops over elements except for
``BYTES`` tensors, whose elements are length-prefixed. A call's large inputs
can stay out of its message altogether (``call_to_pb``), as views of the
tensors' own memory that the local hop sends beside it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, cast

from protos import worker_pb2
from server.service.datatypes import from_raw, raw_view, to_raw
from server.service.errors import InvalidRequest
from server.service.types import ModelKey, Tensor

if TYPE_CHECKING:
    from collections.abc import Sequence

DETACHED_BYTES = 64 * 1024
"""Inputs this large leave their bytes out of the call's message (``call_to_pb``)."""

Buffer = bytes | bytearray | memoryview
Detached = list[tuple[int, Buffer]]
"""(input position, bytes kept out of the message) of one call."""
Attached = dict[tuple[int, int], Buffer]
"""(call position, input position) -> bytes that came beside a request's message."""

_PREFIX = "DATA_TYPE_"
# Looked up on every tensor in both directions: plain dicts, not the enum wrapper's methods.
_TO_PB: dict[str, int] = {
    name.removeprefix(_PREFIX): number
    for name, number in worker_pb2.DataType.items()
    if number != worker_pb2.DATA_TYPE_UNSPECIFIED
}
_FROM_PB: dict[int, str] = {number: name for name, number in _TO_PB.items()}


def datatype_to_pb(datatype: str) -> worker_pb2.DataType:
    """The protocol enum value of an Open Inference Protocol datatype name."""
    number = _TO_PB.get(datatype)
    if number is None:
        raise InvalidRequest(f"unknown datatype {datatype!r}")
    return cast("worker_pb2.DataType", number)


def datatype_from_pb(value: int) -> str:
    """The Open Inference Protocol name of a protocol enum value (never UNSPECIFIED)."""
    if value == worker_pb2.DATA_TYPE_UNSPECIFIED:
        raise InvalidRequest("datatype is not set")
    name = _FROM_PB.get(value)
    if name is None:
        raise InvalidRequest(f"unknown datatype number {value}")
    return name


def tensor_to_pb(tensor: Tensor) -> worker_pb2.Tensor:
    """A protocol tensor holding ``tensor``'s elements as raw little-endian bytes."""
    return worker_pb2.Tensor(
        name=tensor.name,
        datatype=datatype_to_pb(tensor.datatype),
        shape=tensor.shape,
        data=to_raw(tensor.data, tensor.datatype),
    )


class CallMessage(NamedTuple):
    """A call as the hop sends it (``call_to_pb``)."""

    message: worker_pb2.InferCall
    detached: Detached
    """The bytes of the inputs the message leaves out."""
    size: int
    """The bytes of all its inputs, in the message or beside it."""


def call_to_pb(
    key: ModelKey, inputs: Sequence[Tensor], outputs: Sequence[str], request_id: str
) -> CallMessage:
    """The call's message, and the bytes of its large inputs, which it leaves out.

    An input of ``DETACHED_BYTES`` or more has an empty ``data`` in the message;
    its bytes come back as a view of the tensor's own memory (no copy), for the
    hop to send beside the message (``server.pool.frames``) or to put back in
    (``attach``). A protobuf message copies every byte put in it, and again
    each time it is nested in another, which for a 602 KB image was most of
    a gateway's CPU per call.
    """
    call = worker_pb2.InferCall(model=key_to_pb(key), outputs=outputs, request_id=request_id)
    detached: Detached = []
    size = 0
    for position, tensor in enumerate(inputs):
        raw = raw_view(tensor.data, tensor.datatype)
        message = call.inputs.add(
            name=tensor.name, datatype=datatype_to_pb(tensor.datatype), shape=tensor.shape
        )
        size += len(raw)
        if len(raw) >= DETACHED_BYTES:
            detached.append((position, raw))
        else:
            message.data = bytes(raw)
    return CallMessage(call, detached, size)


def attach(request: worker_pb2.InferRequest, detached: Sequence[Detached]) -> None:
    """Put detached bytes back into ``request`` (``detached[i]`` belongs to call ``i``)."""
    for call, inputs in zip(request.calls, detached, strict=True):
        for position, raw in inputs:
            call.inputs[position].data = bytes(raw)


def tensor_from_pb(message: worker_pb2.Tensor, raw: Buffer | None = None) -> Tensor:
    """A service tensor over the message's bytes, or ``raw`` sent beside it (no copy).

    Raises ``InvalidRequest`` naming the tensor when the datatype is unset or
    unknown, a dimension is negative, or the bytes do not fill the shape exactly.
    """
    name = message.name
    try:
        datatype = datatype_from_pb(message.datatype)
    except InvalidRequest as exc:
        raise InvalidRequest(f"tensor '{name}': {exc.message}") from None
    shape = tuple(int(dim) for dim in message.shape)
    if any(dim < 0 for dim in shape):
        raise InvalidRequest(f"tensor '{name}': negative dimension in shape {list(shape)}")
    data = from_raw(message.data if raw is None else raw, datatype, shape, name=name)
    return Tensor(name=name, datatype=datatype, shape=shape, data=data)


def key_to_pb(key: ModelKey) -> worker_pb2.ModelKey:
    """The protocol form of a model key."""
    return worker_pb2.ModelKey(tenant_id=key.tenant_id, model_version_id=key.version_id)


def key_from_pb(message: worker_pb2.ModelKey) -> ModelKey:
    """The service form of a protocol model key; both ids must be set."""
    if not message.tenant_id or not message.model_version_id:
        raise InvalidRequest("model key needs both a tenant id and a model version id")
    return ModelKey(tenant_id=message.tenant_id, version_id=message.model_version_id)
