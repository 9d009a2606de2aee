"""Access control shared by both transports: tokens in, principals out.

``AccessControl.check`` is the one entry point the REST dependency and the
gRPC guard call. It looks the operation up in ``server.policy``,
verifies the bearer token (cached), and calls ``auth.authorize`` with the
scope the table names. Client credentials are exchanged for tokens here too.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog

from auth import (
    ROLE_SCOPES,
    AuthError,
    InvalidClient,
    InvalidGrant,
    KeyAlgorithm,
    KeySet,
    KeyState,
    PermissionDenied,
    Role,
    SigningKey,
    TokenIssuer,
    TokenVerifier,
    Unauthenticated,
    authorize,
    bearer_token,
    dummy_verify,
    narrow_scopes,
    rotate,
    verify_client_secret,
)
from server.policy import OPERATIONS
from server.service.audit import DenialKey
from server.service.context import current_actor, named_actor
from storage.audit import AuditEvent
from storage.identity import DenySnapshot, SigningKeyRecord

if TYPE_CHECKING:
    from auth import IssuedToken, Principal, VerificationKey
    from server.service.audit import AuditRecorder
    from storage.identity import IdentityStore

log = structlog.get_logger(__name__)


def _ts(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _unix(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


class DenyList:
    """Revoked token ids, suspended and deleted tenants, as in-memory sets.

    Refreshed from the database every ``max_age`` seconds by a background
    thread (``start``), so a revocation made by another gateway or the CLI
    applies within that time without a query on any call's path, and at once
    after a change made through this process. Without the thread (CLI, tests)
    a stale read refreshes in line.
    """

    def __init__(self, store: IdentityStore, *, max_age: float = 1.0) -> None:
        self._store = store
        self._max_age = max_age
        self._lock = threading.Lock()
        self._loaded_at = float("-inf")
        self._stop = threading.Event()
        self._snapshot = DenySnapshot(
            token_ids=frozenset(), suspended_tenants=frozenset(), revoked_clients=frozenset()
        )

    def refresh(self) -> None:
        """Reload the sets now."""
        snapshot = self._store.denied(now=datetime.now(UTC))
        with self._lock:
            self._snapshot = snapshot
            self._loaded_at = time.monotonic()

    def start(self) -> None:
        """Refresh in a daemon thread from now on."""
        self.refresh()
        self._stop.clear()
        thread = threading.Thread(target=self._run, name="deny-list", daemon=True)
        thread.start()

    def stop(self) -> None:
        """Stop the background refresh."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._max_age):
            try:
                self.refresh()
            except Exception:
                log.warning("deny-list refresh failed", exc_info=True)

    def _fresh(self) -> None:
        # With the thread running this is a clock read; if the thread stalls,
        # refreshing in line keeps revocations effective (and fails closed).
        if time.monotonic() - self._loaded_at > 3 * self._max_age:
            self.refresh()

    def revoked(self, jti: str) -> bool:
        """Whether the token id is on the deny-list."""
        self._fresh()
        return jti in self._snapshot.token_ids

    def suspended(self, tenant_id: str) -> bool:
        """Whether the tenant is suspended or deleted: either way its tokens are refused.

        One check for both, so every caller that refuses a suspended tenant
        (token verification, token issuance) refuses a deleted one the same
        way, with the same error, without a second code path to forget.
        """
        self._fresh()
        return self._snapshot.tenant_refused(tenant_id)

    def client_revoked(self, client_id: str | None) -> bool:
        """Whether the client that obtained a token has since been revoked."""
        self._fresh()
        return client_id is not None and client_id in self._snapshot.revoked_clients


