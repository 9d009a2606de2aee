"""The one REST exception handler: every error leaves through ``server.status``."""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from auth import InvalidClient, OAuthError
from server.status import ERROR_TABLE, log_if_hidden, public_message, spec_for

if TYPE_CHECKING:
    from fastapi import FastAPI, Request

log = structlog.get_logger(__name__)


def error_body(message: str, code: str, request_id: str | None) -> bytes:
    """The error body every route uses: ``{"error", "code", "request_id"}``.

    ``error`` stays a plain string because that is what Open Inference
    Protocol and TF Serving clients read.
    """
    return orjson.dumps({"error": message, "code": code, "request_id": request_id})


def retry_after(exc: Exception) -> str | None:
    """The ``Retry-After`` value (whole seconds, at least 1) for ``exc``, if it has one."""
    seconds = getattr(exc, "retry_after", None)
    return None if seconds is None else str(max(1, round(seconds)))


def error_response(
    request: Request, *, status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> Response:
    """``error_body`` as a response."""
    body = error_body(message, code, request.scope.get("state", {}).get("request_id"))
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    return f"invalid request: {where or 'body'}: {first.get('msg', 'malformed')}"


def _oauth_error(request: Request, exc: OAuthError) -> Response:
    """RFC 6749 §5.2: ``{"error": code, "error_description": text}``, never cached."""
    spec = spec_for(exc)
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    if isinstance(exc, InvalidClient):
        headers["WWW-Authenticate"] = 'Basic realm="sealserve"'
    body = {
        "error": exc.error_code,
        "error_description": exc.message,
        "request_id": request.scope.get("state", {}).get("request_id"),
    }
    return Response(
        orjson.dumps(body), status_code=spec.http, media_type="application/json", headers=headers
    )


async def handle_error(request: Request, exc: Exception) -> Response:
    """The response for any exception a route raised (also used by the inference hot path)."""
    if isinstance(exc, OAuthError):
        return _oauth_error(request, exc)
    spec = spec_for(exc)
    log_if_hidden(exc, spec)
    if spec.expose_message and getattr(exc, "detail", None):
        log.info("request refused", error_type=type(exc).__name__, detail=exc.detail)  # type: ignore[attr-defined]
    headers: dict[str, str] = {}
    wait = retry_after(exc)
    if wait is not None:
        headers["Retry-After"] = wait
    if spec.http == HTTPStatus.UNAUTHORIZED:
        # RFC 6750 §3: say how to authenticate; name the error only if a token was sent.
        sent = "authorization" in request.headers
        headers["WWW-Authenticate"] = (
            'Bearer realm="sealserve", error="invalid_token"'
            if sent
            else 'Bearer realm="sealserve"'
        )
    return error_response(
        request,
        status=spec.http,
        message=public_message(exc, spec),
        code=spec.public_code,
        headers=headers,
    )


async def _handle_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for this type
    return error_response(
        request,
        status=HTTPStatus.BAD_REQUEST,
        message=_validation_message(exc),
        code="invalid_request",
    )


async def _handle_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101 - registered for this type
    phrase = HTTPStatus(exc.status_code).phrase.lower()
    message = exc.detail if isinstance(exc.detail, str) and exc.detail else phrase
    return error_response(
        request,
        status=exc.status_code,
        message=message,
        code=phrase.replace(" ", "_"),
        headers=dict(exc.headers or {}),
    )


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception through the table; no stack trace ever reaches a client."""
    app.add_exception_handler(RequestValidationError, _handle_validation)
    app.add_exception_handler(StarletteHTTPException, _handle_http)
    # Known roots go through the exception middleware (no re-raise, no trace);
    # ``Exception`` is the last resort for bugs, answered as a generic 500.
    for root in {
        cls for cls in ERROR_TABLE if cls.__base__ is Exception and issubclass(cls, Exception)
    }:
        app.add_exception_handler(root, handle_error)
    app.add_exception_handler(Exception, handle_error)
