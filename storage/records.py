"""What callers see of registry rows: tenants, models and versions without their bytes.

The registry returns these frozen records, never ORM rows, so nothing outside
``storage`` holds a session-bound object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from storage.batching import BatchSettings

if TYPE_CHECKING:
    from datetime import datetime

    from storage.models import Model, ModelVersion, Tenant


@dataclass(frozen=True)
class TenantInfo:
    """A tenant as callers see it."""

    id: str
    name: str
    state: str
    created_at: datetime


@dataclass(frozen=True)
class ModelVersionInfo:
    """A model version as callers see it: everything but the bytes."""

    id: str
    tenant_id: str
    model_id: str
    model_name: str
    version: int
    state: str
    format: str
    signature: dict[str, Any]
    size_plain: int
    size_stored: int
    sha256: str
    compression: str
    created_at: datetime
    labels: tuple[str, ...] = ()
    report: dict[str, Any] | None = None
    batching: BatchSettings | None = None
    """The version's own batching settings; ``None``: the server's defaults."""


@dataclass(frozen=True)
class ModelInfo:
    """A model with its versions and labels."""

    id: str
    name: str
    created_at: datetime
    versions: tuple[ModelVersionInfo, ...] = ()
    labels: dict[str, int] = field(default_factory=dict)


def tenant_info(row: Tenant) -> TenantInfo:
    """The record of a tenant row."""
    return TenantInfo(id=row.id, name=row.name, state=row.state, created_at=row.created_at)


def version_info(row: ModelVersion, model: Model, labels: dict[str, int]) -> ModelVersionInfo:
    """The record of a version row; ``labels`` are its model's (name to version number)."""
    return ModelVersionInfo(
        id=row.id,
        tenant_id=row.tenant_id,
        model_id=row.model_id,
        model_name=model.name,
        version=row.version,
        state=row.state,
        format=row.format,
        signature=row.signature,
        size_plain=row.size_plain,
        size_stored=row.size_stored,
        sha256=row.sha256,
        compression=row.compression,
        created_at=row.created_at,
        labels=tuple(sorted(name for name, number in labels.items() if number == row.version)),
        report=row.report,
        batching=batching_of(row),
    )


def batching_of(row: ModelVersion) -> BatchSettings | None:
    """A version's own batching settings; ``None`` when it keeps the server's defaults."""
    settings = BatchSettings(
        enabled=row.batch_enabled,
        max_batch_size=row.batch_max_size,
        max_queue_delay_ms=row.batch_max_delay_ms,
    )
    return None if settings.is_default else settings


def store_batching(row: ModelVersion, settings: BatchSettings | None) -> None:
    """Write ``settings`` into a version row (``None``: back to the server's defaults)."""
    settings = settings or BatchSettings()
    row.batch_enabled = settings.enabled
    row.batch_max_size = settings.max_batch_size
    row.batch_max_delay_ms = settings.max_queue_delay_ms
