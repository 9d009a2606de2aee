"""The authenticated caller, as the rest of the server sees it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from auth.permissions import Scope


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, for which tenant, with which scopes, until when.

    Built only by ``TokenVerifier`` from a verified token, so every field is
    something a trusted issuer signed. Frozen: a principal is shared between
    the verifier's cache and every request that presents the same token, and
    nobody may widen it after the fact.

    Invariants: ``tenant_id is None`` means a *platform* principal (acting
    across tenants, and only with platform scopes: see ``policy.authorize``);
    otherwise ``tenant_id`` is a non-empty tenant id taken from the token, and
    it is the only place the server takes the caller's tenant from.
    ``client_id`` is ``None`` only for an external issuer's token that names
    no client.
    """

    subject: str
    tenant_id: str | None
    scopes: frozenset[Scope]
    client_id: str | None
    token_id: str
    expires_at: int
    issuer: str

    @property
    def is_platform(self) -> bool:
        """Tell whether this principal acts platform-wide rather than for one tenant."""
        return self.tenant_id is None

    def has_scope(self, scope: Scope) -> bool:
        """Tell whether the token grants ``scope`` (it does not say the policy allows it)."""
        return scope in self.scopes
