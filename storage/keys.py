"""The key hierarchy: master key → tenant key versions → one data key per version.

What each wrapped key is bound to (its associated data) is defined here and
nowhere else, so sealing and unsealing cannot drift apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from storage.crypto.envelope import associated_data, new_key, unwrap_key, wrap_key
from storage.errors import KeyUnavailable
from storage.models import DataKey, TenantKey

if TYPE_CHECKING:
    from storage.crypto.master import MasterKeyRing
    from storage.models import ModelVersion
    from storage.repositories import TenantRepository


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
        aad = associated_data("tenant-key", tenant_id, version, master.key_id)
        return TenantKey(
            tenant_id=tenant_id,
            version=version,
            master_key_id=master.key_id,
            wrapped_key=wrap_key(master.key, new_key(), aad=aad),
        )

    def tenant_key(self, row: TenantKey) -> bytes:
        """Unwrap a tenant key row with the master key its header names."""
        master = self.master_keys.get(row.master_key_id)
        aad = associated_data("tenant-key", row.tenant_id, row.version, row.master_key_id)
        return unwrap_key(master.key, row.wrapped_key, aad=aad, what="tenant key")

    def new_data_key(self, repo: TenantRepository, version: ModelVersion) -> tuple[bytes, DataKey]:
        """A fresh data key for ``version`` and its row, wrapped by the active tenant key."""
        tenant_row = repo.active_tenant_key()
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


def _data_key_aad(version: ModelVersion, tenant_key_version: int) -> bytes:
    return associated_data(
        "data-key", version.tenant_id, version.model_id, version.version, tenant_key_version
    )
