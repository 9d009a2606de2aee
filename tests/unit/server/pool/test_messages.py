"""Tensors, datatypes and model keys convert losslessly between service and protocol forms."""

from __future__ import annotations

import numpy as np
import pytest

from protos import worker_pb2
from server.pool.messages import (
    DETACHED_BYTES,
    attach,
    call_to_pb,
    datatype_from_pb,
    datatype_to_pb,
    key_from_pb,
    key_to_pb,
    tensor_from_pb,
    tensor_to_pb,
)
from server.service.datatypes import NUMPY_DTYPES
from server.service.errors import InvalidRequest
from server.service.types import ModelKey, Tensor

FIXED = [name for name in NUMPY_DTYPES if name != "BYTES"]
KEY = ModelKey(tenant_id="t1", version_id="v1")


def _sample(datatype: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if datatype == "BOOL":
        return rng.integers(0, 2, size=(2, 3)).astype(bool)
    dtype = NUMPY_DTYPES[datatype]
    if dtype.kind == "f":
        return rng.standard_normal((2, 3)).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=(2, 3), dtype=dtype, endpoint=True)


@pytest.mark.parametrize("datatype", FIXED)
def test_fixed_size_tensor_round_trips(datatype: str) -> None:
    """Every fixed-size datatype comes back with the same name, shape, dtype and values."""
    tensor = Tensor(name="x", datatype=datatype, shape=(2, 3), data=_sample(datatype))
    message = tensor_to_pb(tensor)
    assert worker_pb2.DataType.Name(message.datatype) == f"DATA_TYPE_{datatype}"
    assert len(message.data) == tensor.data.size * NUMPY_DTYPES[datatype].itemsize
    back = tensor_from_pb(message)
    assert (back.name, back.datatype, back.shape) == ("x", datatype, (2, 3))
    assert back.data.dtype == NUMPY_DTYPES[datatype]
    assert np.array_equal(back.data, tensor.data)


def test_bytes_tensor_round_trips() -> None:
    """BYTES elements (empty, binary, UTF-8) come back exactly, length-prefixed on the wire."""
    items = np.empty((2, 2), dtype=object)
    items[:] = [[b"", b"\x00\xff"], ["é".encode(), b"x" * 300]]
    tensor = Tensor(name="s", datatype="BYTES", shape=(2, 2), data=items)
    message = tensor_to_pb(tensor)
    assert message.data[:4] == b"\x00\x00\x00\x00"
    back = tensor_from_pb(message)
    assert back.shape == (2, 2)
    assert back.data.tolist() == items.tolist()


def test_scalar_round_trips() -> None:
    """An empty shape is a scalar with one element."""
    tensor = Tensor(name="t", datatype="FP64", shape=(), data=np.array(2.5))
    back = tensor_from_pb(tensor_to_pb(tensor))
    assert back.shape == ()
    assert back.data == 2.5


def test_every_served_datatype_has_an_enum_value() -> None:
    """The protocol enum names every OIP datatype the service serves, and back."""
    for name in NUMPY_DTYPES:
        assert datatype_from_pb(datatype_to_pb(name)) == name


def test_bf16_has_a_number_but_no_numpy_type() -> None:
    """BF16 converts to its enum value, but its bytes are refused with a clear message."""
    message = worker_pb2.Tensor(
        name="w", datatype=worker_pb2.DATA_TYPE_BF16, shape=[1], data=b"\x00\x00"
    )
    with pytest.raises(InvalidRequest, match="BF16"):
        tensor_from_pb(message)


def test_unknown_datatype_name_is_refused() -> None:
    """A datatype name outside the protocol is an InvalidRequest naming it."""
    with pytest.raises(InvalidRequest, match="'FP8'"):
        datatype_to_pb("FP8")


def test_unset_datatype_names_the_tensor() -> None:
    """A tensor that leaves its datatype UNSPECIFIED is refused, naming the tensor."""
    with pytest.raises(InvalidRequest, match="tensor 'input': datatype is not set"):
        tensor_from_pb(worker_pb2.Tensor(name="input", shape=[1], data=b""))


def test_unknown_datatype_number_names_the_tensor() -> None:
    """A datatype number from a newer protocol is refused, naming the tensor."""
    message = worker_pb2.Tensor(name="input", shape=[1], data=b"")
    message.datatype = 99
    with pytest.raises(InvalidRequest, match=r"tensor 'input'.*99"):
        tensor_from_pb(message)


