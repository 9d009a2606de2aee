"""FastAPI dependencies: the policy check every route passes through, and its result."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

from auth import PermissionDenied, Principal
from server.policy import rest_operation

if TYPE_CHECKING:
    from server.bootstrap import Services
    from server.service.inference import InferenceService


async def enforce_policy(request: Request) -> None:
    """Authenticate and authorize the call by the policy table (an app-wide dependency).

    Runs before any route body; the route's own dependencies read the result.
    Async on purpose: a cached token costs microseconds, less than a hop to
    the thread pool would; a refusal is queued for the audit log.
    """
    route: Any = request.scope.get("route")
    method = "GET" if request.method == "HEAD" else request.method
    operation = rest_operation(method, getattr(route, "path", ""))
    services: Services = request.app.state.services
    request.state.principal = await services.access.authorize_call(
        operation, request.headers.get("authorization")
    )


# The dependencies below are ``async`` only so that FastAPI calls them on the
# event loop: a plain ``def`` dependency is run in the thread pool, a hop that
# cost more than the whole rest of the route (two per inference call).
async def _principal(request: Request) -> Principal:
    principal = getattr(request.state, "principal", None)
    if principal is None:  # a public route asked for a principal: a wiring bug
        raise PermissionDenied(detail="route needs a principal but is public")
    return principal  # type: ignore[no-any-return]


async def _services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


async def _inference(request: Request) -> InferenceService:
    return request.app.state.inference  # type: ignore[no-any-return]


CurrentPrincipal = Annotated[Principal, Depends(_principal)]
ServicesDep = Annotated["Services", Depends(_services)]
InferenceDep = Annotated["InferenceService", Depends(_inference)]
