"""Open Inference Protocol datatypes, numpy dtypes, and raw tensor bytes.

Raw bytes are the protocol's binary form everywhere (REST binary extension,
gRPC ``raw_*_contents``, the worker hop): little-endian, row-major, and for
``BYTES`` each element as a 4-byte little-endian length then its bytes.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import numpy.typing as npt

from server.service.errors import InvalidRequest

NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
"""Every datatype a model signature can use (BF16 has no numpy type and is not served)."""

_LENGTH = struct.Struct("<I")


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of an OIP datatype name, or ``InvalidRequest`` naming it."""
    try:
        return NUMPY_DTYPES[datatype]
    except KeyError:
        known = ", ".join(NUMPY_DTYPES)
        raise InvalidRequest(f"unknown datatype {datatype!r}; expected one of {known}") from None


def element_count(shape: tuple[int, ...] | list[int]) -> int:
    """Number of elements of a shape (1 for a scalar)."""
    count = 1
    for dim in shape:
        count *= int(dim)
    return count


def to_raw(array: npt.NDArray[Any], datatype: str) -> bytes:
    """Serialise ``array`` as raw protocol bytes."""
    return bytes(raw_view(array, datatype))


def raw_view(array: npt.NDArray[Any], datatype: str) -> bytes | memoryview:
    """``array``'s raw protocol bytes, a view of its memory when it already has that layout.

    A contiguous little-endian array (what a parsed binary body or a model's
    output is) is not copied; anything else, and ``BYTES``, is serialised.
    """
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            value = item if isinstance(item, bytes) else str(item).encode()
            parts.append(_LENGTH.pack(len(value)))
            parts.append(value)
        return b"".join(parts)
    contiguous = np.ascontiguousarray(array, dtype=numpy_dtype(datatype))
    return contiguous.data.cast("B") if contiguous.size else b""


def from_raw(
    data: bytes | bytearray | memoryview, datatype: str, shape: tuple[int, ...], *, name: str
) -> npt.NDArray[Any]:
    """Parse raw protocol bytes into an array of ``shape``; sizes must add up exactly."""
    count = element_count(shape)
    if datatype == "BYTES":
        items: list[bytes] = []
        offset = 0
        view = memoryview(data)
        while offset < len(data):
            if offset + 4 > len(data):
                raise InvalidRequest(f"input '{name}': truncated BYTES element length")
            (length,) = _LENGTH.unpack_from(view, offset)
            offset += 4
            if offset + length > len(data):
                raise InvalidRequest(f"input '{name}': BYTES element overruns the data")
            items.append(bytes(view[offset : offset + length]))
            offset += length
        if len(items) != count:
            raise InvalidRequest(
                f"input '{name}': {len(items)} BYTES elements for shape {list(shape)} "
                f"({count} expected)"
            )
        result = np.empty(count, dtype=object)
        result[:] = items
        return result.reshape(shape)
    dtype = numpy_dtype(datatype)
    expected = count * dtype.itemsize
    if len(data) != expected:
        raise InvalidRequest(
            f"input '{name}': {len(data)} bytes of {datatype} data for shape {list(shape)} "
            f"({expected} expected)"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)
