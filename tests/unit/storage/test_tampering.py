"""Sealed rows edited in the database never unseal: each case fails and yields nothing.

These run the real SQL an attacker with database access could run, on both
SQLite and PostgreSQL.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import func, select, text

from storage import (
    DecryptionFailed,
    KeyUnavailable,
    MasterKey,
    MasterKeyRing,
    NotFound,
    Registry,
    StorageError,
    make_session_factory,
)
from storage.db import Base

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

PAYLOAD_SIZE = 300_000  # five 64 KiB segments (random bytes do not compress)


@pytest.fixture
def sealed(registry: Registry):
    """Two tenants, two models, two versions each; returns ids by name."""
    ids = {}
    for tenant_name in ("tenant-a", "tenant-b"):
        tenant = registry.create_tenant(tenant_name)
        ids[tenant_name] = tenant.id
        for model in ("m1", "m2"):
            for n in (1, 2):
                info = registry.put_version(
                    tenant_id=tenant.id,
                    model_name=model,
                    source=io.BytesIO(os.urandom(PAYLOAD_SIZE)),
                    format="tflite",
                )
                ids[f"{tenant_name}/{model}/{n}"] = info.id
                ids[f"{tenant_name}/{model}"] = info.model_id
    return ids


def _sql(engine: Engine, statement: str, **params) -> None:
    with engine.begin() as conn:
        conn.execute(text(statement), params)


def _blob(engine: Engine, statement: str, **params) -> bytes:
    with engine.connect() as conn:
        return bytes(conn.execute(text(statement), params).scalar_one())


def _assert_unseal_fails(registry: Registry, tenant_id: str, version_id: str) -> None:
    result: bytes | None = None
    with pytest.raises((DecryptionFailed, KeyUnavailable)) as caught:
        result = registry.open_version(tenant_id, version_id)
    assert result is None  # no plaintext handed out
    assert caught.value.message  # a clear, non-empty message
    assert "segment" not in caught.value.message  # details stay in .detail (logs only)


def _flip(blob: bytes, at: int) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 0x01]) + blob[at + 1 :]


@pytest.mark.parametrize(
    "where", ["ciphertext-start", "ciphertext-middle", "ciphertext-tag", "nonce"]
)
@pytest.mark.parametrize("segment", [0, 2, 4])
def test_flipped_byte_in_segment(registry, engine, sealed, where, segment) -> None:
    """One flipped bit anywhere in any segment fails authentication."""
    vid = sealed["tenant-a/m1/1"]
    column = "nonce" if where == "nonce" else "ciphertext"
    blob = _blob(
        engine,
        f"SELECT {column} FROM sealed_segments WHERE model_version_id=:v AND idx=:i",
        v=vid,
        i=segment,
    )
    at = {
        "ciphertext-start": 0,
        "ciphertext-middle": len(blob) // 2,
        "ciphertext-tag": len(blob) - 1,
        "nonce": 5,
    }[where]
    _sql(
        engine,
        f"UPDATE sealed_segments SET {column}=:b WHERE model_version_id=:v AND idx=:i",
        b=_flip(blob, at),
        v=vid,
        i=segment,
    )
    _assert_unseal_fails(registry, sealed["tenant-a"], vid)


@pytest.mark.parametrize("table", ["data_keys", "tenant_keys"])
def test_flipped_byte_in_wrapped_key(registry, engine, sealed, table) -> None:
    """A flipped bit in a wrapped data key or tenant key fails."""
    column = "model_version_id" if table == "data_keys" else "tenant_id"
    value = sealed["tenant-a/m1/1"] if table == "data_keys" else sealed["tenant-a"]
    blob = _blob(engine, f"SELECT wrapped_key FROM {table} WHERE {column}=:v", v=value)
    _sql(engine, f"UPDATE {table} SET wrapped_key=:b WHERE {column}=:v", b=_flip(blob, 20), v=value)
    _assert_unseal_fails(registry, sealed["tenant-a"], sealed["tenant-a/m1/1"])


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("sha256", "0" * 64),
        ("size_plain", 1),
        ("segment_count", 4),
        ("segment_count", 6),
        ("compression", "none"),
        ("version", 7),
    ],
)
def test_edited_version_metadata(registry, engine, sealed, column, value) -> None:
    """Editing the version row's digest, size, count, compression or number fails."""
    vid = sealed["tenant-a/m1/1"]
    _sql(engine, f"UPDATE model_versions SET {column}=:x WHERE id=:v", x=value, v=vid)
    _assert_unseal_fails(registry, sealed["tenant-a"], vid)


