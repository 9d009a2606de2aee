"""Every REST route and every gRPC method the servers register is in the policy table."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.routing import iter_route_contexts

from server import policy
from server.bootstrap import build_container, build_services, ensure_schema
from server.grpc.server import GrpcGateway
from server.metrics import Metrics
from server.pool.pool import WorkerPool
from server.rest.app import create_app
from server.service.health import HealthService
from server.service.inference import InferenceService
from server.settings import load_settings


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The real REST app and gRPC server, built as `serve` builds them (not started)."""
    settings = load_settings(data_dir=tmp_path_factory.mktemp("policy"))
    container = build_container(settings, create_keys=True)
    ensure_schema(container.engine, settings)
    services = build_services(container)
    health = HealthService(container.engine)
    pool = WorkerPool(settings, workers=1, socket_dir=settings.data_dir / "run")  # never started
    inference = InferenceService(
        resolver=services.resolver, backend=pool, max_request_bytes=1024, timeout=1.0
    )
    app = create_app(
        settings=settings,
        services=services,
        inference=inference,
        health_service=health,
        metrics=Metrics(),
    )
    # grpc.aio binds its server to the current event loop; earlier tests may have closed theirs.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    grpc_gateway = GrpcGateway(health_service=health, access=services.access, inference=inference)
    yield app, grpc_gateway
    asyncio.set_event_loop(None)
    loop.close()
    container.close()


def _rest_routes(app) -> set[tuple[str, str]]:
    # iter_route_contexts flattens included routers into their effective routes.
    return {
        (method, context.path)
        for context in iter_route_contexts(app.routes)
        for method in context.methods or ()
        if method != "HEAD"
    }


def test_every_rest_route_is_in_the_table(built) -> None:
    """A route missing from the table would be denied to everyone: the test names it first."""
    app, _ = built
    routes = _rest_routes(app)
    missing = sorted(routes - set(policy.REST_ROUTES))
    stale = sorted(set(policy.REST_ROUTES) - routes)
    assert missing == []
    assert stale == []
    for operation in policy.REST_ROUTES.values():
        assert operation in policy.OPERATIONS


def test_every_grpc_method_is_in_the_table(built) -> None:
    """Every method of every registered gRPC service has a policy row, and no row is stale."""
    _, grpc_gateway = built
    methods = set(grpc_gateway.method_names)
    assert methods, "no gRPC services registered"
    assert sorted(methods - set(policy.GRPC_METHODS)) == []
    assert sorted(set(policy.GRPC_METHODS) - methods) == []
    for operation in policy.GRPC_METHODS.values():
        assert operation in policy.OPERATIONS


def test_only_health_jwks_and_token_are_public() -> None:
    """Public operations are exactly the documented ones."""
    public = {op for op, scope in policy.OPERATIONS.items() if scope is policy.PUBLIC}
    assert public == {
        "health",
        "metrics",
        "jwks",
        "token",
        "token.revoke",
        "docs",
        "server.metadata",
    }