class SigningKeys:
    """The server's signing keys: loaded from storage, rotated, looked up by ``kid``."""

    def __init__(self, store: IdentityStore, *, alg: KeyAlgorithm, max_token_lifetime: int) -> None:
        self._store = store
        self._alg = alg
        self._max_token_lifetime = max_token_lifetime
        self._set = KeySet(())
        self._loaded_at = float("-inf")

    @property
    def current(self) -> KeySet:
        """The key set in use."""
        return self._set

    def load(self) -> KeySet:
        """Read the keys from storage, creating the first pair if there are none."""
        records = self._store.load_signing_keys()
        if not records:
            return self.rotate()
        self._set = KeySet(self._from_record(r) for r in records)
        self._loaded_at = time.monotonic()
        return self._set

    def rotate(self) -> KeySet:
        """One rotation step (next → primary → previous → retired), stored, then loaded."""
        keys = rotate(
            self._set.keys or self._current_from_store(),
            now=int(time.time()),
            max_token_lifetime=self._max_token_lifetime,
            alg=self._alg,
        )
        self._store.save_signing_keys(
            (self._to_record(key) for key in keys), actor=current_actor(None)
        )
        self._set = KeySet(k for k in keys if k.state is not KeyState.RETIRED)
        self._loaded_at = time.monotonic()
        return self._set

    def _current_from_store(self) -> list[SigningKey]:
        return [self._from_record(r) for r in self._store.load_signing_keys()]

    def resolve(self, kid: str) -> VerificationKey | None:
        """The verification key for ``kid``; reloads (at most every 5 s) on an unknown one."""
        key = self._set.verification_key(kid)
        if key is None and time.monotonic() - self._loaded_at > 5.0:  # noqa: PLR2004
            key = self.load().verification_key(kid)
        return key

    @staticmethod
    def _from_record(record: SigningKeyRecord) -> SigningKey:
        return SigningKey.from_private_bytes(
            record.private_key,
            kid=record.kid,
            state=KeyState(record.state),
            created_at=_unix(record.created_at) or 0,
            activated_at=_unix(record.activated_at),
            retired_after=_unix(record.retired_after),
        )

    @staticmethod
    def _to_record(key: SigningKey) -> SigningKeyRecord:
        return SigningKeyRecord(
            kid=key.kid,
            alg=str(key.alg),
            state=str(key.state),
            private_key=key.private_bytes(),
            public_jwk=key.public_jwk(),
            created_at=_ts(key.created_at) or datetime.now(UTC),
            activated_at=_ts(key.activated_at),
            retired_after=_ts(key.retired_after),
        )


def _is_public(operation: str | None) -> bool:
    return operation is not None and operation in OPERATIONS and OPERATIONS[operation] is None


