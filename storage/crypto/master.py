"""The master key (key-encryption key) and where it comes from.

The master key never touches the database in clear. It is read from a key
file (base64 of 32 random bytes) or an environment variable, and identified by
a key id derived from it, so every wrapped tenant key can name the master key
that wraps it and decryption never has to guess.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from storage.errors import KeyUnavailable

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

KEY_BYTES = 32


class MasterKeyError(KeyUnavailable):
    """The master key source is missing, unreadable, malformed or unsafe."""


@dataclass(frozen=True)
class MasterKey:
    """A 256-bit key-encryption key and its public id."""

    key_id: str
    key: bytes = field(repr=False)

    @classmethod
    def from_bytes(cls, key: bytes) -> MasterKey:
        """Wrap raw key bytes, deriving the id (a hash prefix, not the key)."""
        if len(key) != KEY_BYTES:
            msg = f"a master key must be {KEY_BYTES} bytes, got {len(key)}"
            raise MasterKeyError(msg)
        digest = hashlib.sha256(b"sealserve master key id\x00" + key).hexdigest()
        return cls(key_id=f"mk-{digest[:16]}", key=key)

    @classmethod
    def from_base64(cls, text: str, *, source: str) -> MasterKey:
        """Parse base64 text from a file or variable named ``source``."""
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            msg = f"the master key in {source} is not valid base64"
            raise MasterKeyError(msg) from None
        if len(raw) != KEY_BYTES:
            msg = f"the master key in {source} must decode to {KEY_BYTES} bytes"
            raise MasterKeyError(msg)
        return cls.from_bytes(raw)


def load_master_key_file(path: Path, *, require_private: bool) -> MasterKey:
    """Read a key file; with ``require_private``, refuse one others can read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        msg = f"master key file {path} does not exist"
        raise MasterKeyError(msg) from None
    if require_private and mode & (stat.S_IRWXG | stat.S_IRWXO):
        msg = (
            f"master key file {path} is readable by other users "
            f"(mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}"
        )
        raise MasterKeyError(msg)
    return MasterKey.from_base64(path.read_text(encoding="ascii"), source=str(path))


def create_master_key_file(path: Path) -> MasterKey:
    """Generate a new master key into ``path`` (mode 0600, never overwriting)."""
    key = secrets.token_bytes(KEY_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(base64.b64encode(key).decode("ascii") + "\n")
    return MasterKey.from_bytes(key)


class MasterKeyRing:
    """The primary master key (wraps new keys) plus older ones (unwrap only)."""

    def __init__(self, primary: MasterKey, older: Iterable[MasterKey] = ()) -> None:
        self.primary = primary
        self._by_id = {key.key_id: key for key in (*older, primary)}

    def get(self, key_id: str) -> MasterKey:
        """The master key with this id, or ``KeyUnavailable``."""
        try:
            return self._by_id[key_id]
        except KeyError:
            msg = "the master key that sealed this data is not available"
            raise KeyUnavailable(msg, detail=f"master key id {key_id!r}") from None

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Ids of every key in the ring, primary last."""
        return tuple(self._by_id)
