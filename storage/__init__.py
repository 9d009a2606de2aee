"""Database-backed model registry with per-tenant envelope encryption.

The public surface is re-exported here; everything else is an implementation
detail of the modules below it.
"""

from storage.batching import BatchSettings
from storage.crypto.master import MasterKey, MasterKeyRing
from storage.db import make_engine, make_session_factory, unit_of_work
from storage.errors import (
    Conflict,
    DecryptionFailed,
    InvalidInput,
    KeyUnavailable,
    NotFound,
    StorageError,
)
from storage.records import ModelInfo, ModelVersionInfo, TenantInfo
from storage.registry import Registry

__all__ = [
    "BatchSettings",
    "Conflict",
    "DecryptionFailed",
    "InvalidInput",
    "KeyUnavailable",
    "MasterKey",
    "MasterKeyRing",
    "ModelInfo",
    "ModelVersionInfo",
    "NotFound",
    "Registry",
    "StorageError",
    "TenantInfo",
    "make_engine",
    "make_session_factory",
    "unit_of_work",
]
