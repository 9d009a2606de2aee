"""Scopes, roles, and the table that maps one to the other.

Deny by default: a principal can do exactly what its scopes name, and a role
is nothing but a named bundle of scopes. Scopes split in two families:

* *platform scopes* (``tenants:manage``, ``keys:rotate``, ``audit:read``) are
  the only ones that make sense without a tenant; a platform principal holding
  them acts across tenants;
* *tenant scopes* (``infer``, ``models:read``, ``models:write``, and
  ``audit:read`` again) act inside one tenant, the one named by the token.

``tenants:manage`` and ``keys:rotate`` are *platform-only*: no tenant role
holds them, and ``policy.authorize`` refuses them to a tenant principal even if
an external issuer put them in a token.
"""

from __future__ import annotations

from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING

from auth.errors import InvalidScope

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping


class Scope(StrEnum):
    """One permission, spelled as it appears in an OAuth2 ``scope`` string."""

    INFER = "infer"
    MODELS_READ = "models:read"
    MODELS_WRITE = "models:write"
    AUDIT_READ = "audit:read"
    KEYS_ROTATE = "keys:rotate"
    TENANTS_MANAGE = "tenants:manage"


class Role(StrEnum):
    """A named bundle of scopes, assigned to a client when it is registered."""

    PLATFORM_ADMIN = "platform-admin"
    AUDITOR = "auditor"
    TENANT_ADMIN = "tenant-admin"
    TENANT_CLIENT = "tenant-client"


ROLE_SCOPES: Mapping[Role, frozenset[Scope]] = MappingProxyType(
    {
        Role.PLATFORM_ADMIN: frozenset({Scope.TENANTS_MANAGE, Scope.KEYS_ROTATE, Scope.AUDIT_READ}),
        Role.AUDITOR: frozenset({Scope.AUDIT_READ}),
        Role.TENANT_ADMIN: frozenset(
            {Scope.MODELS_WRITE, Scope.MODELS_READ, Scope.AUDIT_READ, Scope.INFER}
        ),
        Role.TENANT_CLIENT: frozenset({Scope.INFER, Scope.MODELS_READ}),
    }
)
"""Scopes granted by each role. Read-only: the policy is code, not state."""

PLATFORM_ROLES: frozenset[Role] = frozenset({Role.PLATFORM_ADMIN, Role.AUDITOR})
"""Roles held by platform principals (no tenant; tokens carry the platform tenant claim)."""

TENANT_ROLES: frozenset[Role] = frozenset({Role.TENANT_ADMIN, Role.TENANT_CLIENT})
"""Roles held by principals of exactly one tenant."""

PLATFORM_SCOPES: frozenset[Scope] = frozenset(
    {Scope.TENANTS_MANAGE, Scope.KEYS_ROTATE, Scope.AUDIT_READ}
)
"""Scopes a platform principal may exercise, across every tenant."""

PLATFORM_ONLY_SCOPES: frozenset[Scope] = frozenset({Scope.TENANTS_MANAGE, Scope.KEYS_ROTATE})
"""Scopes that never belong to a tenant principal, whoever issued its token."""

TENANT_SCOPES: frozenset[Scope] = frozenset(Scope) - PLATFORM_ONLY_SCOPES
"""Scopes a tenant principal may exercise inside its own tenant."""


def is_platform_role(role: Role) -> bool:
    """Tell whether ``role`` is held without a tenant (platform-wide)."""
    return role in PLATFORM_ROLES


def scopes_for_roles(roles: Iterable[Role]) -> frozenset[Scope]:
    """Union of the scopes of ``roles``; no role, no scope."""
    granted: set[Scope] = set()
    for role in roles:
        granted |= ROLE_SCOPES[role]
    return frozenset(granted)


def parse_scope(text: str) -> frozenset[Scope]:
    """Parse an OAuth2 ``scope`` string (RFC 6749 §3.3: space-separated tokens).

    Every token must be a known scope: a client asking for a scope we do not
    have is told so (``InvalidScope``) rather than silently given less.
    Repeated spaces are tolerated; tabs and other separators are not.
    """
    requested: set[Scope] = set()
    for token in text.split(" "):
        if not token:
            continue
        try:
            requested.add(Scope(token))
        except ValueError:
            raise InvalidScope(detail="unknown scope requested") from None
    return frozenset(requested)


def narrow_scopes(requested: str | None, *, granted: frozenset[Scope]) -> frozenset[Scope]:
    """Scopes for a new token: the requested subset of what the client holds.

    No ``scope`` parameter (or a blank one) means every scope the client
    holds, the default RFC 6749 §3.3 allows. Asking for a scope the client
    does not hold raises ``InvalidScope``; so does ending up with no scope at
    all, because a token that can do nothing is a client misconfiguration.
    """
    wanted = parse_scope(requested or "") or granted
    if not wanted <= granted:
        raise InvalidScope(detail="requested scope exceeds the client's scopes")
    if not wanted:
        raise InvalidScope(detail="the client holds no scope")
    return wanted


def format_scope(scopes: Iterable[Scope]) -> str:
    """Render scopes as an OAuth2 ``scope`` string, sorted so equal sets render equally."""
    return " ".join(sorted(str(scope) for scope in scopes))
