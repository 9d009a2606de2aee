"""Key wrapping and segmented AES-256-GCM sealing.

Every ciphertext is bound by its associated data to the place it belongs
(tenant, model, version, segment index, last-segment flag), so a row moved to
another tenant or version, a reordered or duplicated segment, or a truncated
blob fails authentication instead of decrypting to something plausible.
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage.errors import DecryptionFailed

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

NONCE_BYTES = 12
KEY_BYTES = 32


def associated_data(purpose: str, *fields: str | int) -> bytes:
    """Encode ``purpose`` and ``fields`` unambiguously (length-prefixed).

    Length prefixes make ``("ab", "c")`` and ``("a", "bc")`` different, which
    plain concatenation would not.
    """
    parts = [purpose.encode(), *(str(value).encode() for value in fields)]
    return b"".join(struct.pack(">I", len(part)) + part for part in parts)


def new_key() -> bytes:
    """A fresh random AES-256 key."""
    return AESGCM.generate_key(bit_length=256)


def wrap_key(kek: bytes, key: bytes, *, aad: bytes) -> bytes:
    """Encrypt ``key`` under ``kek``; returns ``nonce || ciphertext || tag``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(kek).encrypt(nonce, key, aad)


def unwrap_key_bytes(kek: bytes, wrapped: bytes, *, aad: bytes, what: str) -> bytes:
    """Reverse ``wrap_key`` for secrets of any length; a mismatch raises ``DecryptionFailed``."""
    try:
        return AESGCM(kek).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError):
        raise DecryptionFailed(
            "sealed data failed integrity check", detail=f"{what} did not unwrap"
        ) from None


def unwrap_key(kek: bytes, wrapped: bytes, *, aad: bytes, what: str) -> bytes:
    """Reverse ``wrap_key`` for an AES-256 key; a mismatch raises ``DecryptionFailed``."""
    key = unwrap_key_bytes(kek, wrapped, aad=aad, what=what)
    if len(key) != KEY_BYTES:
        raise DecryptionFailed("sealed model failed integrity check", detail=f"{what} length")
    return key


def seal_segments(
    key: bytes, chunks: Iterable[bytes], *, aad_fields: tuple[str | int, ...]
) -> Iterator[tuple[int, bytes, bytes]]:
    """Encrypt ``chunks`` as segments ``(index, nonce, ciphertext)``.

    Reads one chunk ahead so the last segment can be flagged as last; an empty
    input still yields one (empty) last segment, so "no segments" is never a
    valid sealed object.
    """
    cipher = AESGCM(key)
    iterator = iter(chunks)
    current = next(iterator, b"")
    index = 0
    for following in iterator:
        yield _seal_one(cipher, current, index=index, last=False, aad_fields=aad_fields)
        current = following
        index += 1
    yield _seal_one(cipher, current, index=index, last=True, aad_fields=aad_fields)


def _seal_one(
    cipher: AESGCM, chunk: bytes, *, index: int, last: bool, aad_fields: tuple[str | int, ...]
) -> tuple[int, bytes, bytes]:
    nonce = os.urandom(NONCE_BYTES)
    aad = associated_data("segment", *aad_fields, index, int(last))
    return index, nonce, cipher.encrypt(nonce, chunk, aad)


def open_segments(
    key: bytes,
    segments: Iterable[tuple[int, bytes, bytes]],
    *,
    count: int,
    aad_fields: tuple[str | int, ...],
) -> Iterator[bytes]:
    """Decrypt ``(index, nonce, ciphertext)`` rows in order, expecting ``count``.

    Checks the indexes run 0..count-1 with none missing or repeated; the
    last-segment flag in the associated data catches a truncated tail even if
    ``count`` was edited to match.
    """
    cipher = AESGCM(key)
    expected = 0
    for index, nonce, ciphertext in segments:
        if index != expected or index >= count:
            raise DecryptionFailed(
                "sealed model failed integrity check",
                detail=f"segment {index} where {expected} of {count} was expected",
            )
        aad = associated_data("segment", *aad_fields, index, int(index == count - 1))
        try:
            yield cipher.decrypt(nonce, ciphertext, aad)
        except (InvalidTag, ValueError):
            raise DecryptionFailed(
                "sealed model failed integrity check", detail=f"segment {index} did not verify"
            ) from None
        expected += 1
    if expected != count:
        raise DecryptionFailed(
            "sealed model failed integrity check",
            detail=f"{expected} segments where {count} were expected",
        )
