"""Model administration over REST, inside the caller's tenant."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from server.rest.body import spool_body
from server.rest.deps import CurrentPrincipal, ServicesDep
from server.rest.responses import json_response
from server.service.errors import InvalidRequest

router = APIRouter(prefix="/admin/v1/models", tags=["models"])
UPLOAD_TYPES = ("application/octet-stream", "application/x-tflite")


class LabelBody(BaseModel):
    """Body of PUT /admin/v1/models/{name}/labels/{label}."""

    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)


def _version(info: Any) -> dict[str, Any]:
    return {
        "model": info.model_name,
        "version": info.version,
        "state": info.state,
        "format": info.format,
        "labels": list(info.labels),
        "size": info.size_plain,
        "size_stored": info.size_stored,
        "sha256": info.sha256,
        "inputs": info.signature.get("inputs", []),
        "outputs": info.signature.get("outputs", []),
        "created_at": info.created_at.isoformat(),
        "report": info.report,
    }


def _model(info: Any) -> dict[str, Any]:
    return {
        "name": info.name,
        "created_at": info.created_at.isoformat(),
        "labels": info.labels,
        "versions": [_version(v) for v in info.versions],
    }


@router.post("/{name}/versions", status_code=201)
async def upload(
    request: Request, name: str, principal: CurrentPrincipal, services: ServicesDep
) -> Response:
    """Upload a ``.tflite`` body; it is checked, sealed, and becomes the next version."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type not in UPLOAD_TYPES:
        raise InvalidRequest(
            f"send the .tflite file as the request body with Content-Type {UPLOAD_TYPES[0]}"
        )
    settings = request.app.state.settings
    path = await spool_body(request, settings.max_model_bytes, settings.data_dir / "staging")
    try:
        info = await services.models.upload_tflite(principal, name, path)
    finally:
        path.unlink(missing_ok=True)
    return json_response(_version(info), status_code=201)


@router.get("")
async def list_models(principal: CurrentPrincipal, services: ServicesDep) -> Response:
    """The caller's models with their versions and labels."""
    return json_response(
        {"models": [_model(m) for m in await services.models.list_models(principal)]}
    )


@router.get("/{name}")
async def get_model(name: str, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    """One model with its versions and labels."""
    return json_response(_model(await services.models.get_model(principal, name)))


@router.delete("/{name}", status_code=204)
async def delete_model(name: str, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    """Delete a model and every version."""
    await services.models.delete_model(principal, name)
    return Response(status_code=204)


@router.delete("/{name}/versions/{version}", status_code=204)
async def delete_version(
    name: str, version: int, principal: CurrentPrincipal, services: ServicesDep
) -> Response:
    """Delete one version."""
    await services.models.delete_version(principal, name, version)
    return Response(status_code=204)


@router.put("/{name}/labels/{label}")
async def set_label(
    name: str, label: str, body: LabelBody, principal: CurrentPrincipal, services: ServicesDep
) -> Response:
    """Point a label (``stable``, ``canary``, any name) at a version."""
    await services.models.set_label(principal, name, label, body.version)
    return json_response({"model": name, "label": label, "version": body.version})


@router.delete("/{name}/labels/{label}", status_code=204)
async def delete_label(
    name: str, label: str, principal: CurrentPrincipal, services: ServicesDep
) -> Response:
    """Remove a label."""
    await services.models.delete_label(principal, name, label)
    return Response(status_code=204)
