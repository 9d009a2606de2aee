"""Health and metrics: public, unauthenticated, cheap."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from server.rest.errors import error_response
from server.rest.openapi import errors

router = APIRouter()


@router.get("/v2/health/live", tags=["health"])
async def live() -> Response:
    """The process is up and serving HTTP."""
    return Response(status_code=200)


@router.get("/v2/health/ready", tags=["health"], responses=errors(503))
async def ready(request: Request) -> Response:
    """The server can take traffic: database reachable and migrated, every gateway listening."""
    health = request.app.state.container_health
    problem = await run_in_threadpool(health.problem)
    if problem is None:
        return Response(status_code=200)
    return error_response(
        request, status=503, message=f"server is not ready: {problem}", code="unavailable"
    )


@router.get("/metrics", tags=["health"], include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus exposition of this process's metrics."""
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
