"""Identity rows: API clients, token signing keys, revoked tokens, server secrets.

These hold no plaintext secret: client secrets are stored as keyed hashes,
private keys and server secrets wrapped by the master key.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base
from storage.types import TZDateTime, created_at, uuid_pk


class Client(Base):
    """A service account: a tenant's (``tenant_id`` set) or the platform's (null)."""

    __tablename__ = "clients"

    id: Mapped[uuid_pk]
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    tenant_id: Mapped[str | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(128), default="")
    secret_hash: Mapped[str] = mapped_column(
        String(128), comment="keyed hash (HMAC-SHA256 with the server pepper); never the secret"
    )
    created_at: Mapped[created_at]
    revoked_at: Mapped[datetime | None] = mapped_column(TZDateTime(), default=None)


class SigningKey(Base):
    """A token signing key and its place in the rotation (next → primary → previous → retired)."""

    __tablename__ = "signing_keys"
    __table_args__ = (
        CheckConstraint("state IN ('next', 'primary', 'previous', 'retired')", name="state"),
    )

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    alg: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    master_key_id: Mapped[str] = mapped_column(String(64))
    wrapped_private_key: Mapped[bytes] = mapped_column(
        LargeBinary, comment="nonce || AES-GCM(master key, PKCS#8 DER); never plaintext"
    )
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[created_at]
    activated_at: Mapped[datetime | None] = mapped_column(TZDateTime(), default=None)
    retired_after: Mapped[datetime | None] = mapped_column(TZDateTime(), default=None)


class RevokedToken(Base):
    """A token id on the deny-list until the token would have expired anyway."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(String(256), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(TZDateTime(), index=True)
    revoked_at: Mapped[created_at]


class ServerSecret(Base):
    """A named server-wide secret (e.g. the client-secret pepper), wrapped by the master key."""

    __tablename__ = "server_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    master_key_id: Mapped[str] = mapped_column(String(64))
    wrapped_value: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[created_at]
