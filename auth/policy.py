"""The one authorization decision, shared by the REST and gRPC transports.

Every service method calls ``authorize`` before it touches anything; the
transports only authenticate. The tenant an action targets is always the
tenant of the token (``principal.tenant_id``) or, for a platform principal,
whatever tenant the operator named; it is never read from a path or a body
for a tenant principal. A tenant principal asking for another tenant's
*object* is the server's business (it answers NOT_FOUND, indistinguishable
from a missing object); this function only refuses an *action* on another
tenant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from auth.errors import PermissionDenied
from auth.permissions import PLATFORM_ONLY_SCOPES, PLATFORM_SCOPES, Scope

if TYPE_CHECKING:
    from auth.principal import Principal


def authorize(principal: Principal, scope: Scope, *, tenant_id: str | None = None) -> None:
    """Allow the action or raise ``PermissionDenied``; deny by default.

    ``tenant_id`` is the tenant the action acts on, ``None`` for a
    platform-wide action (list tenants, rotate signing keys, read the whole
    audit log). The rules, in order:

    1. the token must grant ``scope``;
    2. a platform principal may use platform scopes only (``tenants:manage``,
       ``keys:rotate``, ``audit:read``), on any tenant or platform-wide: it
       holds no tenant-bound power such as ``infer`` or ``models:write``;
    3. a tenant principal may never use a platform-only scope, and acts only
       on its own tenant: a platform-wide action (``tenant_id=None``) or
       another tenant is refused. Services therefore pass
       ``tenant_id=principal.tenant_id`` for tenant work; forgetting it fails
       closed.
    """
    if scope not in principal.scopes:
        raise PermissionDenied(detail=f"missing scope {scope}")
    if principal.tenant_id is None:
        if scope not in PLATFORM_SCOPES:
            raise PermissionDenied(detail=f"scope {scope} is not exercised platform-wide")
        return
    if scope in PLATFORM_ONLY_SCOPES:
        raise PermissionDenied(detail=f"scope {scope} is reserved to platform principals")
    if tenant_id != principal.tenant_id:
        raise PermissionDenied(detail="action on a tenant other than the token's")
