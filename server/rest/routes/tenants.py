"""Platform administration over REST: tenants and their clients."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from server.rest.deps import CurrentPrincipal, ServicesDep
from server.rest.openapi import ADMIN, errors
from server.rest.responses import json_response

router = APIRouter(prefix="/admin/v1/tenants", tags=["tenants"], responses=ADMIN)


class TenantCreate(BaseModel):
    """Body of POST /admin/v1/tenants."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=63)


class ClientCreate(BaseModel):
    """Body of POST /admin/v1/tenants/{tenant}/clients."""

    model_config = ConfigDict(extra="forbid")
    role: str = Field(min_length=1, max_length=32)
    name: str = Field(default="", max_length=128)


def _tenant(tenant: Any) -> dict[str, Any]:
    return {
        "id": tenant.id,
        "name": tenant.name,
        "state": tenant.state,
        "created_at": tenant.created_at.isoformat(),
    }


def _client(client: Any) -> dict[str, Any]:
    return {
        "client_id": client.client_id,
        "role": client.role,
        "name": client.name,
        "created_at": client.created_at.isoformat(),
        "revoked_at": client.revoked_at.isoformat() if client.revoked_at else None,
    }


@router.post("", status_code=201, responses=errors(409))
async def create_tenant(
    body: TenantCreate, principal: CurrentPrincipal, services: ServicesDep
) -> Response:
    """Create a tenant."""
    tenant = await run_in_threadpool(services.tenants.create, principal, body.name)
    return json_response(_tenant(tenant), status_code=201)


@router.get("")
async def list_tenants(principal: CurrentPrincipal, services: ServicesDep) -> Response:
    """List tenants."""
    tenants = await run_in_threadpool(services.tenants.list_tenants, principal)
    return json_response({"tenants": [_tenant(t) for t in tenants]})


@router.get("/{tenant}")
async def get_tenant(tenant: str, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    """One tenant."""
    found = await run_in_threadpool(services.tenants.get, principal, tenant)
    return json_response(_tenant(found))


@router.post("/{tenant}/suspend")
async def suspend_tenant(
    tenant: str, principal: CurrentPrincipal, services: ServicesDep
) -> Response:
    """Suspend a tenant; its tokens stop working at once."""
    found = await run_in_threadpool(services.tenants.set_state, principal, tenant, "suspended")
    return json_response(_tenant(found))


@router.post("/{tenant}/resume")
async def resume_tenant(
    tenant: str, principal: CurrentPrincipal, services: ServicesDep
) -> Response:
    """Reinstate a suspended tenant."""
    found = await run_in_threadpool(services.tenants.set_state, principal, tenant, "active")
    return json_response(_tenant(found))


@router.delete("/{tenant}", status_code=204)
async def delete_tenant(
    tenant: str, principal: CurrentPrincipal, services: ServicesDep
) -> Response:
    """Delete a tenant and destroy its keys."""
    await run_in_threadpool(services.tenants.delete, principal, tenant)
    return Response(status_code=204)


@router.post("/{tenant}/clients", status_code=201)
async def create_client(
    tenant: str,
    body: ClientCreate,
    principal: CurrentPrincipal,
    services: ServicesDep,
) -> Response:
    """Create a client; the secret is in this response and nowhere else, ever."""
    created = await run_in_threadpool(
        lambda: services.tenants.create_client(
            principal, tenant=tenant, role=body.role, name=body.name
        )
    )
    return json_response(asdict(created), status_code=201, headers={"Cache-Control": "no-store"})


@router.get("/{tenant}/clients")
async def list_clients(tenant: str, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    """List a tenant's clients (never their secrets)."""
    clients = await run_in_threadpool(
        lambda: services.tenants.list_clients(principal, tenant=tenant)
    )
    return json_response({"clients": [_client(c) for c in clients]})


@router.delete("/{tenant}/clients/{client_id}", status_code=204)
async def revoke_client(
    tenant: str, client_id: str, principal: CurrentPrincipal, services: ServicesDep
) -> Response:
    """Revoke a client; it can no longer obtain tokens and its tokens stop working."""
    await run_in_threadpool(
        lambda: services.tenants.revoke_client(principal, tenant=tenant, client_id=client_id)
    )
    return Response(status_code=204)
