"""Model intake jobs inside the caller's tenant: submit an upload, follow it.

An upload arrives as files the adapter has already streamed, under the size
limits, into a fresh private directory (``new_upload``), each under a name
this module chose (``staged_name``), never the client's. ``submit`` checks
everything that can be checked without loading the model (model name, file
kinds, magic bytes, options and how they fit the files) and only then queues
the job; anything refused is a 4xx naming the problem, and nothing is queued.
The model itself is opened only in the job process.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from compress import ModelKind, check_compatible, kind_from_filename, parse_options
from compress.errors import InvalidData
from compress.formats import check_magic
from server.jobs.layout import DATA_ROLES, JobDirectory, input_name
from server.service.context import current_actor
from server.service.errors import InvalidRequest
from storage import NotFound
from storage.registry import MODEL_NAME

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from auth import Principal
    from storage import ModelVersionInfo, Registry
    from storage.jobs import JobRecord, JobStore

FILE_ROLES = ("model", *DATA_ROLES, "student")
OPTIONS_LIMIT = 64 * 1024
_NPZ_MAGIC = b"PK\x03\x04"
LOG_TAIL_LINES = 50


@dataclass(frozen=True)
class UploadPart:
    """How one part of an upload form is taken: its size limit, and whether it is a file."""

    limit: int
    file: bool


@dataclass(frozen=True)
class StagedUpload:
    """A fresh job directory the adapter streams an upload's files into."""

    job_id: str
    directory: JobDirectory

    def path(self, name: str) -> Path:
        """Where the file stored as ``name`` (from ``staged_name``) lives."""
        return self.directory.input / name


@dataclass(frozen=True)
class JobView:
    """A job, with the version it made (and that version's report) once there is one."""

    job: JobRecord
    version: ModelVersionInfo | None


def _tenant(principal: Principal) -> str:
    if principal.tenant_id is None:
        raise InvalidRequest("platform clients have no models; use a tenant client")
    return principal.tenant_id


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def job_document(view: JobView, *, log_lines: int = LOG_TAIL_LINES) -> dict[str, Any]:
    """The JSON shape of a job, shared by the REST API and the CLI."""
    job, version = view.job, view.version
    document: dict[str, Any] = {
        "id": job.id,
        "model": job.model_name,
        "state": job.state,
        "progress": round(job.progress, 4),
        "stage": job.message,
        "source_kind": job.source_kind,
        "inputs": list(job.inputs),
        "options": job.options,
        "error": job.error,
        "log": job.log.splitlines()[-log_lines:] if log_lines else [],
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "version": job.version,
        "result": None,
        "links": {
            "self": f"/admin/v1/jobs/{job.id}",
            "model": f"/admin/v1/models/{job.model_name}",
        },
    }
    if version is not None:
        document["result"] = {
            "state": version.state,
            "format": version.format,
            "size": version.size_plain,
            "size_stored": version.size_stored,
            "sha256": version.sha256,
            "inputs": version.signature.get("inputs", []),
            "outputs": version.signature.get("outputs", []),
            "report": version.report,
        }
    return document


