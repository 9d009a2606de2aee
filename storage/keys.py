"""The key hierarchy: master key → tenant key versions → one data key per version.

What each wrapped key is bound to (its associated data) is defined here and
nowhere else, so sealing and unsealing cannot drift apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select

from storage.crypto.envelope import associated_data, new_key, unwrap_key, wrap_key
from storage.errors import Conflict, KeyUnavailable
from storage.models import DataKey, TenantKey

if TYPE_CHECKING:
    from storage.crypto.master import MasterKey, MasterKeyRing
    from storage.models import ModelVersion
    from storage.repositories import TenantRepository

_ACTIVE_KEY_ATTEMPTS = 5


def segment_aad_fields(version: ModelVersion) -> tuple[str, str, int]:
    """What every segment of ``version`` is bound to (plus its index and last flag)."""
    return (version.tenant_id, version.model_id, version.version)


class KeyHierarchy:
    """Creates and unwraps tenant and data keys with the master key ring."""

    def __init__(self, master_keys: MasterKeyRing) -> None:
        self.master_keys = master_keys

    def new_tenant_key(self, *, tenant_id: str, version: int) -> TenantKey:
        """A fresh tenant key row, wrapped by the primary master key."""
        master = self.master_keys.primary
        aad = tenant_key_aad(tenant_id, version, master.key_id)
        return TenantKey(
            tenant_id=tenant_id,
            version=version,
            master_key_id=master.key_id,
            wrapped_key=wrap_key(master.key, new_key(), aad=aad),
        )

    def tenant_key(self, row: TenantKey) -> bytes:
        """Unwrap a tenant key row with the master key its header names."""
        master = self.master_keys.get(row.master_key_id)
        aad = tenant_key_aad(row.tenant_id, row.version, row.master_key_id)
        return unwrap_key(master.key, row.wrapped_key, aad=aad, what="tenant key")

    def rewrap_tenant_key(self, row: TenantKey, target: MasterKey) -> bytes:
        """``row``'s tenant key wrapped by ``target`` instead (for a master key rotation)."""
        aad = tenant_key_aad(row.tenant_id, row.version, target.key_id)
        return wrap_key(target.key, self.tenant_key(row), aad=aad)

    @staticmethod
    def rewrap_data_key(
        version: ModelVersion, row: DataKey, *, old: bytes, new: bytes, new_version: int
    ) -> bytes:
        """``row``'s data key, unwrapped with tenant key ``old``, wrapped by ``new``.

        The model's segments are untouched: only the 60-byte wrapped key changes.
        """
        key = unwrap_key(
            old,
            row.wrapped_key,
            aad=_data_key_aad(version, row.tenant_key_version),
            what="data key",
        )
        return wrap_key(new, key, aad=_data_key_aad(version, new_version))

    def new_data_key(self, repo: TenantRepository, version: ModelVersion) -> tuple[bytes, DataKey]:
        """A fresh data key for ``version`` and its row, wrapped by the active tenant key."""
        tenant_row = _lock_active_key(repo)
        key = new_key()
        aad = _data_key_aad(version, tenant_row.version)
        row = DataKey(
            tenant_id=version.tenant_id,
            model_version_id=version.id,
            tenant_key_version=tenant_row.version,
            wrapped_key=wrap_key(self.tenant_key(tenant_row), key, aad=aad),
        )
        return key, row

    def data_key(
        self, version: ModelVersion, row: DataKey | None, tenant_row: TenantKey | None
    ) -> bytes:
        """Unwrap the data key of ``version``, choosing keys by the ids stored with it.

        ``row`` and ``tenant_row`` are the data key and the tenant key version
        that ``version``'s header names (``None`` when missing).
        """
        if row is None:
            msg = "the data key of this model version is missing"
            raise KeyUnavailable(msg, detail=f"version row {version.id}")
        if tenant_row is None:
            msg = "the tenant key that sealed this model version no longer exists"
            raise KeyUnavailable(msg, detail=f"tenant key v{row.tenant_key_version}")
        aad = _data_key_aad(version, row.tenant_key_version)
        return unwrap_key(self.tenant_key(tenant_row), row.wrapped_key, aad=aad, what="data key")


def _lock_active_key(repo: TenantRepository) -> TenantKey:
    """The active tenant key, share-locked until the sealing transaction ends.

    A tenant key rotation destroys the old version only after taking it
    ``FOR UPDATE``, so it waits for every upload still wrapping under it and
    then re-wraps that upload's data key too: no data key is ever left naming
    a destroyed key. If a rotation retired the key meanwhile, the locking read
    finds it no longer active and the new active one is taken instead.
    (SQLite needs none of this: a sealing transaction holds the write lock.)
    """
    for _ in range(_ACTIVE_KEY_ATTEMPTS):
        row = repo.active_tenant_key()
        still_active = repo.session.scalar(
            select(TenantKey.version)
            .where(TenantKey.id == row.id, TenantKey.state == "active")
            .with_for_update(read=True)
        )
        if still_active is not None:
            return row
    msg = "the tenant's key is being rotated; try again"
    raise Conflict(msg)


def tenant_key_aad(tenant_id: str, version: int, master_key_id: str) -> bytes:
    """What a wrapped tenant key is bound to: its tenant, version and wrapping master key."""
    return associated_data("tenant-key", tenant_id, version, master_key_id)


def server_secret_aad(name: str, master_key_id: str) -> bytes:
    """What a wrapped server secret (pepper, audit checkpoint key) is bound to."""
    return associated_data("server-secret", name, master_key_id)


def signing_key_aad(kid: str, master_key_id: str) -> bytes:
    """What a wrapped token signing key is bound to."""
    return associated_data("signing-key", kid, master_key_id)


def _data_key_aad(version: ModelVersion, tenant_key_version: int) -> bytes:
    return associated_data(
        "data-key", version.tenant_id, version.model_id, version.version, tenant_key_version
    )
