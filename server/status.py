"""The one error table: every error class mapped once to HTTP and gRPC.

The REST exception handler and the gRPC guard both read this table, so
an error cannot come out as one status over REST and another over gRPC.
Lookup walks the class's MRO, so a subclass inherits its parent's mapping
unless it has its own row. This module imports neither FastAPI nor grpc.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

import structlog

from auth import errors as auth
from compress import errors as compress
from server.errors import StartupError
from server.service import errors as service
from storage import errors as storage
from storage.crypto.master import MasterKeyError


@dataclass(frozen=True)
class ErrorSpec:
    """How one error class leaves the server."""

    http: HTTPStatus
    grpc: str
    """Name of a ``grpc.StatusCode`` member."""
    public_code: str
    expose_message: bool = True
    """False: the client gets a generic text; the real message is only logged."""


INTERNAL = ErrorSpec(HTTPStatus.INTERNAL_SERVER_ERROR, "INTERNAL", "internal", expose_message=False)
INTERNAL_MESSAGE = "internal server error"

UNAUTHENTICATED = ErrorSpec(HTTPStatus.UNAUTHORIZED, "UNAUTHENTICATED", "unauthenticated")
INVALID_UPLOAD = ErrorSpec(HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT", "invalid_request")

ERROR_TABLE: dict[type[BaseException], ErrorSpec] = {
    auth.AuthError: UNAUTHENTICATED,
    auth.Unauthenticated: UNAUTHENTICATED,
    auth.TokenExpired: UNAUTHENTICATED,
    auth.PermissionDenied: ErrorSpec(HTTPStatus.FORBIDDEN, "PERMISSION_DENIED", "forbidden"),
    auth.OAuthError: ErrorSpec(HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT", "invalid_request"),
    auth.InvalidClient: ErrorSpec(HTTPStatus.UNAUTHORIZED, "UNAUTHENTICATED", "invalid_client"),
    auth.InvalidScope: ErrorSpec(HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT", "invalid_scope"),
    auth.InvalidGrant: ErrorSpec(HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT", "invalid_grant"),
    auth.UnsupportedGrantType: ErrorSpec(
        HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT", "unsupported_grant_type"
    ),
    storage.NotFound: ErrorSpec(HTTPStatus.NOT_FOUND, "NOT_FOUND", "not_found"),
    storage.Conflict: ErrorSpec(HTTPStatus.CONFLICT, "ALREADY_EXISTS", "conflict"),
    storage.InvalidInput: ErrorSpec(HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT", "invalid_request"),
    storage.DecryptionFailed: INTERNAL,
    storage.KeyUnavailable: INTERNAL,
    MasterKeyError: INTERNAL,
    storage.StorageError: INTERNAL,
    service.InvalidRequest: ErrorSpec(
        HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT", "invalid_request"
    ),
    service.PayloadTooLarge: ErrorSpec(
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "INVALID_ARGUMENT", "payload_too_large"
    ),
    service.ModelNotReady: ErrorSpec(HTTPStatus.SERVICE_UNAVAILABLE, "UNAVAILABLE", "unavailable"),
    service.Unavailable: ErrorSpec(HTTPStatus.SERVICE_UNAVAILABLE, "UNAVAILABLE", "unavailable"),
    service.WorkerCrashed: ErrorSpec(HTTPStatus.SERVICE_UNAVAILABLE, "UNAVAILABLE", "unavailable"),
    service.Overloaded: ErrorSpec(HTTPStatus.TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED", "overloaded"),
    # Refused by the tenant's own limit: to the client, the same answer as any overload.
    service.TenantLimited: ErrorSpec(
        HTTPStatus.TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED", "overloaded"
    ),
    service.DeadlineExceeded: ErrorSpec(HTTPStatus.GATEWAY_TIMEOUT, "DEADLINE_EXCEEDED", "timeout"),
    service.ServiceError: INTERNAL,
    StartupError: INTERNAL,
    # Model intake: the upload was refused, except when the server lacks TensorFlow.
    compress.CompressionError: INVALID_UPLOAD,
    compress.UnsupportedFormat: INVALID_UPLOAD,
    compress.UnsafeArchive: INVALID_UPLOAD,
    compress.UnsafeModel: INVALID_UPLOAD,
    compress.ConversionFailed: INVALID_UPLOAD,
    compress.InvalidOptions: INVALID_UPLOAD,
    compress.InvalidData: INVALID_UPLOAD,
    compress.InputTooLarge: ErrorSpec(
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "INVALID_ARGUMENT", "payload_too_large"
    ),
    compress.RuntimeUnavailable: INTERNAL,
}


def spec_for(error: BaseException) -> ErrorSpec:
    """The mapping for ``error``: its own row, else its nearest ancestor's, else INTERNAL."""
    for cls in type(error).__mro__:
        spec = ERROR_TABLE.get(cls)
        if spec is not None:
            return spec
    return INTERNAL


def log_if_hidden(error: BaseException, spec: ErrorSpec) -> None:
    """Log, with its trace, an error whose message the client will not see (an internal one)."""
    if not spec.expose_message:
        structlog.get_logger(__name__).error(
            "unhandled error",
            error_type=type(error).__name__,
            detail=getattr(error, "detail", None),
            exc_info=error,
        )


def public_message(error: BaseException, spec: ErrorSpec) -> str:
    """The text a client may see: the error's safe message, or a generic one."""
    if not spec.expose_message:
        return INTERNAL_MESSAGE
    return str(getattr(error, "message", None) or INTERNAL_MESSAGE)