class JobService:
    """Queue intake jobs from staged uploads, and show the caller's jobs."""

    def __init__(
        self,
        *,
        store: JobStore,
        registry: Registry,
        staging: Path,
        site: str,
        max_model_bytes: int,
        max_data_bytes: int,
        on_submit: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._staging = staging
        self._site = site
        self._parts = {
            "model": UploadPart(limit=max_model_bytes, file=True),
            "student": UploadPart(limit=max_model_bytes, file=True),
            "options": UploadPart(limit=OPTIONS_LIMIT, file=False),
            **{role: UploadPart(limit=max_data_bytes, file=True) for role in DATA_ROLES},
        }
        self._on_submit = on_submit

    # --- the upload form ---------------------------------------------------------
    def part(self, name: str) -> UploadPart:
        """The rule for form part ``name``; an unknown part is refused, not ignored."""
        rule = self._parts.get(name)
        if rule is None:
            known = ", ".join(self._parts)
            raise InvalidRequest(f"unknown form part {name!r}; the parts are: {known}")
        return rule

    @property
    def max_form_bytes(self) -> int:
        """The most a whole upload form may hold (every part at its limit, plus headers)."""
        return sum(rule.limit for rule in self._parts.values()) + 64 * 1024

    @staticmethod
    def staged_name(part: str, filename: str | None) -> str:
        """The name file part ``part`` is stored under; its kind comes from the client's name."""
        if part == "model":
            if not filename:
                raise InvalidRequest("the model part needs a file name (it tells the format)")
            return input_name("model", kind_from_filename(filename))
        if part == "student" and not (filename or "").lower().endswith(".keras"):
            raise InvalidRequest("the student part must be a .keras file")
        return input_name(part)

    def new_upload(self) -> StagedUpload:
        """A fresh private directory for one upload (``discard`` it unless submitted)."""
        job_id = str(uuid.uuid4())
        directory = JobDirectory.of(self._staging, job_id)
        directory.create()
        return StagedUpload(job_id=job_id, directory=directory)

    @staticmethod
    def discard(upload: StagedUpload) -> None:
        """Remove an upload that was refused or abandoned."""
        shutil.rmtree(upload.directory.root, ignore_errors=True)

    # --- use cases -----------------------------------------------------------------
    async def submit(
        self,
        principal: Principal,
        name: str,
        upload: StagedUpload,
        *,
        files: dict[str, str | None],
        options: str | None,
    ) -> JobRecord:
        """Check the staged upload and queue its job; the job owns the directory from here.

        ``files`` maps each file part received to the client's file name (used
        for its suffix only). ``options`` is the options JSON text, if sent.
        """
        tenant_id = _tenant(principal)
        if not MODEL_NAME.fullmatch(name):
            raise InvalidRequest(f"invalid model name {name!r}: expected {MODEL_NAME.pattern}")
        if "model" not in files:
            raise InvalidRequest(
                "the form has no 'model' part: send the model file as part 'model'"
            )
        kind = kind_from_filename(files["model"] or "")
        parsed = parse_options(options if options and options.strip() else "{}")
        paths = {role: upload.path(self.staged_name(role, files[role])) for role in files}
        check_compatible(
            parsed,
            kind=kind,
            calibration=paths.get("calibration"),
            evaluation=paths.get("evaluation"),
            training=paths.get("training"),
            student=paths.get("student"),
        )
        await run_in_threadpool(self._check_contents, kind, paths)
        actor = current_actor(principal)  # here: the request's context is this task's
        record = await run_in_threadpool(
            lambda: self._store.create(
                job_id=upload.job_id,
                tenant_id=tenant_id,
                model_name=name,
                source_kind=kind.value,
                inputs=[role for role in FILE_ROLES if role in paths],
                options=parsed.model_dump(mode="json", exclude_defaults=True),
                site=self._site,
                actor=actor,
            )
        )
        if self._on_submit is not None:
            self._on_submit()
        return record

    @staticmethod
    def _check_contents(kind: ModelKind, paths: dict[str, Path]) -> None:
        """Cheap checks on the first bytes, so a renamed file is refused before it queues."""
        check_magic(paths["model"], kind=kind)
        if "student" in paths:
            check_magic(paths["student"], kind=ModelKind.KERAS)
        for role in DATA_ROLES:
            if role in paths:
                with paths[role].open("rb") as handle:
                    if handle.read(4) != _NPZ_MAGIC:
                        raise InvalidData(
                            f"the {role} file is not an .npz archive (numpy.savez with x and y)"
                        )

    async def get(self, principal: Principal, job_id: str) -> JobView:
        """One of the caller's jobs with its version, if it made one."""
        tenant_id = _tenant(principal)
        return await run_in_threadpool(self._view, tenant_id, job_id)

    def _view(self, tenant_id: str, job_id: str) -> JobView:
        job = self._store.get(tenant_id, job_id)
        version = None
        if job.version is not None and job.version_id is not None:
            try:
                found = self._registry.resolve(tenant_id, job.model_name, job.version)
            except NotFound:
                found = None  # the version was deleted since
            version = found if found is not None and found.id == job.version_id else None
        return JobView(job=job, version=version)

    async def recent(
        self, principal: Principal, *, model: str | None = None, limit: int = 50
    ) -> list[JobRecord]:
        """The caller's newest jobs, optionally for one model."""
        tenant_id = _tenant(principal)
        return await run_in_threadpool(
            lambda: self._store.recent(tenant_id, model_name=model, limit=limit)
        )
