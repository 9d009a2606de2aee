"""Platform administration: tenants and their API clients.

Every method takes the caller's principal first and authorizes it itself,
so the rule holds whichever transport (or the CLI) calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from auth import (
    PLATFORM_ROLES,
    Role,
    Scope,
    authorize,
    hash_client_secret,
    new_client_id,
    new_client_secret,
)
from server.service.context import current_actor
from server.service.errors import InvalidRequest

if TYPE_CHECKING:
    from auth import Principal
    from server.service.access import DenyList
    from storage import Registry, TenantInfo
    from storage.identity import ClientRecord, IdentityStore


@dataclass(frozen=True)
class NewClient:
    """A client just created: the only moment its secret is known to the server."""

    client_id: str
    client_secret: str
    tenant: str | None
    role: str
    name: str


class TenantAdminService:
    """Create, list, suspend, resume and delete tenants; manage their clients."""

    def __init__(
        self, *, registry: Registry, identities: IdentityStore, deny: DenyList, pepper: bytes
    ) -> None:
        self._registry = registry
        self._identities = identities
        self._deny = deny
        self._pepper = pepper

    def _authorize(self, principal: Principal | None) -> None:
        # ``None`` is the operator at the command line, who holds the master key anyway.
        if principal is not None:
            authorize(principal, Scope.TENANTS_MANAGE)

    def create(self, principal: Principal | None, name: str) -> TenantInfo:
        """Create a tenant and its first key."""
        self._authorize(principal)
        return self._registry.create_tenant(name, actor=current_actor(principal))

    def list_tenants(self, principal: Principal | None) -> list[TenantInfo]:
        """Every tenant."""
        self._authorize(principal)
        return self._registry.list_tenants()

    def get(self, principal: Principal | None, name: str) -> TenantInfo:
        """One tenant by name."""
        self._authorize(principal)
        return self._registry.get_tenant(name)

    def set_state(self, principal: Principal | None, name: str, state: str) -> TenantInfo:
        """Suspend or resume; tokens of a suspended tenant stop working at once."""
        self._authorize(principal)
        tenant = self._registry.set_tenant_state(name, state, actor=current_actor(principal))
        self._deny.refresh()
        return tenant

    def delete(self, principal: Principal | None, name: str) -> None:
        """Delete a tenant, its clients and its keys (crypto-shredding)."""
        self._authorize(principal)
        self._registry.delete_tenant(name, actor=current_actor(principal))
        self._deny.refresh()

    # --- clients ------------------------------------------------------------------
    def create_client(
        self, principal: Principal | None, *, tenant: str | None, role: str, name: str = ""
    ) -> NewClient:
        """Create a client with a fresh 256-bit secret, returned once and stored hashed."""
        self._authorize(principal)
        try:
            parsed = Role(role)
        except ValueError:
            allowed = ", ".join(r.value for r in Role)
            raise InvalidRequest(f"unknown role {role!r}; expected one of {allowed}") from None
        platform_role = parsed in PLATFORM_ROLES
        if platform_role != (tenant is None):
            where = "without a tenant" if platform_role else "with a tenant"
            raise InvalidRequest(f"role {parsed.value!r} is created {where}")
        tenant_id = self._registry.get_tenant(tenant).id if tenant is not None else None
        secret = new_client_secret()
        record = self._identities.add_client(
            client_id=new_client_id(),
            tenant_id=tenant_id,
            role=parsed.value,
            name=name,
            secret_hash=hash_client_secret(secret, pepper=self._pepper),
            actor=current_actor(principal),
        )
        return NewClient(
            client_id=record.client_id,
            client_secret=secret,
            tenant=tenant,
            role=record.role,
            name=record.name,
        )

    def list_clients(
        self, principal: Principal | None, *, tenant: str | None
    ) -> list[ClientRecord]:
        """The clients of a tenant, or the platform's own (``tenant=None``)."""
        self._authorize(principal)
        tenant_id = self._registry.get_tenant(tenant).id if tenant is not None else None
        return self._identities.list_clients(tenant_id)

    def revoke_client(
        self, principal: Principal | None, *, tenant: str | None, client_id: str
    ) -> None:
        """Revoke a client: it can no longer obtain tokens."""
        self._authorize(principal)
        tenant_id = self._registry.get_tenant(tenant).id if tenant is not None else None
        self._identities.revoke_client(tenant_id, client_id, actor=current_actor(principal))
        self._deny.refresh()  # its tokens stop working now, not at their expiry
