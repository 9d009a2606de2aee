"""Model administration over REST, inside the caller's tenant.

Uploads come two ways. ``multipart/form-data`` (part ``model`` plus optional
``calibration``, ``evaluation``, ``training``, ``student`` and ``options``)
is always a job: 202 Accepted with the job, followed at
``/admin/v1/jobs/{id}``. A bare ``.tflite`` body (``application/octet-stream``)
is checked and sealed at once: 201 Created with the version, as before;
its batching settings may ride along as query parameters (``batching=off``,
``max_batch_size``, ``max_queue_delay_ms``). ``PATCH`` on a version replaces
them afterwards.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from server.rest.body import spool_body, spool_form
from server.rest.deps import CurrentPrincipal, ServicesDep
from server.rest.openapi import ADMIN, UPLOAD, errors
from server.rest.responses import json_response
from server.service.errors import InvalidRequest
from server.service.jobs import JobView, job_document
from storage import BatchSettings
from storage.batching import MAX_BATCH_SIZE, MAX_QUEUE_DELAY_MS

router = APIRouter(prefix="/admin/v1/models", tags=["models"], responses=ADMIN)
UPLOAD_TYPES = ("application/octet-stream", "application/x-tflite")
FORM_TYPE = "multipart/form-data"


class LabelBody(BaseModel):
    """Body of PUT /admin/v1/models/{name}/labels/{label}."""

    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)


class BatchingBody(BaseModel):
    """A version's batching settings; a field left out follows the server's default."""

    model_config = ConfigDict(extra="forbid")
    enabled: StrictBool | None = None
    max_batch_size: int | None = Field(default=None, strict=True, ge=1, le=MAX_BATCH_SIZE)
    max_queue_delay_ms: float | None = Field(
        default=None, strict=True, ge=0, le=MAX_QUEUE_DELAY_MS, allow_inf_nan=False
    )


class VersionPatch(BaseModel):
    """Body of PATCH /admin/v1/models/{name}/versions/{version}.

    ``batching`` replaces the version's settings as a whole; ``null`` returns
    the version to the server's defaults.
    """

    model_config = ConfigDict(extra="forbid")
    batching: BatchingBody | None


BatchingQuery = Annotated[
    Literal["on", "off"] | None, Query(description="off: no batching for this version")
]
MaxBatchQuery = Annotated[int | None, Query(ge=1, le=MAX_BATCH_SIZE)]
DelayQuery = Annotated[float | None, Query(ge=0, le=MAX_QUEUE_DELAY_MS, allow_inf_nan=False)]


def _batching(body: BatchingBody | None) -> BatchSettings | None:
    if body is None:
        return None
    settings = BatchSettings(**body.model_dump())
    return None if settings.is_default else settings


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
        "batching": info.batching.to_dict() if info.batching else None,
    }


def _model(info: Any) -> dict[str, Any]:
    return {
        "name": info.name,
        "created_at": info.created_at.isoformat(),
        "labels": info.labels,
        "versions": [_version(v) for v in info.versions],
    }


@router.post("/{name}/versions", status_code=201, responses=errors(413), openapi_extra=UPLOAD)
async def upload(
    request: Request,
    name: str,
    principal: CurrentPrincipal,
    services: ServicesDep,
    *,
    batching: BatchingQuery = None,
    max_batch_size: MaxBatchQuery = None,
    max_queue_delay_ms: DelayQuery = None,
) -> Response:
    """Upload a model: a form (queued as a job, 202) or a bare ``.tflite`` body (sealed, 201)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    settings_given = (batching, max_batch_size, max_queue_delay_ms) != (None, None, None)
    if content_type == FORM_TYPE:
        if settings_given:
            raise InvalidRequest(
                "batching settings go with a bare .tflite upload; for a job, set them with "
                f"PATCH /admin/v1/models/{name}/versions/{{version}} once it is ready"
            )
        return await _upload_form(request, name, principal, services)
    if content_type not in UPLOAD_TYPES:
        raise InvalidRequest(
            f"send {FORM_TYPE} (part 'model' with the file, optional data files and 'options') "
            f"or a bare .tflite body with Content-Type {UPLOAD_TYPES[0]}"
        )
    version_batching = _batching(
        BatchingBody(
            enabled=None if batching is None else batching == "on",
            max_batch_size=max_batch_size,
            max_queue_delay_ms=max_queue_delay_ms,
        )
    )
    settings = request.app.state.settings
    path = await spool_body(request, settings.max_model_bytes, settings.data_dir / "staging")
    try:
        info = await services.models.upload_tflite(principal, name, path, batching=version_batching)
    finally:
        path.unlink(missing_ok=True)
    return json_response(_version(info), status_code=201)


async def _upload_form(
    request: Request, name: str, principal: CurrentPrincipal, services: ServicesDep
) -> Response:
    jobs = services.jobs
    upload = jobs.new_upload()
    try:
        form = await spool_form(
            request, plan=jobs, directory=upload.directory.input, limit=jobs.max_form_bytes
        )
        job = await jobs.submit(
            principal, name, upload, files=form.files, options=form.fields.get("options")
        )
    except BaseException:
        jobs.discard(upload)
        raise
    document = job_document(JobView(job=job, version=None))
    return json_response(document, status_code=202, headers={"Location": document["links"]["self"]})


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


@router.patch("/{name}/versions/{version}")
async def patch_version(
    name: str,
    version: int,
    body: VersionPatch,
    principal: CurrentPrincipal,
    services: ServicesDep,
) -> Response:
    """Change a version's batching settings (applied when a worker next loads the version)."""
    info = await services.models.set_batching(principal, name, version, _batching(body.batching))
    return json_response(_version(info))


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
