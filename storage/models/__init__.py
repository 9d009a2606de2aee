"""ORM tables. Every tenant-owned row carries ``tenant_id``."""

from storage.models.audit import AuditCheckpoint, AuditEntry, AuditHead
from storage.models.identity import Client, RevokedToken, ServerSecret, SigningKey
from storage.models.job import Job
from storage.models.model import Model, ModelLabel, ModelVersion
from storage.models.sealed import DataKey, SealedSegment
from storage.models.tenant import Tenant, TenantKey

__all__ = [
    "AuditCheckpoint",
    "AuditEntry",
    "AuditHead",
    "Client",
    "DataKey",
    "Job",
    "Model",
    "ModelLabel",
    "ModelVersion",
    "RevokedToken",
    "SealedSegment",
    "ServerSecret",
    "SigningKey",
    "Tenant",
    "TenantKey",
]
