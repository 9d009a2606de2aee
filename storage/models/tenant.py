"""Tenants and their versioned keys."""

from __future__ import annotations

from sqlalchemy import CheckConstraint, ForeignKey, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base
from storage.types import created_at, uuid_pk

TENANT_STATES = ("active", "suspended")
TENANT_KEY_STATES = ("active", "retired")


class Tenant(Base):
    """A customer. Its id is what tokens name; its name is what people type."""

    __tablename__ = "tenants"
    __table_args__ = (CheckConstraint("state IN ('active', 'suspended')", name="state"),)

    id: Mapped[uuid_pk]
    name: Mapped[str] = mapped_column(String(63), unique=True)
    state: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[created_at]


class TenantKey(Base):
    """One version of a tenant's AES-256 key, wrapped by a master key.

    Deleting these rows is what makes a deleted tenant's data unreadable
    (crypto-shredding).
    """

    __tablename__ = "tenant_keys"
    __table_args__ = (
        UniqueConstraint("tenant_id", "version"),
        CheckConstraint("state IN ('active', 'retired')", name="state"),
    )

    id: Mapped[uuid_pk]
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    version: Mapped[int]
    master_key_id: Mapped[str] = mapped_column(
        String(64), comment="id of the master key that wraps this key"
    )
    wrapped_key: Mapped[bytes] = mapped_column(
        LargeBinary, comment="nonce || AES-GCM(master key, tenant key); never plaintext"
    )
    state: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[created_at]
