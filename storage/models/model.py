"""Models, their versions and labels."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base
from storage.types import created_at, uuid_pk

VERSION_STATES = ("pending", "ready", "failed")


class Model(Base):
    """A named model inside one tenant."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[uuid_pk]
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[created_at]


class ModelVersion(Base):
    """One immutable, sealed version of a model and what is known about it."""

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model_id", "version"),
        CheckConstraint("state IN ('pending', 'ready', 'failed')", name="state"),
        CheckConstraint("batch_max_size BETWEEN 1 AND 1024", name="batch_max_size"),
        CheckConstraint("batch_max_delay_ms BETWEEN 0 AND 1000", name="batch_max_delay_ms"),
    )

    id: Mapped[uuid_pk]
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[int]
    state: Mapped[str] = mapped_column(String(16), default="pending")
    format: Mapped[str] = mapped_column(String(32))
    signature: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    size_plain: Mapped[int] = mapped_column(BigInteger, comment="bytes before compression")
    size_stored: Mapped[int] = mapped_column(BigInteger, comment="ciphertext bytes at rest")
    sha256: Mapped[str] = mapped_column(
        String(64), comment="SHA-256 of the plaintext, checked after every unseal"
    )
    compression: Mapped[str] = mapped_column(String(16))
    segment_size: Mapped[int]
    segment_count: Mapped[int]
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[created_at]
    # Dynamic batching for this version (``storage.batching``); NULL: the server default.
    batch_enabled: Mapped[bool | None] = mapped_column(
        default=None, comment="false: batching off for this version"
    )
    batch_max_size: Mapped[int | None] = mapped_column(
        default=None, comment="most rows per invocation"
    )
    batch_max_delay_ms: Mapped[float | None] = mapped_column(
        Float, default=None, comment="longest a call waits to fill a batch"
    )


class ModelLabel(Base):
    """A movable name (``stable``, ``canary``...) for one version of a model."""

    __tablename__ = "model_labels"
    __table_args__ = (
        # The label's version must belong to the label's model.
        ForeignKeyConstraint(
            ["model_id", "version"],
            ["model_versions.model_id", "model_versions.version"],
            ondelete="CASCADE",
            name="fk_model_labels_version",
        ),
    )

    model_id: Mapped[str] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    label: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    version: Mapped[int]
