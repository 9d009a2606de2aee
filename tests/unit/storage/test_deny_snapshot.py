"""The deny-list snapshot refuses suspended and deleted tenants, never new ones."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from storage.identity import IdentityStore

if TYPE_CHECKING:
    from storage import Registry


def _store(registry: Registry, master_keys) -> IdentityStore:
    return IdentityStore(
        session_factory=registry._sessions,
        master_keys=master_keys,
        audit=registry.audit,
    )


def test_deleted_tenant_is_refused_and_new_one_is_not(registry: Registry, master_keys) -> None:
    """A deleted tenant's id stays refused; a tenant created after the snapshot is not refused."""
    store = _store(registry, master_keys)
    gone = registry.create_tenant("gone")
    kept = registry.create_tenant("kept")
    paused = registry.create_tenant("paused")
    registry.set_tenant_state("paused", "suspended")
    registry.delete_tenant("gone")
    snapshot = store.denied(now=datetime.now(UTC))
    assert snapshot.deleted_tenants == {gone.id}
    assert snapshot.tenant_refused(gone.id)
    assert snapshot.tenant_refused(paused.id)
    assert not snapshot.tenant_refused(kept.id)
    fresh = registry.create_tenant("fresh")
    assert not snapshot.tenant_refused(fresh.id)  # not in the (older) snapshot at all


def test_deleted_tenant_with_same_name_again_is_a_new_id(registry: Registry, master_keys) -> None:
    """Re-creating a deleted tenant's name gives a new id, which is served."""
    store = _store(registry, master_keys)
    first = registry.create_tenant("again")
    registry.delete_tenant("again")
    second = registry.create_tenant("again")
    snapshot = store.denied(now=datetime.now(UTC))
    assert snapshot.tenant_refused(first.id)
    assert not snapshot.tenant_refused(second.id)
