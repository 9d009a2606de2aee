"""The FastAPI application factory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI

from server.rest import openapi
from server.rest.deps import enforce_policy
from server.rest.errors import install_error_handlers
from server.rest.middleware import RequestContextMiddleware
from server.rest.routes import audit, auth, health, jobs, models, tenants, tfserving, v2

if TYPE_CHECKING:
    from server.bootstrap import Services
    from server.metrics import Metrics
    from server.service.health import HealthService
    from server.service.inference import InferenceService
    from server.settings import Settings


def create_app(
    *,
    settings: Settings,
    services: Services,
    inference: InferenceService,
    health_service: HealthService,
    metrics: Metrics,
) -> FastAPI:
    """Build the REST app around already-built services (the app owns none of them)."""
    app = FastAPI(
        title="sealserve",
        version="0.1.0",
        docs_url="/docs",
        redoc_url=None,
        # Every route passes the policy table before its body runs.
        dependencies=[Depends(enforce_policy)],
    )
    app.state.settings = settings
    app.state.services = services
    app.state.inference = inference
    app.state.container_health = health_service
    app.state.metrics = metrics
    install_error_handlers(app)
    openapi.install(app)
    app.include_router(health.router)
    app.include_router(auth.router)
    app.include_router(tenants.router)
    app.include_router(models.router)
    app.include_router(jobs.router)
    app.include_router(audit.router)
    app.include_router(v2.router)
    app.include_router(tfserving.router)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
