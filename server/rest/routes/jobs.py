"""Intake jobs over REST, inside the caller's tenant: follow an upload to its version."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from server.rest.deps import CurrentPrincipal, ServicesDep
from server.rest.openapi import ADMIN
from server.rest.responses import json_response
from server.service.jobs import JobView, job_document

router = APIRouter(prefix="/admin/v1/jobs", tags=["jobs"], responses=ADMIN)


@router.get("")
async def list_jobs(
    principal: CurrentPrincipal,
    services: ServicesDep,
    model: Annotated[str | None, Query(description="Only this model's jobs")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    """The caller's newest jobs (without their logs)."""
    jobs = await services.jobs.recent(principal, model=model, limit=limit)
    return json_response(
        {"jobs": [job_document(JobView(job=job, version=None), log_lines=0) for job in jobs]}
    )


@router.get("/{job_id}")
async def get_job(job_id: str, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    """State, progress, log tail and error; the version and its report once sealed."""
    return json_response(job_document(await services.jobs.get(principal, job_id)))