@pytest.mark.parametrize("edit", ["remove", "remove-last", "reorder", "duplicate", "truncate"])
def test_segment_list_edits(registry, engine, sealed, edit) -> None:
    """Segments removed, reordered, duplicated or truncated in the table fail."""
    vid = sealed["tenant-a/m1/1"]
    if edit == "remove":
        _sql(engine, "DELETE FROM sealed_segments WHERE model_version_id=:v AND idx=2", v=vid)
    elif edit == "remove-last":
        _sql(engine, "DELETE FROM sealed_segments WHERE model_version_id=:v AND idx=4", v=vid)
        _sql(engine, "UPDATE model_versions SET segment_count=4 WHERE id=:v", v=vid)
    elif edit == "reorder":
        _sql(engine, "UPDATE sealed_segments SET idx=99 WHERE model_version_id=:v AND idx=1", v=vid)
        _sql(engine, "UPDATE sealed_segments SET idx=1 WHERE model_version_id=:v AND idx=2", v=vid)
        _sql(engine, "UPDATE sealed_segments SET idx=2 WHERE model_version_id=:v AND idx=99", v=vid)
    elif edit == "duplicate":
        nonce = _blob(
            engine, "SELECT nonce FROM sealed_segments WHERE model_version_id=:v AND idx=1", v=vid
        )
        body = _blob(
            engine,
            "SELECT ciphertext FROM sealed_segments WHERE model_version_id=:v AND idx=1",
            v=vid,
        )
        _sql(
            engine,
            "UPDATE sealed_segments SET nonce=:n, ciphertext=:c WHERE model_version_id=:v AND idx=3",
            n=nonce,
            c=body,
            v=vid,
        )
    elif edit == "truncate":
        body = _blob(
            engine,
            "SELECT ciphertext FROM sealed_segments WHERE model_version_id=:v AND idx=3",
            v=vid,
        )
        _sql(
            engine,
            "UPDATE sealed_segments SET ciphertext=:c WHERE model_version_id=:v AND idx=3",
            c=body[:1000],
            v=vid,
        )
    _assert_unseal_fails(registry, sealed["tenant-a"], vid)


@pytest.mark.parametrize("target", ["other-version", "other-model", "other-tenant"])
def test_data_key_row_moved(registry, engine, sealed, target) -> None:
    """A data key swapped onto another version, model or tenant's version does not unwrap there."""
    victim = {
        "other-version": "tenant-a/m1/2",
        "other-model": "tenant-a/m2/1",
        "other-tenant": "tenant-b/m1/1",
    }[target]
    source = sealed["tenant-a/m1/1"]
    wrapped = _blob(engine, "SELECT wrapped_key FROM data_keys WHERE model_version_id=:v", v=source)
    _sql(
        engine,
        "UPDATE data_keys SET wrapped_key=:w WHERE model_version_id=:v",
        w=wrapped,
        v=sealed[victim],
    )
    tenant = victim.split("/")[0]
    _assert_unseal_fails(registry, sealed[tenant], sealed[victim])


