"""OAuth2 token endpoint (client credentials), revocation and the JWKS."""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING
from urllib.parse import unquote

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from auth import InvalidClient, OAuthError, UnsupportedGrantType
from server.rest.deps import ServicesDep
from server.rest.openapi import OAUTH, REVOKE, TOKEN
from server.rest.responses import json_response

if TYPE_CHECKING:
    from starlette.datastructures import FormData

router = APIRouter(tags=["auth"])
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _client_credentials(request: Request, form: FormData) -> tuple[str | None, str | None]:
    """HTTP Basic (RFC 6749 §2.3.1, form-encoded parts) or the form's client_id/secret."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            raise InvalidClient(detail="unsupported authorization scheme on the token endpoint")
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidClient(detail="malformed basic credentials") from None
        client_id, sep, secret = decoded.partition(":")
        if not sep:
            raise InvalidClient(detail="malformed basic credentials")
        return unquote(client_id), unquote(secret)
    form_id, form_secret = form.get("client_id"), form.get("client_secret")
    return (
        form_id if isinstance(form_id, str) else None,
        form_secret if isinstance(form_secret, str) else None,
    )


async def _form(request: Request) -> FormData:
    if request.headers.get("content-type", "").split(";")[0].strip() != (
        "application/x-www-form-urlencoded"
    ):
        raise OAuthError("the token endpoint takes application/x-www-form-urlencoded")
    return await request.form(max_files=0, max_fields=16, max_part_size=8192)


@router.post("/v1/auth/token", responses=OAUTH, openapi_extra=TOKEN)
async def token(request: Request, services: ServicesDep) -> Response:
    """Exchange client credentials for a short-lived access token."""
    form = await _form(request)
    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthError("grant_type is required")
    if grant_type != "client_credentials":
        raise UnsupportedGrantType
    client_id, secret = _client_credentials(request, form)
    scope = form.get("scope")
    issued = await run_in_threadpool(
        services.access.issue_token,
        client_id=client_id,
        client_secret=secret,
        scope=scope if isinstance(scope, str) else None,
    )
    return json_response(issued.oauth_response(), headers=NO_STORE)


@router.post("/v1/auth/revoke", responses=OAUTH, openapi_extra=REVOKE)
async def revoke(request: Request, services: ServicesDep) -> Response:
    """RFC 7009: revoke one of the calling client's tokens (200 even if unknown)."""
    form = await _form(request)
    token_value = form.get("token")
    if not isinstance(token_value, str) or not token_value:
        raise OAuthError("token is required")
    client_id, secret = _client_credentials(request, form)
    await run_in_threadpool(
        services.access.revoke_token, client_id=client_id, client_secret=secret, token=token_value
    )
    return Response(status_code=200, headers=NO_STORE)


@router.get("/.well-known/jwks.json")
async def jwks(services: ServicesDep) -> Response:
    """Public keys that verify this server's tokens (next, primary and previous)."""
    return json_response(
        services.signing_keys.current.jwks(), headers={"Cache-Control": "max-age=60"}
    )
