"""The FastAPI application factory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import ORJSONResponse

from server.rest.errors import install_error_handlers
from server.rest.middleware import RequestContextMiddleware
from server.rest.routes import health

if TYPE_CHECKING:
    from server.metrics import Metrics
    from server.service.health import HealthService


def create_app(*, health_service: HealthService, metrics: Metrics) -> FastAPI:
    """Build the REST app around already-built services (the app owns none of them)."""
    app = FastAPI(
        title="sealserve",
        version="0.1.0",
        default_response_class=ORJSONResponse,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.container_health = health_service
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(health.router)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
