"""The master key (key-encryption key) and where it comes from.

The master key never touches the database in clear. It is read from a key
file (base64 of 32 random bytes) or an environment variable, and identified by
a key id derived from it, so every wrapped tenant key can name the master key
that wraps it and decryption never has to guess.

During a master key rotation the source holds several keys, one per line (or
comma-separated in the variable): the first wraps new keys, the others only
unwrap. A ring read from a file re-reads it when it meets a key id it does not
know, so a running process learns a new key put in its file without a
restart; keys it already holds stay usable until it exits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import stat
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from storage.errors import KeyUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path

KEY_BYTES = 32
RELOAD_INTERVAL = 1.0
"""Seconds between two re-reads of a key file on unknown key ids (a bad id cannot hammer it)."""


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


def parse_master_keys(text: str, *, source: str) -> list[MasterKey]:
    """One or more base64 keys, one per line or comma-separated; ``#`` comments are skipped.

    The first is the primary. Duplicates are dropped; an empty source is an error.
    """
    keys: dict[str, MasterKey] = {}
    for line in text.splitlines():
        for part in line.split("#", 1)[0].split(","):
            if part.strip():
                key = MasterKey.from_base64(part, source=source)
                keys.setdefault(key.key_id, key)
    if not keys:
        msg = f"no master key in {source}"
        raise MasterKeyError(msg)
    return list(keys.values())


def _read_key_file(path: Path, *, require_private: bool) -> str:
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
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        msg = f"master key file {path} cannot be read"
        raise MasterKeyError(msg) from None


def load_master_key_file(path: Path, *, require_private: bool) -> MasterKey:
    """Read a key file's primary key; with ``require_private``, refuse one others can read."""
    return parse_master_keys(
        _read_key_file(path, require_private=require_private), source=str(path)
    )[0]


def master_key_ring_from_text(text: str, *, source: str) -> MasterKeyRing:
    """A ring from a variable's value: the first key primary, the others unwrap-only."""
    primary, *older = parse_master_keys(text, source=source)
    return MasterKeyRing(primary, older)


def load_master_key_ring_file(path: Path, *, require_private: bool) -> MasterKeyRing:
    """A ring from a key file, re-read on an unknown key id (see the module docstring)."""

    def read() -> MasterKeyRing:
        text = _read_key_file(path, require_private=require_private)
        primary, *older = parse_master_keys(text, source=str(path))
        return MasterKeyRing(primary, older)

    ring = read()
    ring.reload_with(read)
    return ring


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
        self._reload: Callable[[], MasterKeyRing] | None = None
        self._reloaded_at = float("-inf")
        self._lock = threading.Lock()

    def reload_with(self, read: Callable[[], MasterKeyRing]) -> None:
        """Re-read the source with ``read`` when an unknown key id is asked for."""
        self._reload = read

    def with_primary(self, key: MasterKey) -> MasterKeyRing:
        """A ring that wraps with ``key`` and still unwraps with every key of this one."""
        return MasterKeyRing(key, (k for k in self._by_id.values() if k.key_id != key.key_id))

    def get(self, key_id: str) -> MasterKey:
        """The master key with this id, or ``KeyUnavailable``."""
        key = self._by_id.get(key_id)
        if key is None and self._reload is not None:
            self._refresh()
            key = self._by_id.get(key_id)
        if key is None:
            msg = "the master key that sealed this data is not available"
            raise KeyUnavailable(msg, detail=f"master key id {key_id!r}")
        return key

    def _refresh(self) -> None:
        """Adopt the source's keys and primary, keeping every key already held."""
        assert self._reload is not None  # noqa: S101 - only called when set
        with self._lock:
            if time.monotonic() - self._reloaded_at < RELOAD_INTERVAL:
                return
            self._reloaded_at = time.monotonic()
            try:
                fresh = self._reload()
            except MasterKeyError:
                return  # a file mid-edit or gone: keep serving with the keys held
            merged = {**self._by_id, **fresh._by_id}  # noqa: SLF001 - same class
            merged.pop(fresh.primary.key_id)
            self._by_id = {**merged, fresh.primary.key_id: fresh.primary}
            self.primary = fresh.primary

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Ids of every key in the ring, primary last."""
        return tuple(self._by_id)
