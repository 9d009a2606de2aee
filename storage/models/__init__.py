"""ORM tables. Every tenant-owned row carries ``tenant_id``."""

from storage.models.model import Model, ModelLabel, ModelVersion
from storage.models.sealed import DataKey, SealedSegment
from storage.models.tenant import Tenant, TenantKey

__all__ = ["DataKey", "Model", "ModelLabel", "ModelVersion", "SealedSegment", "Tenant", "TenantKey"]
