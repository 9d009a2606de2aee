"""The TensorFlow Serving REST API: predict, model status and metadata."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response

from server.rest.body import read_body
from server.rest.deps import CurrentPrincipal, InferenceDep
from server.rest.openapi import INFERENCE, READ, TFS_PREDICT
from server.rest.responses import json_response
from server.rest.tfscodec import encode_predict, model_metadata, model_status, parse_predict

if TYPE_CHECKING:
    from auth import Principal
    from server.service.inference import InferenceService
    from server.service.limits import Admission

router = APIRouter(prefix="/v1/models", tags=["tensorflow-serving"], responses=READ)


async def run_predict(
    inference: InferenceService,
    principal: Principal,
    model: str,
    ref: str | None,
    *,
    body: bytes,
    admission: Admission | None = None,
) -> bytes:
    """One predict call from its raw body: the JSON response body.

    Shared by the documented routes below and the hot path (``server.rest.fastpath``),
    which may have admitted the call already (``admission``, released here).
    """
    with admission or inference.admit(principal, model, ref) as admitted:
        info = await inference.version(principal, model, ref)
        parsed, row = parse_predict(body, info.signature)
        answer = await inference.infer(
            principal, model, str(info.version), parsed, admission=admitted
        )
    return encode_predict(answer, row=row)


async def _predict(
    request: Request,
    principal: CurrentPrincipal,
    inference: InferenceDep,
    model: str,
    ref: str | None,
) -> Response:
    body = await read_body(request, inference.max_request_bytes)
    content = await run_predict(inference, principal, model, ref, body=body)
    return Response(content, media_type="application/json")


@router.post("/{model}:predict", responses=INFERENCE, openapi_extra=TFS_PREDICT)
async def predict(
    request: Request, model: str, principal: CurrentPrincipal, inference: InferenceDep
) -> Response:
    """Predict with the default (latest ready) version."""
    return await _predict(request, principal, inference, model, None)


@router.post("/{model}/versions/{version}:predict", responses=INFERENCE, openapi_extra=TFS_PREDICT)
async def predict_version(
    request: Request,
    model: str,
    version: str,
    principal: CurrentPrincipal,
    inference: InferenceDep,
) -> Response:
    """Predict with an explicit version."""
    return await _predict(request, principal, inference, model, version)


@router.post("/{model}/labels/{label}:predict", responses=INFERENCE, openapi_extra=TFS_PREDICT)
async def predict_label(
    request: Request,
    model: str,
    label: str,
    principal: CurrentPrincipal,
    inference: InferenceDep,
) -> Response:
    """Predict with the version a label points at."""
    return await _predict(request, principal, inference, model, label)


async def _status(
    principal: CurrentPrincipal, inference: InferenceDep, model: str, ref: str | None
) -> Response:
    info = await inference.version(principal, model, ref)
    return json_response(model_status(info.version, info.state))


async def _metadata(
    principal: CurrentPrincipal, inference: InferenceDep, model: str, ref: str | None
) -> Response:
    info = await inference.version(principal, model, ref)
    return json_response(model_metadata(info.model_name, info.version, info.signature))


@router.get("/{model}")
async def status(model: str, principal: CurrentPrincipal, inference: InferenceDep) -> Response:
    """Status of the default version."""
    return await _status(principal, inference, model, None)


@router.get("/{model}/versions/{version}")
async def status_version(
    model: str, version: str, principal: CurrentPrincipal, inference: InferenceDep
) -> Response:
    """Status of one version."""
    return await _status(principal, inference, model, version)


@router.get("/{model}/labels/{label}")
async def status_label(
    model: str, label: str, principal: CurrentPrincipal, inference: InferenceDep
) -> Response:
    """Status of the version a label points at."""
    return await _status(principal, inference, model, label)


@router.get("/{model}/metadata")
async def metadata(model: str, principal: CurrentPrincipal, inference: InferenceDep) -> Response:
    """Signature of the default version."""
    return await _metadata(principal, inference, model, None)


@router.get("/{model}/versions/{version}/metadata")
async def metadata_version(
    model: str, version: str, principal: CurrentPrincipal, inference: InferenceDep
) -> Response:
    """Signature of one version."""
    return await _metadata(principal, inference, model, version)


@router.get("/{model}/labels/{label}/metadata")
async def metadata_label(
    model: str, label: str, principal: CurrentPrincipal, inference: InferenceDep
) -> Response:
    """Signature of the version a label points at."""
    return await _metadata(principal, inference, model, label)
