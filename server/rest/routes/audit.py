"""Audit log review over REST: newest first, filtered, cursor-paginated."""

from __future__ import annotations

from datetime import datetime  # noqa: TC003 - FastAPI reads the annotation
from typing import Annotated

from fastapi import APIRouter, Query, Response
from starlette.concurrency import run_in_threadpool

from server.rest.deps import CurrentPrincipal, ServicesDep
from server.rest.openapi import errors
from server.rest.responses import json_response

router = APIRouter(prefix="/admin/v1/audit", tags=["audit"], responses=errors(400, 401, 403))


@router.get("")
async def list_entries(  # noqa: PLR0917 - one parameter per query filter
    principal: CurrentPrincipal,
    services: ServicesDep,
    tenant: Annotated[str | None, Query(description="Tenant name (platform auditors only)")] = None,
    actor: str | None = None,
    action: str | None = None,
    resource: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: Annotated[
        int | None, Query(ge=1, description="next_cursor of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """Entries the caller may read; tenant admins see their own tenant only."""

    def run() -> dict[str, object]:
        tenant_id = (
            services.tenants.get(None, tenant).id
            if tenant and principal.tenant_id is None
            else None
        )
        entries = services.audit.list(
            principal,
            tenant_id=tenant_id,
            limit=limit,
            actor=actor,
            action=action,
            resource=resource,
            outcome=outcome,
            since=since,
            until=until,
            before_seq=cursor,
        )
        next_cursor = entries[-1]["seq"] if len(entries) == limit else None
        return {"entries": entries, "next_cursor": next_cursor}

    return json_response(await run_in_threadpool(run))