def test_data_that_does_not_fill_the_shape_names_the_tensor() -> None:
    """Too few bytes for the shape is refused, naming the tensor and the sizes."""
    message = worker_pb2.Tensor(
        name="input", datatype=worker_pb2.DATA_TYPE_FP32, shape=[1, 64], data=b"\x00" * 8
    )
    with pytest.raises(InvalidRequest, match=r"input 'input': 8 bytes.*256 expected"):
        tensor_from_pb(message)


def test_negative_dimension_names_the_tensor() -> None:
    """A -1 left in a concrete shape is refused, naming the tensor."""
    message = worker_pb2.Tensor(
        name="input", datatype=worker_pb2.DATA_TYPE_FP32, shape=[-1, 64], data=b""
    )
    with pytest.raises(InvalidRequest, match="tensor 'input': negative dimension"):
        tensor_from_pb(message)


def test_fixed_size_data_is_not_copied() -> None:
    """Incoming fixed-size data is a view over the message bytes, not a per-element decode."""
    message = tensor_to_pb(
        Tensor(name="x", datatype="FP32", shape=(4,), data=np.arange(4, dtype=np.float32))
    )
    back = tensor_from_pb(message)
    assert not back.data.flags.owndata


def test_model_key_round_trips() -> None:
    """A model key keeps both ids, and its protocol field names are the registry's."""
    key = ModelKey(tenant_id="t-1", version_id="v-2")
    message = key_to_pb(key)
    assert (message.tenant_id, message.model_version_id) == ("t-1", "v-2")
    assert key_from_pb(message) == key


@pytest.mark.parametrize(
    "message",
    [worker_pb2.ModelKey(tenant_id="t"), worker_pb2.ModelKey(model_version_id="v")],
)
def test_model_key_needs_both_ids(message: worker_pb2.ModelKey) -> None:
    """A key without its tenant or its version is refused, never guessed."""
    with pytest.raises(InvalidRequest, match="tenant id and a model version id"):
        key_from_pb(message)


def test_large_inputs_leave_the_message_as_views_and_small_ones_stay_in() -> None:
    """``call_to_pb``: an input of DETACHED_BYTES or more is left out, uncopied; ``attach`` restores it."""
    big = np.random.default_rng(1).standard_normal((DETACHED_BYTES // 4 + 1,)).astype("<f4")
    small = np.arange(6, dtype="<i4").reshape(2, 3)
    inputs = [Tensor("small", "INT32", (2, 3), small), Tensor("big", "FP32", big.shape, big)]
    call, detached, size = call_to_pb(KEY, inputs, ["out"], "req-1")

    assert [position for position, _ in detached] == [1]
    ((_, raw),) = detached
    assert np.shares_memory(np.frombuffer(raw, dtype="<f4"), big)  # a view, not a copy
    assert call.inputs[1].data == b""
    assert list(call.inputs[1].shape) == [big.size]
    assert call.inputs[0].data == small.tobytes()
    assert list(call.outputs) == ["out"] and call.request_id == "req-1"
    assert size == big.nbytes + small.nbytes  # what a trip's byte limit counts

    # Over gRPC the bytes go back in: the worker then sees an ordinary message.
    request = worker_pb2.InferRequest(calls=[call])
    attach(request, [detached])
    restored = [tensor_from_pb(tensor) for tensor in request.calls[0].inputs]
    np.testing.assert_array_equal(restored[0].data, small)
    np.testing.assert_array_equal(restored[1].data, big)
    assert call.inputs[1].data == b""  # the caller's call is untouched, for a retry elsewhere

    # Through the frames it arrives beside the message: the same tensor.
    beside = tensor_from_pb(call.inputs[1], raw)
    np.testing.assert_array_equal(beside.data, big)


def test_a_non_contiguous_or_big_endian_input_is_serialised_not_viewed() -> None:
    """Inputs not already in the protocol's layout are converted to it before they leave."""
    grid = np.arange(2 * DETACHED_BYTES, dtype="<f4").reshape(2, -1)[:, ::2]
    swapped = np.arange(DETACHED_BYTES, dtype=">f4")
    _, detached, _ = call_to_pb(
        KEY,
        [Tensor("a", "FP32", grid.shape, grid), Tensor("b", "FP32", swapped.shape, swapped)],
        [],
        "",
    )
    (_, first), (_, second) = detached
    np.testing.assert_array_equal(np.frombuffer(first, "<f4").reshape(grid.shape), grid)
    np.testing.assert_array_equal(np.frombuffer(second, "<f4"), swapped)