@pytest.mark.parametrize("target", ["other-version", "other-model", "other-tenant"])
def test_segment_moved(registry, engine, sealed, target) -> None:
    """A segment copied into another version, model or tenant's version fails there."""
    victim = {
        "other-version": "tenant-a/m1/2",
        "other-model": "tenant-a/m2/1",
        "other-tenant": "tenant-b/m1/1",
    }[target]
    source = sealed["tenant-a/m1/1"]
    nonce = _blob(
        engine, "SELECT nonce FROM sealed_segments WHERE model_version_id=:v AND idx=0", v=source
    )
    body = _blob(
        engine,
        "SELECT ciphertext FROM sealed_segments WHERE model_version_id=:v AND idx=0",
        v=source,
    )
    _sql(
        engine,
        "UPDATE sealed_segments SET nonce=:n, ciphertext=:c WHERE model_version_id=:v AND idx=0",
        n=nonce,
        c=body,
        v=sealed[victim],
    )
    tenant = victim.split("/")[0]
    _assert_unseal_fails(registry, sealed[tenant], sealed[victim])


def test_version_row_moved_to_other_tenant(registry, engine, sealed) -> None:
    """Re-assigning a version's rows to another tenant makes it unreadable for that tenant."""
    vid = sealed["tenant-a/m1/1"]
    b = sealed["tenant-b"]
    _sql(engine, "DELETE FROM model_versions WHERE id=:v", v=sealed["tenant-b/m1/1"])
    _sql(
        engine,
        "UPDATE model_versions SET tenant_id=:t, model_id=:m WHERE id=:v",
        t=b,
        m=sealed["tenant-b/m1"],
        v=vid,
    )
    for table in ("data_keys", "sealed_segments"):
        _sql(engine, f"UPDATE {table} SET tenant_id=:t WHERE model_version_id=:v", t=b, v=vid)
    _assert_unseal_fails(registry, b, vid)


def test_wrong_master_key(engine, sealed) -> None:
    """A registry with another master key cannot unwrap anything and says the key is missing."""
    other = Registry(
        session_factory=make_session_factory(engine),
        master_keys=MasterKeyRing(MasterKey.from_bytes(os.urandom(32))),
    )
    with pytest.raises(KeyUnavailable, match="master key"):
        other.open_version(sealed["tenant-a"], sealed["tenant-a/m1/1"])


def test_same_id_different_master_key_bytes(engine, master_keys, sealed) -> None:
    """Even a ring that claims the right key id but holds other bytes fails to unwrap."""
    impostor = MasterKey(key_id=master_keys.primary.key_id, key=os.urandom(32))
    other = Registry(
        session_factory=make_session_factory(engine), master_keys=MasterKeyRing(impostor)
    )
    with pytest.raises(DecryptionFailed):
        other.open_version(sealed["tenant-a"], sealed["tenant-a/m1/1"])


def test_deleted_tenant_is_crypto_shredded(registry, engine, sealed) -> None:
    """Rows copied aside before a tenant is deleted cannot be unsealed afterwards; others are untouched."""
    a = sealed["tenant-a"]
    tables = ["tenants", "models", "model_versions", "data_keys", "sealed_segments", "model_labels"]
    meta = Base.metadata.tables

    def owned(t: str):
        table = meta[t]
        return table.c.id == a if t == "tenants" else table.c.tenant_id == a

    with engine.connect() as conn:
        saved = {
            t: [dict(r._mapping) for r in conn.execute(select(meta[t]).where(owned(t)))]
            for t in tables
        }
    registry.delete_tenant("tenant-a")
    with engine.connect() as conn:
        for t in [*tables, "tenant_keys"]:
            assert (
                conn.execute(select(func.count()).select_from(meta[t]).where(owned(t))).scalar()
                == 0
            )
    # Put every sealed row back, as an attacker holding a copy would.
    with engine.begin() as conn:
        for t in tables:
            if saved[t]:
                conn.execute(meta[t].insert(), saved[t])
    with pytest.raises(KeyUnavailable):
        registry.open_version(a, sealed["tenant-a/m1/1"])
    assert len(registry.open_version(sealed["tenant-b"], sealed["tenant-b/m1/1"])) == PAYLOAD_SIZE


def test_errors_share_one_root(registry, sealed) -> None:
    """Every storage failure is a StorageError, so the server maps all of them."""
    with pytest.raises(StorageError):
        registry.open_version(sealed["tenant-b"], sealed["tenant-a/m1/1"])
    with pytest.raises(NotFound):
        registry.open_version(sealed["tenant-b"], sealed["tenant-a/m1/1"])
