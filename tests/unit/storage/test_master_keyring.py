"""Master key sources with several keys, and a ring that learns a new key from its file."""

from __future__ import annotations

import base64
import os
from typing import TYPE_CHECKING

import pytest

from storage.crypto import master
from storage.crypto.master import (
    MasterKey,
    MasterKeyError,
    load_master_key_file,
    load_master_key_ring_file,
    master_key_ring_from_text,
)
from storage.errors import KeyUnavailable

if TYPE_CHECKING:
    from pathlib import Path


def _b64(key: MasterKey) -> str:
    return base64.b64encode(key.key).decode()


def _key() -> MasterKey:
    return MasterKey.from_bytes(os.urandom(32))


def test_file_with_several_keys_first_is_primary(tmp_path: Path) -> None:
    """One key per line, comments and blanks skipped: the first wraps, the others unwrap."""
    new, old = _key(), _key()
    path = tmp_path / "master.key"
    path.write_text(f"# rotating\n{_b64(new)}\n\n{_b64(old)}  # old, remove after rotation\n")
    ring = load_master_key_ring_file(path, require_private=False)
    assert ring.primary == new
    assert ring.get(old.key_id) == old
    assert load_master_key_file(path, require_private=False) == new


def test_variable_with_comma_separated_keys() -> None:
    """``SEALSERVE_MASTER_KEY=NEW,OLD`` gives the same ring as a two-line file."""
    new, old = _key(), _key()
    ring = master_key_ring_from_text(f"{_b64(new)},{_b64(old)}", source="SEALSERVE_MASTER_KEY")
    assert (ring.primary, ring.get(old.key_id)) == (new, old)
    with pytest.raises(MasterKeyError, match="no master key"):
        master_key_ring_from_text(" # nothing\n", source="SEALSERVE_MASTER_KEY")


def test_ring_rereads_its_file_on_an_unknown_key_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key added to the file is learned without a restart; the old key keeps working."""
    monkeypatch.setattr(master, "RELOAD_INTERVAL", 0.0)
    old, new = _key(), _key()
    path = tmp_path / "master.key"
    path.write_text(_b64(old) + "\n")
    ring = load_master_key_ring_file(path, require_private=False)
    path.write_text(_b64(new) + "\n")  # the old key is gone from the file...
    assert ring.get(new.key_id) == new
    assert ring.primary == new  # ...new keys are now wrapped by the file's primary
    assert ring.get(old.key_id) == old  # ...and the old key still unwraps until restart
    path.write_text("not base64 at all")
    with pytest.raises(KeyUnavailable):
        ring.get(_key().key_id)
    assert ring.primary == new  # a broken file changes nothing


def test_reload_is_rate_limited(tmp_path: Path) -> None:
    """Unknown ids cannot make the ring re-read the file more than once a second."""
    old, new = _key(), _key()
    path = tmp_path / "master.key"
    path.write_text(_b64(old) + "\n")
    ring = load_master_key_ring_file(path, require_private=False)
    with pytest.raises(KeyUnavailable):
        ring.get(_key().key_id)  # reads the file (nothing new)
    path.write_text(f"{_b64(new)}\n{_b64(old)}\n")
    with pytest.raises(KeyUnavailable):
        ring.get(new.key_id)  # within the interval: not re-read yet
