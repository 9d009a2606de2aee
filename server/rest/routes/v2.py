"""Open Inference Protocol v2 over REST (what tritonclient, KServe and MLServer speak)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response

from server.rest.body import read_body
from server.rest.deps import CurrentPrincipal, InferenceDep
from server.rest.errors import error_response
from server.rest.openapi import INFERENCE, READ, V2_INFER
from server.rest.responses import json_response
from server.rest.v2codec import HEADER_LENGTH, encode_response, parse_request

if TYPE_CHECKING:
    from auth import Principal
    from server.service.inference import InferenceService
    from server.service.limits import Admission

router = APIRouter(tags=["inference"], responses=READ)


@router.get("/v2")
async def server_metadata(inference: InferenceDep) -> Response:
    """Server name, version and supported extensions."""
    return json_response(inference.server_metadata())


@router.get("/v2/models/{model}")
async def model_metadata(
    model: str, principal: CurrentPrincipal, inference: InferenceDep
) -> Response:
    """The default version's signature."""
    return json_response(await inference.model_metadata(principal, model))


@router.get("/v2/models/{model}/versions/{version}")
async def version_metadata(
    model: str, version: str, principal: CurrentPrincipal, inference: InferenceDep
) -> Response:
    """One version's (or label's) signature."""
    return json_response(await inference.model_metadata(principal, model, version))


async def _ready(
    request: Request,
    principal: CurrentPrincipal,
    inference: InferenceDep,
    model: str,
    version: str | None,
) -> Response:
    if await inference.model_ready(principal, model, version):
        return Response(status_code=200)
    return error_response(
        request, status=503, message=f"model '{model}' is not ready", code="unavailable"
    )


@router.get("/v2/models/{model}/ready")
async def model_ready(
    request: Request, model: str, principal: CurrentPrincipal, inference: InferenceDep
) -> Response:
    """200 when the default version can serve."""
    return await _ready(request, principal, inference, model, None)


@router.get("/v2/models/{model}/versions/{version}/ready")
async def version_ready(
    request: Request,
    model: str,
    version: str,
    principal: CurrentPrincipal,
    inference: InferenceDep,
) -> Response:
    """200 when that version can serve."""
    return await _ready(request, principal, inference, model, version)


async def run_infer(
    inference: InferenceService,
    principal: Principal,
    model: str,
    version: str | None,
    *,
    body: bytes,
    header_length: str | None,
    admission: Admission | None = None,
) -> tuple[bytes, str | None]:
    """One infer call from its raw body: the response body and its JSON header length.

    Shared by the documented route below and the hot path (``server.rest.fastpath``),
    which may have admitted the call already (``admission``, released here).
    """
    with admission or inference.admit(principal, model, version) as admitted:
        parsed = parse_request(body, header_length)
        answer = await inference.infer(principal, model, version, parsed, admission=admitted)
    content, length = encode_response(answer, parsed)
    return content, None if length is None else str(length)


async def _infer(
    request: Request,
    principal: CurrentPrincipal,
    inference: InferenceDep,
    model: str,
    version: str | None,
) -> Response:
    body = await read_body(request, inference.max_request_bytes)
    content, header_length = await run_infer(
        inference,
        principal,
        model,
        version,
        body=body,
        header_length=request.headers.get(HEADER_LENGTH),
    )
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": header_length},
    )


@router.post("/v2/models/{model}/infer", responses=INFERENCE, openapi_extra=V2_INFER)
async def infer(
    request: Request, model: str, principal: CurrentPrincipal, inference: InferenceDep
) -> Response:
    """Run the default version."""
    return await _infer(request, principal, inference, model, None)


@router.post(
    "/v2/models/{model}/versions/{version}/infer", responses=INFERENCE, openapi_extra=V2_INFER
)
async def infer_version(
    request: Request,
    model: str,
    version: str,
    principal: CurrentPrincipal,
    inference: InferenceDep,
) -> Response:
    """Run a version given by number or label."""
    return await _infer(request, principal, inference, model, version)
