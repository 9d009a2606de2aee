"""Persistence for identity: clients, signing keys, the token deny-list, server secrets.

Client lookup by ``client_id`` is the one query here that is not scoped to a
tenant: it is how the tenant of a caller is found in the first place, and it
returns only what authentication needs. Listing and revoking clients are
scoped like every other tenant query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from storage.audit import Actor, AuditLog
from storage.crypto.envelope import associated_data, unwrap_key_bytes, wrap_key
from storage.db import unit_of_work
from storage.errors import Conflict, NotFound
from storage.models import AuditEntry, Client, RevokedToken, SigningKey, Tenant
from storage.secrets import server_secret
from storage.types import utcnow

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from datetime import datetime

    from sqlalchemy.orm import Session, sessionmaker

    from storage.crypto.master import MasterKeyRing

CLIENT_NOT_FOUND = "client '{client_id}' not found"
TENANT_DELETED = "tenant.delete"
"""The audit action ``Registry.delete_tenant`` records; the deny-list reads it back."""


@dataclass(frozen=True)
class ClientRecord:
    """A client as authentication and listings see it (the hash, never a secret)."""

    client_id: str
    tenant_id: str | None
    role: str
    name: str
    secret_hash: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class SigningKeyRecord:
    """A signing key with its private part unwrapped (PKCS#8 DER)."""

    kid: str
    alg: str
    state: str
    private_key: bytes
    public_jwk: dict[str, Any]
    created_at: datetime
    activated_at: datetime | None
    retired_after: datetime | None


@dataclass(frozen=True)
class DenySnapshot:
    """Revoked token ids, suspended and deleted tenant ids, revoked client ids, at one moment.

    Tenants are refused by what is known *against* them (suspended, deleted),
    never by absence from a list of live ones: a tenant created a moment ago
    is in no snapshot yet and must still be served.
    """

    token_ids: frozenset[str]
    suspended_tenants: frozenset[str]
    revoked_clients: frozenset[str]
    deleted_tenants: frozenset[str] = frozenset()

    def tenant_refused(self, tenant_id: str) -> bool:
        """Whether tokens naming this tenant must be refused (suspended or deleted)."""
        return tenant_id in self.suspended_tenants or tenant_id in self.deleted_tenants


def _client(row: Client) -> ClientRecord:
    return ClientRecord(
        client_id=row.client_id,
        tenant_id=row.tenant_id,
        role=row.role,
        name=row.name,
        secret_hash=row.secret_hash,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


class IdentityStore:
    """Reads and writes identity rows, wrapping secrets with the master key."""

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        master_keys: MasterKeyRing,
        audit: AuditLog | None = None,
    ) -> None:
        self._sessions = session_factory
        self._master_keys = master_keys
        self.audit = audit or AuditLog(session_factory=session_factory, master_keys=master_keys)

    def add_client(
        self,
        *,
        client_id: str,
        tenant_id: str | None,
        role: str,
        name: str,
        secret_hash: str,
        actor: Actor | None = None,
    ) -> ClientRecord:
        """Store a new client; its tenant must exist."""
        try:
            with unit_of_work(self._sessions, write=True) as session:
                if tenant_id is not None and session.get(Tenant, tenant_id) is None:
                    raise NotFound("tenant not found")
                row = Client(
                    client_id=client_id,
                    tenant_id=tenant_id,
                    role=role,
                    name=name,
                    secret_hash=secret_hash,
                )
                session.add(row)
                session.flush()
                self.audit.append_action(
                    session,
                    actor,
                    "client.create",
                    f"client:{client_id}",
                    tenant_id,
                    details={"role": role},
                )
                return _client(row)
        except IntegrityError:
            raise Conflict("client id already exists") from None

    def find_client(self, client_id: str) -> ClientRecord | None:
        """The client with this id, for authentication (any tenant), or ``None``."""
        with unit_of_work(self._sessions) as session:
            row = session.scalar(select(Client).where(Client.client_id == client_id))
            return None if row is None else _client(row)

    def list_clients(self, tenant_id: str | None) -> list[ClientRecord]:
        """The clients of one tenant, or the platform's own (``None``)."""
        with unit_of_work(self._sessions) as session:
            rows = session.scalars(
                select(Client).where(_tenant_is(tenant_id)).order_by(Client.created_at)
            )
            return [_client(row) for row in rows]

    def revoke_client(
        self, tenant_id: str | None, client_id: str, *, actor: Actor | None = None
    ) -> ClientRecord:
        """Mark a client revoked; it can no longer obtain tokens."""
        with unit_of_work(self._sessions, write=True) as session:
            row = session.scalar(
                select(Client).where(Client.client_id == client_id, _tenant_is(tenant_id))
            )
            if row is None:
                raise NotFound(CLIENT_NOT_FOUND.format(client_id=client_id))
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            self.audit.append_action(
                session, actor, "client.revoke", f"client:{client_id}", tenant_id
            )
            return _client(row)

    # --- the token deny-list and tenant suspension -------------------------------
    def revoke_token(
        self,
        jti: str,
        *,
        expires_at: datetime,
        tenant_id: str | None = None,
        actor: Actor | None = None,
    ) -> None:
        """Put a token id on the deny-list until it expires (idempotent)."""
        with unit_of_work(self._sessions, write=True) as session:
            if session.get(RevokedToken, jti) is None:
                session.add(RevokedToken(jti=jti, expires_at=expires_at))
            # The token id identifies the token without being it: safe to record.
            self.audit.append_action(session, actor, "token.revoke", f"token:{jti}", tenant_id)

    def denied(self, *, now: datetime) -> DenySnapshot:
        """What must be refused now; prunes token ids whose tokens have expired anyway."""
        with unit_of_work(self._sessions) as session:
            session.execute(delete(RevokedToken).where(RevokedToken.expires_at < now))
            return DenySnapshot(
                token_ids=frozenset(session.scalars(select(RevokedToken.jti))),
                suspended_tenants=frozenset(
                    session.scalars(select(Tenant.id).where(Tenant.state == "suspended"))
                ),
                revoked_clients=frozenset(
                    session.scalars(select(Client.client_id).where(Client.revoked_at.is_not(None)))
                ),
                deleted_tenants=_deleted_tenants(session),
            )

    # --- signing keys -----------------------------------------------------------------
    def load_signing_keys(self) -> list[SigningKeyRecord]:
        """Every signing key not yet retired, private parts unwrapped."""
        with unit_of_work(self._sessions) as session:
            rows = session.scalars(
                select(SigningKey)
                .where(SigningKey.state != "retired")
                .order_by(SigningKey.created_at)
            )
            return [self._signing_key(row) for row in rows]

    def save_signing_keys(
        self, keys: Iterable[SigningKeyRecord], *, actor: Actor | None = None
    ) -> None:
        """Insert new keys and move existing ones to their new states, in one transaction."""
        keys = list(keys)
        with unit_of_work(self._sessions, write=True) as session:
            self.audit.append_action(
                session,
                actor,
                "keys.rotate-signing",
                "signing-keys",
                None,
                details={k.kid: k.state for k in keys},
            )
            for key in keys:
                row = session.get(SigningKey, key.kid)
                if row is None:
                    master = self._master_keys.primary
                    session.add(
                        SigningKey(
                            kid=key.kid,
                            alg=key.alg,
                            state=key.state,
                            master_key_id=master.key_id,
                            wrapped_private_key=wrap_key(
                                master.key,
                                key.private_key,
                                aad=associated_data("signing-key", key.kid, master.key_id),
                            ),
                            public_jwk=key.public_jwk,
                            created_at=key.created_at,
                            activated_at=key.activated_at,
                            retired_after=key.retired_after,
                        )
                    )
                else:
                    session.execute(
                        update(SigningKey)
                        .where(SigningKey.kid == key.kid)
                        .values(
                            state=key.state,
                            activated_at=key.activated_at,
                            retired_after=key.retired_after,
                        )
                    )

    def _signing_key(self, row: SigningKey) -> SigningKeyRecord:
        master = self._master_keys.get(row.master_key_id)
        private = unwrap_key_bytes(
            master.key,
            row.wrapped_private_key,
            aad=associated_data("signing-key", row.kid, row.master_key_id),
            what="signing key",
        )
        return SigningKeyRecord(
            kid=row.kid,
            alg=row.alg,
            state=row.state,
            private_key=private,
            public_jwk=row.public_jwk,
            created_at=row.created_at,
            activated_at=row.activated_at,
            retired_after=row.retired_after,
        )

    # --- server secrets --------------------------------------------------------------
    def server_secret(self, name: str, *, create: Callable[[], bytes]) -> bytes:
        """The named secret, created (by ``create``) and stored wrapped on first use."""
        with unit_of_work(self._sessions, write=True) as session:
            return server_secret(session, self._master_keys, name, create=create)


def _deleted_tenants(session: Session) -> frozenset[str]:
    """Ids of every tenant ever deleted, read from the audit log.

    A deleted tenant's row is gone, so its id survives only in the audit
    entry written in the deletion's own transaction (no deletion commits
    without it, and the log is append-only). The lookup uses the index on
    ``action`` and returns one row per deletion; tenant ids are random UUIDs,
    never reused, so the set only ever grows by the rare deletion.
    """
    return frozenset(
        tenant_id
        for tenant_id in session.scalars(
            select(AuditEntry.tenant_id)
            .where(AuditEntry.action == TENANT_DELETED, AuditEntry.outcome == "success")
            .distinct()
        )
        if tenant_id is not None
    )


def _tenant_is(tenant_id: str | None) -> Any:
    return Client.tenant_id.is_(None) if tenant_id is None else Client.tenant_id == tenant_id
