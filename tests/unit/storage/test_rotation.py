"""Tenant and master key rotation on SQLite and PostgreSQL: nothing lost, old keys gone."""

from __future__ import annotations

import base64
import io
import json
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import select

from storage import MasterKey, MasterKeyRing, Registry, make_session_factory
from storage.audit import AuditLog
from storage.db import unit_of_work
from storage.errors import KeyUnavailable, NotFound
from storage.identity import IdentityStore, SigningKeyRecord
from storage.keys import KeyHierarchy
from storage.models import DataKey, TenantKey
from storage.rotation import KeyRotation

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

MODELS = ("alpha", "beta", "gamma")


def _registry(engine: Engine, ring: MasterKeyRing) -> Registry:
    return Registry(
        session_factory=make_session_factory(engine), master_keys=ring, segment_size=4096
    )


def _rotation(registry: Registry, engine: Engine, ring: MasterKeyRing, **kw) -> KeyRotation:
    return KeyRotation(
        session_factory=make_session_factory(engine),
        master_keys=ring,
        audit=registry.audit,
        **kw,
    )


def _fill(registry: Registry) -> dict[tuple[str, str, str], bytes]:
    """Two tenants, three models, two versions each; returns expected plaintext by version id."""
    expected = {}
    for name in ("acme", "other"):
        tenant = registry.create_tenant(name)
        for model in MODELS:
            for _ in range(2):
                data = os.urandom(10_000)
                info = registry.put_version(
                    tenant_id=tenant.id, model_name=model, source=io.BytesIO(data), format="tflite"
                )
                expected[name, tenant.id, info.id] = data
    return expected


def _assert_readable(registry: Registry, expected: dict) -> None:
    for (_, tenant_id, version_id), data in expected.items():
        assert registry.open_version(tenant_id, version_id) == data


def _tenant_keys(engine: Engine, tenant_id: str) -> dict[int, str]:
    with unit_of_work(make_session_factory(engine)) as session:
        return {
            row.version: row.state
            for row in session.scalars(select(TenantKey).where(TenantKey.tenant_id == tenant_id))
        }


def _wrapped_data_keys(engine: Engine, tenant_id: str) -> dict[str, tuple[int, bytes]]:
    with unit_of_work(make_session_factory(engine)) as session:
        return {
            row.model_version_id: (row.tenant_key_version, row.wrapped_key)
            for row in session.scalars(select(DataKey).where(DataKey.tenant_id == tenant_id))
        }


@pytest.fixture
def ring() -> MasterKeyRing:
    """A master key ring of its own, so master rotation tests can drop keys."""
    return MasterKeyRing(MasterKey.from_bytes(os.urandom(32)))


def test_rotate_tenant_rewraps_and_destroys_old_version(engine: Engine, ring) -> None:
    """Every model of the tenant still opens, v1 is gone, the other tenant is untouched."""
    registry = _registry(engine, ring)
    expected = _fill(registry)
    acme = registry.get_tenant("acme").id
    other = registry.get_tenant("other").id
    other_before = _wrapped_data_keys(engine, other)
    seen: list[tuple[int, int]] = []

    result = _rotation(registry, engine, ring, batch_size=2).rotate_tenant(
        "acme", progress=lambda done, total: seen.append((done, total))
    )

    assert (result.version, result.destroyed, result.rewrapped) == (2, (1,), 6)
    assert result.complete
    assert not result.resumed
    assert seen[0] == (0, 6)
    assert seen[-1] == (6, 6)
    assert _tenant_keys(engine, acme) == {2: "active"}
    assert {v for v, _ in _wrapped_data_keys(engine, acme).values()} == {2}
    assert _tenant_keys(engine, other) == {1: "active"}
    assert _wrapped_data_keys(engine, other) == other_before
    _assert_readable(registry, expected)
    # A new upload wraps under the new version and a second rotation moves on to v3.
    new = registry.put_version(
        tenant_id=acme, model_name="alpha", source=io.BytesIO(b"x" * 100), format="tflite"
    )
    assert _wrapped_data_keys(engine, acme)[new.id][0] == 2
    again = _rotation(registry, engine, ring).rotate_tenant("acme")
    assert (again.version, again.destroyed) == (3, (2,))
    assert registry.open_version(acme, new.id) == b"x" * 100
    assert registry.audit.verify().ok


def test_interrupted_tenant_rotation_leaves_everything_readable(engine: Engine, ring) -> None:
    """A run stopped part-way (by --limit) keeps both versions; the next run finishes it."""
    registry = _registry(engine, ring)
    expected = _fill(registry)
    acme = registry.get_tenant("acme").id
    rotation = _rotation(registry, engine, ring, batch_size=1)

    partial = rotation.rotate_tenant("acme", limit=2)
    assert (partial.rewrapped, partial.remaining, partial.destroyed) == (2, 4, ())
    assert not partial.complete
    assert _tenant_keys(engine, acme) == {1: "retired", 2: "active"}
    # A "worker" with its own registry reads every version mid-rotation.
    _assert_readable(_registry(engine, ring), expected)
    # An upload mid-rotation wraps under the new version.
    mid = registry.put_version(
        tenant_id=acme, model_name="beta", source=io.BytesIO(b"mid"), format="tflite"
    )
    assert _wrapped_data_keys(engine, acme)[mid.id][0] == 2

    finished = rotation.rotate_tenant("acme")
    assert finished.resumed
    assert (finished.version, finished.destroyed, finished.rewrapped) == (2, (1,), 4)
    assert _tenant_keys(engine, acme) == {2: "active"}
    _assert_readable(registry, expected)
    assert registry.open_version(acme, mid.id) == b"mid"
    actions = [
        e["details"]["phase"]
        for e in registry.audit.query(tenant_id=acme, action="keys.rotate-tenant")
    ]
    assert sorted(actions) == ["begun", "completed", "paused"]
    assert registry.audit.verify().ok


