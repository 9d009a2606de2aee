"""The policy table: which scope every REST route and every gRPC method needs.

Deny by default: an operation missing from ``OPERATIONS`` is refused, and
``tests/unit/server/test_policy_coverage.py`` walks every route and method the
servers register and fails when one is not listed. ``PUBLIC`` operations skip
authentication; only health, metrics, JWKS and the token endpoints are public.
"""

from __future__ import annotations

from typing import Final

from auth import Scope

PUBLIC: Final = None

OPERATIONS: dict[str, Scope | None] = {
    "health": PUBLIC,
    "metrics": PUBLIC,
    "jwks": PUBLIC,
    "token": PUBLIC,  # authenticated by client credentials, not by a token
    "token.revoke": PUBLIC,  # likewise (RFC 7009)
    "docs": PUBLIC,
    "server.metadata": PUBLIC,
    "tenants.manage": Scope.TENANTS_MANAGE,
    "models.read": Scope.MODELS_READ,
    "models.write": Scope.MODELS_WRITE,
    "infer": Scope.INFER,
    "audit.read": Scope.AUDIT_READ,
}

REST_ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/v2/health/live"): "health",
    ("GET", "/v2/health/ready"): "health",
    ("GET", "/metrics"): "metrics",
    ("GET", "/.well-known/jwks.json"): "jwks",
    ("POST", "/v1/auth/token"): "token",
    ("POST", "/v1/auth/revoke"): "token.revoke",
    ("GET", "/openapi.json"): "docs",
    ("GET", "/docs"): "docs",
    ("GET", "/docs/oauth2-redirect"): "docs",
    ("POST", "/admin/v1/tenants"): "tenants.manage",
    ("GET", "/admin/v1/tenants"): "tenants.manage",
    ("GET", "/admin/v1/tenants/{tenant}"): "tenants.manage",
    ("DELETE", "/admin/v1/tenants/{tenant}"): "tenants.manage",
    ("POST", "/admin/v1/tenants/{tenant}/suspend"): "tenants.manage",
    ("POST", "/admin/v1/tenants/{tenant}/resume"): "tenants.manage",
    ("POST", "/admin/v1/tenants/{tenant}/clients"): "tenants.manage",
    ("GET", "/admin/v1/tenants/{tenant}/clients"): "tenants.manage",
    ("DELETE", "/admin/v1/tenants/{tenant}/clients/{client_id}"): "tenants.manage",
    ("GET", "/admin/v1/audit"): "audit.read",
    # Open Inference Protocol v2
    ("GET", "/v2"): "server.metadata",
    ("GET", "/v2/models/{model}"): "models.read",
    ("GET", "/v2/models/{model}/versions/{version}"): "models.read",
    ("GET", "/v2/models/{model}/ready"): "models.read",
    ("GET", "/v2/models/{model}/versions/{version}/ready"): "models.read",
    ("POST", "/v2/models/{model}/infer"): "infer",
    ("POST", "/v2/models/{model}/versions/{version}/infer"): "infer",
    # TensorFlow Serving REST API
    ("POST", "/v1/models/{model}:predict"): "infer",
    ("POST", "/v1/models/{model}/versions/{version}:predict"): "infer",
    ("POST", "/v1/models/{model}/labels/{label}:predict"): "infer",
    ("GET", "/v1/models/{model}"): "models.read",
    ("GET", "/v1/models/{model}/versions/{version}"): "models.read",
    ("GET", "/v1/models/{model}/labels/{label}"): "models.read",
    ("GET", "/v1/models/{model}/metadata"): "models.read",
    ("GET", "/v1/models/{model}/versions/{version}/metadata"): "models.read",
    ("GET", "/v1/models/{model}/labels/{label}/metadata"): "models.read",
    # Model administration
    ("POST", "/admin/v1/models/{name}/versions"): "models.write",
    ("GET", "/admin/v1/models"): "models.read",
    ("GET", "/admin/v1/models/{name}"): "models.read",
    ("DELETE", "/admin/v1/models/{name}"): "models.write",
    ("DELETE", "/admin/v1/models/{name}/versions/{version}"): "models.write",
    ("PATCH", "/admin/v1/models/{name}/versions/{version}"): "models.write",
    ("PUT", "/admin/v1/models/{name}/labels/{label}"): "models.write",
    ("DELETE", "/admin/v1/models/{name}/labels/{label}"): "models.write",
    # Intake jobs (uploads queue them; following one is reading models)
    ("GET", "/admin/v1/jobs"): "models.read",
    ("GET", "/admin/v1/jobs/{job_id}"): "models.read",
}

GRPC_METHODS: dict[str, str] = {
    "/grpc.health.v1.Health/Check": "health",
    "/grpc.health.v1.Health/Watch": "health",
    "/grpc.health.v1.Health/List": "health",
    "/inference.GRPCInferenceService/ServerLive": "health",
    "/inference.GRPCInferenceService/ServerReady": "health",
    "/inference.GRPCInferenceService/ServerMetadata": "server.metadata",
    "/inference.GRPCInferenceService/ModelReady": "models.read",
    "/inference.GRPCInferenceService/ModelMetadata": "models.read",
    "/inference.GRPCInferenceService/ModelInfer": "infer",
}


def rest_operation(method: str, path: str) -> str | None:
    """The operation of a REST route (by its template), or ``None`` when unlisted."""
    return REST_ROUTES.get((method, path))


def grpc_operation(method: str) -> str | None:
    """The operation of a gRPC method (``/package.Service/Method``), or ``None``."""
    return GRPC_METHODS.get(method)
