"""Sealed model bytes and the data keys that seal them."""

from __future__ import annotations

from sqlalchemy import ForeignKey, LargeBinary
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base
from storage.types import created_at, uuid_pk


class DataKey(Base):
    """The AES-256 key of one model version, wrapped by a tenant key version."""

    __tablename__ = "data_keys"

    id: Mapped[uuid_pk]
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    model_version_id: Mapped[str] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), unique=True
    )
    tenant_key_version: Mapped[int] = mapped_column(
        comment="version of the tenant key that wraps this key"
    )
    wrapped_key: Mapped[bytes] = mapped_column(
        LargeBinary, comment="nonce || AES-GCM(tenant key, data key); never plaintext"
    )
    created_at: Mapped[created_at]


class SealedSegment(Base):
    """One AES-256-GCM segment (at most 1 MiB of plaintext) of a model version."""

    __tablename__ = "sealed_segments"

    model_version_id: Mapped[str] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True
    )
    idx: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