def test_crash_in_the_middle_of_a_batch_loses_nothing(
    engine: Engine, ring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception half-way through re-wrapping rolls its batch back; a re-run completes."""
    registry = _registry(engine, ring)
    expected = _fill(registry)
    real = KeyHierarchy.rewrap_data_key
    calls = 0

    def failing(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 4:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(KeyHierarchy, "rewrap_data_key", staticmethod(failing))
    with pytest.raises(RuntimeError, match="killed"):
        _rotation(registry, engine, ring, batch_size=2).rotate_tenant("acme")
    _assert_readable(_registry(engine, ring), expected)
    monkeypatch.setattr(KeyHierarchy, "rewrap_data_key", staticmethod(real))
    result = _rotation(registry, engine, ring).rotate_tenant("acme")
    assert result.resumed
    assert result.complete
    assert _tenant_keys(engine, registry.get_tenant("acme").id) == {2: "active"}
    _assert_readable(registry, expected)


def test_destroy_catches_up_data_keys_still_under_a_retired_version(engine: Engine, ring) -> None:
    """The destroy step re-wraps, under its lock, whatever a late upload left under the old key.

    Stands in for an upload that took the old version before the rotation
    began and committed after the batches had passed: destroying jumps
    straight in after ``begin`` here, with every data key still under v1.
    """
    registry = _registry(engine, ring)
    expected = _fill(registry)
    acme = registry.get_tenant("acme").id
    rotation = _rotation(registry, engine, ring)
    rotation.rotate_tenant("acme", limit=0)  # begun: v2 active, v1 retired, nothing re-wrapped
    assert {v for v, _ in _wrapped_data_keys(engine, acme).values()} == {1}
    caught_up = rotation._destroy_retired("acme", acme, 2, None, rewrapped=0)
    assert caught_up == 6
    assert _tenant_keys(engine, acme) == {2: "active"}
    _assert_readable(registry, expected)


def test_rotate_unknown_tenant_is_not_found(engine: Engine, ring) -> None:
    """Rotating a tenant that does not exist changes nothing and says so."""
    registry = _registry(engine, ring)
    with pytest.raises(NotFound):
        _rotation(registry, engine, ring).rotate_tenant("nobody")


def _identity(engine: Engine, ring: MasterKeyRing, audit: AuditLog) -> IdentityStore:
    return IdentityStore(
        session_factory=make_session_factory(engine), master_keys=ring, audit=audit
    )


def _add_signing_key(store: IdentityStore) -> None:
    store.save_signing_keys(
        [
            SigningKeyRecord(
                kid="k1",
                alg="ES256",
                state="primary",
                private_key=os.urandom(138),  # stored wrapped as given; never parsed here
                public_jwk={},
                created_at=datetime.now(UTC),
                activated_at=None,
                retired_after=None,
            )
        ]
    )


def test_rotate_master_rewraps_everything_and_old_key_no_longer_opens(engine: Engine, ring) -> None:
    """After the rotation the new key alone opens every model, secret and signing key."""
    old = ring.primary
    registry = _registry(engine, ring)
    expected = _fill(registry)
    store = _identity(engine, ring, registry.audit)
    pepper = store.server_secret("client-secret-pepper", create=lambda: os.urandom(32))
    _add_signing_key(store)
    registry.audit.checkpoint_now()  # creates the audit checkpoint key, wrapped by ``old``
    new = MasterKey.from_bytes(os.urandom(32))
    both = ring.with_primary(new)

    partial = _rotation(registry, engine, both, batch_size=1).rotate_master(new, limit=3)
    assert not partial.complete
    _assert_readable(_registry(engine, both), expected)  # mid-rotation: either key opens
    result = _rotation(registry, engine, both, batch_size=2).rotate_master(new)
    assert result.complete
    assert result.previous == (old.key_id,)
    assert sum(result.rewrapped.values()) + 3 == 2 + 2 + 1  # tenant keys, secrets, signing
    assert _rotation(registry, engine, both).master_key_usage() == {new.key_id: 5}

    only_new = MasterKeyRing(new)
    _assert_readable(_registry(engine, only_new), expected)
    new_store = _identity(
        engine,
        only_new,
        AuditLog(session_factory=make_session_factory(engine), master_keys=only_new),
    )
    assert new_store.server_secret("client-secret-pepper", create=bytes) == pepper
    assert [k.kid for k in new_store.load_signing_keys()] == ["k1"]
    assert new_store.audit.verify().ok

    only_old = _registry(engine, MasterKeyRing(old))
    (_, tenant_id, version_id), _ = next(iter(expected.items()))
    with pytest.raises(KeyUnavailable):
        only_old.open_version(tenant_id, version_id)

    # Nothing secret in the audit trail of the rotation.
    exported = json.dumps(list(new_store.audit.export()))
    for secret in (old.key, new.key, pepper):
        assert base64.b64encode(secret).decode() not in exported
        assert secret.hex() not in exported
    assert '"keys.rotate-master"' in exported


def test_rotate_master_refuses_rows_under_a_key_it_does_not_hold(engine: Engine, ring) -> None:
    """A row wrapped by an unconfigured master key stops the run before anything changes."""
    registry = _registry(engine, ring)
    _fill(registry)
    stranger = MasterKeyRing(MasterKey.from_bytes(os.urandom(32)))
    new = MasterKey.from_bytes(os.urandom(32))
    with pytest.raises(KeyUnavailable, match="not in the configured key source"):
        _rotation(registry, engine, stranger.with_primary(new)).rotate_master(new)
    assert _rotation(registry, engine, ring).master_key_usage() == {ring.primary.key_id: 2}