class AccessControl:
    """Authenticates calls, authorizes operations, and issues tokens."""

    def __init__(
        self,
        *,
        store: IdentityStore,
        issuer: TokenIssuer,
        verifier: TokenVerifier,
        deny: DenyList,
        pepper: bytes,
    ) -> None:
        self._store = store
        self._issuer = issuer
        self.verifier = verifier
        self.deny = deny
        self._pepper = pepper
        self.recorder: AuditRecorder | None = None

    async def authorize_call(
        self, operation: str | None, authorization: str | None
    ) -> Principal | None:
        """``check`` for a live call: a refusal is also queued for the audit log."""
        principal: Principal | None = None
        try:
            if _is_public(operation):
                return None
            principal = self.authenticate(authorization)
            return self._permit(operation, principal)
        except AuthError as exc:
            if self.recorder is not None:
                # Counted, not recorded one by one: anyone can send bad tokens.
                actor = current_actor(principal) if principal else named_actor(None)
                self.recorder.count_denial(
                    DenialKey(
                        action="auth.denied"
                        if isinstance(exc, PermissionDenied)
                        else "auth.failure",
                        tenant_id=principal.tenant_id if principal else None,
                        subject=actor.subject,
                        client_id=actor.client_id,
                        client_addr=actor.client_addr,
                        operation=operation or "unlisted",
                        reason=exc.message,
                    )
                )
            raise

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer`` value, or ``Unauthenticated``."""
        principal = self.verifier.verify(bearer_token(authorization))
        if self.deny.client_revoked(principal.client_id):
            raise Unauthenticated("token has been revoked")
        return principal

    def check(self, operation: str | None, authorization: str | None) -> Principal | None:
        """Authenticate and authorize one call to ``operation``; ``None`` for public ones.

        An operation missing from the policy table is denied (after
        authentication, so an anonymous caller still learns nothing).
        """
        if _is_public(operation):
            return None
        return self._permit(operation, self.authenticate(authorization))

    @staticmethod
    def _permit(operation: str | None, principal: Principal) -> Principal:
        """Authorize an authenticated principal for ``operation`` by the policy table."""
        scope = OPERATIONS.get(operation) if operation is not None else None
        if scope is None:
            raise PermissionDenied(detail=f"operation {operation!r} is not in the policy table")
        authorize(principal, scope, tenant_id=principal.tenant_id)
        return principal

    # --- client credentials ---------------------------------------------------------
    def issue_token(
        self, *, client_id: str | None, client_secret: str | None, scope: str | None
    ) -> IssuedToken:
        """Exchange client credentials for an access token; every attempt is audited."""
        try:
            issued = self._issue_token(
                client_id=client_id, client_secret=client_secret, scope=scope
            )
        except AuthError as exc:
            self._store.audit.record(
                AuditEvent(
                    action="token.issue",
                    resource=f"client:{client_id or '-'}",
                    outcome="failure",
                    actor=named_actor(client_id),
                    details={"reason": exc.message},
                )
            )
            raise
        self._store.audit.record(
            AuditEvent(
                action="token.issue",
                resource=f"client:{client_id}",
                tenant_id=issued.claims["tenant"] if issued.claims["tenant"] != "*" else None,
                actor=named_actor(client_id, client_id=client_id),
                details={"jti": issued.claims["jti"], "scope": issued.claims["scope"]},
            )
        )
        return issued

    def _issue_token(
        self, *, client_id: str | None, client_secret: str | None, scope: str | None
    ) -> IssuedToken:
        if not client_id or not client_secret:
            raise InvalidClient(detail="missing client credentials")
        client = self._store.find_client(client_id)
        if client is None:
            dummy_verify(client_secret, pepper=self._pepper)  # same cost as a wrong secret
            raise InvalidClient(detail="unknown client id")
        if not verify_client_secret(client_secret, client.secret_hash, pepper=self._pepper):
            raise InvalidClient(detail="wrong secret")
        if client.revoked_at is not None:
            raise InvalidClient(detail="client revoked")
        if client.tenant_id is not None and self.deny.suspended(client.tenant_id):
            raise InvalidGrant("the client's tenant is suspended")
        scopes = narrow_scopes(scope, granted=ROLE_SCOPES[Role(client.role)])
        return self._issuer.issue(
            subject=client.client_id,
            tenant_id=client.tenant_id,
            scopes=scopes,
            client_id=client.client_id,
        )

    def revoke_token(self, *, client_id: str | None, client_secret: str | None, token: str) -> None:
        """RFC 7009: a client revokes one of its own tokens; unknown tokens are ignored."""
        if not client_id or not client_secret:
            raise InvalidClient(detail="missing client credentials")
        client = self._store.find_client(client_id)
        if client is None or not verify_client_secret(
            client_secret, client.secret_hash, pepper=self._pepper
        ):
            raise InvalidClient(detail="bad credentials on revoke")
        try:
            principal = self.verifier.verify(token)
        except Unauthenticated:
            return  # already unusable: nothing to do (RFC 7009 §2.2)
        if principal.client_id != client.client_id:
            return  # not this client's token: same answer, no oracle
        self._store.revoke_token(
            principal.token_id,
            expires_at=datetime.fromtimestamp(principal.expires_at, UTC),
            tenant_id=principal.tenant_id,
            actor=current_actor(principal),
        )
        self.deny.refresh()
