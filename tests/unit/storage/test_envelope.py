"""Key wrapping and segment sealing, without a database."""

from __future__ import annotations

import os

import pytest

from storage.crypto.envelope import (
    associated_data,
    new_key,
    open_segments,
    seal_segments,
    unwrap_key,
    wrap_key,
)
from storage.errors import DecryptionFailed

FIELDS = ("tenant-a", "model-1", 3)


def _sealed(chunks: list[bytes], key: bytes) -> list[tuple[int, bytes, bytes]]:
    return list(seal_segments(key, chunks, aad_fields=FIELDS))


def _open(key: bytes, segments: list[tuple[int, bytes, bytes]], count: int | None = None) -> bytes:
    count = len(segments) if count is None else count
    return b"".join(open_segments(key, segments, count=count, aad_fields=FIELDS))


def test_associated_data_is_unambiguous() -> None:
    """Field boundaries are part of the encoding, so shifted fields differ."""
    assert associated_data("p", "ab", "c") != associated_data("p", "a", "bc")


def test_wrap_round_trip_and_wrong_context() -> None:
    """A wrapped key unwraps only with the same key-encryption key and context."""
    kek, key = new_key(), new_key()
    wrapped = wrap_key(kek, key, aad=b"ctx")
    assert unwrap_key(kek, wrapped, aad=b"ctx", what="k") == key
    with pytest.raises(DecryptionFailed):
        unwrap_key(kek, wrapped, aad=b"other", what="k")
    with pytest.raises(DecryptionFailed):
        unwrap_key(new_key(), wrapped, aad=b"ctx", what="k")


def test_segments_round_trip_and_last_flag() -> None:
    """Segments decrypt in order to the original bytes; an empty input is one last segment."""
    key = new_key()
    chunks = [os.urandom(100), os.urandom(100), os.urandom(7)]
    assert _open(key, _sealed(chunks, key)) == b"".join(chunks)
    empty = _sealed([], key)
    assert len(empty) == 1
    assert _open(key, empty) == b""


@pytest.mark.parametrize(
    "tamper",
    ["flip", "drop_last", "drop_middle", "swap", "duplicate", "truncate", "count_down"],
)
def test_tampered_segments_fail(tamper: str) -> None:
    """Every edit of the segment list is caught and yields no plaintext at all."""
    key = new_key()
    segments = _sealed([b"a" * 50, b"b" * 50, b"c" * 50], key)
    count = None
    if tamper == "flip":
        i, n, c = segments[1]
        segments[1] = (i, n, c[:10] + bytes([c[10] ^ 1]) + c[11:])
    elif tamper == "drop_last":
        segments = segments[:2]
        count = 3
    elif tamper == "drop_middle":
        segments = [segments[0], segments[2]]
        count = 3
    elif tamper == "swap":
        # Keep the row indexes in order but swap the contents, as an UPDATE would.
        (i0, n0, c0), (i1, n1, c1) = segments[0], segments[1]
        segments[0], segments[1] = (i0, n1, c1), (i1, n0, c0)
    elif tamper == "duplicate":
        segments[2] = (2, segments[1][1], segments[1][2])
    elif tamper == "truncate":
        i, n, c = segments[2]
        segments[2] = (i, n, c[:-5])
    elif tamper == "count_down":
        # Drop the tail and edit the count to match: the last-segment flag catches it.
        segments = segments[:2]
        count = 2
    with pytest.raises(DecryptionFailed):
        _open(key, segments, count)


def test_segments_bound_to_place() -> None:
    """A segment sealed for one tenant/model/version does not open for another."""
    key = new_key()
    segments = list(seal_segments(key, [b"x"], aad_fields=("tenant-b", "model-1", 3)))
    with pytest.raises(DecryptionFailed):
        _open(key, segments)
