"""The gateway's job supervisor: runs queued jobs, a bounded number at a time, and seals results.

One supervisor per gateway process. It claims the queued jobs of its own site
(the ones whose inputs sit in its data directory), runs each in a job process
(``server.jobs.process``), follows its progress into the database, and seals
the result with ``Registry.put_version``: ``ready`` when the report passed,
``failed`` (visible to admins, never served) when it missed the options'
bounds. The version and the job's end commit in one transaction, so a crash
cannot leave a sealed version behind a job that then fails as stale, and a
job another gateway already failed seals nothing. A job's staging directory
is removed when it ends.

Recovery, for every gateway sharing the database: a running job whose
heartbeat is older than ``jobs_stale_seconds`` lost its gateway and is marked
failed. A gateway that stops gracefully kills its job processes and puts their
jobs back in the queue (their inputs stay), so its next start runs them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import shutil
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog
from starlette.concurrency import run_in_threadpool

from auth import AuthError
from server.jobs.layout import JobDirectory, input_name, site_id, staging_root
from server.jobs.process import run_job_process
from server.service.errors import ServiceError
from server.tflite_check import check_tflite
from storage import StorageError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sqlalchemy.orm import Session

    from server.service.resolver import ModelResolver
    from server.settings import Settings
    from storage import ModelVersionInfo, Registry
    from storage.jobs import JobRecord, JobStore

log = structlog.get_logger(__name__)


class _JobGone(Exception):  # noqa: N818 - a condition, not an error to report
    """The job stopped running (another gateway failed it as stale) while its result was sealed."""


_POLL_SECONDS = 2.0
_RESULT_LIMIT = 4 * 1024 * 1024
_ORPHAN_AGE_SECONDS = 3600.0
# The job process reports up to 1.0; sealing is the last stretch.
_RUN_SHARE = 0.95


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None`` (JSON columns refuse them on PostgreSQL)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _read_result(directory: JobDirectory) -> dict[str, Any]:
    """The job's report, checked for shape: the job process is not trusted."""
    if directory.result_json.stat().st_size > _RESULT_LIMIT:
        msg = "the job's report is too large"
        raise ValueError(msg)
    answer = json.loads(directory.result_json.read_text(encoding="utf-8"))
    report = answer.get("report") if isinstance(answer, dict) else None
    if not isinstance(report, dict) or not isinstance(report.get("passed"), bool):
        msg = "the job's report is malformed"
        raise ValueError(msg)  # noqa: TRY004 - a malformed file, not a caller's wrong type
    return _finite(report)  # type: ignore[no-any-return]


def summary(report: dict[str, Any]) -> str:
    """One log line for a report: accuracy or MSE, and size, before and after."""
    original, result = report.get("original") or {}, report.get("result") or {}
    parts = []
    if original.get("accuracy") is not None and result.get("accuracy") is not None:
        parts.append(f"accuracy {original['accuracy']:.2%} -> {result['accuracy']:.2%}")
    if original.get("mse") is not None and result.get("mse") is not None:
        parts.append(f"mse {original['mse']:.4g} -> {result['mse']:.4g}")
    parts.append(f"size {original.get('tflite_bytes')} -> {result.get('tflite_bytes')} bytes")
    return ", ".join(parts)


class JobSupervisor:
    """Runs this gateway's share of the job queue."""

    def __init__(
        self,
        *,
        store: JobStore,
        registry: Registry,
        resolver: ModelResolver,
        settings: Settings,
    ) -> None:
        self._store = store
        self._registry = registry
        self._resolver = resolver
        self._settings = settings
        self.site = site_id(settings.data_dir)
        self.root = staging_root(settings.data_dir)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._last_sweep = 0.0

    # --- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        """Recover what a previous run left, then start taking jobs."""
        await run_in_threadpool(self._recover)
        self._loop_task = asyncio.create_task(self._loop(), name="job-supervisor")

    async def stop(self) -> None:
        """Stop taking jobs; kill running job processes and queue their jobs again."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def wake(self) -> None:
        """A job was queued: look at the queue now rather than at the next poll."""
        self._wake.set()

    @property
    def running(self) -> list[str]:
        """Ids of the jobs this supervisor is running."""
        return list(self._running)

    async def run_now(self, job_id: str) -> bool:
        """Claim and run one queued job in this process (the CLI's operator mode).

        Returns False when another supervisor claimed it first; it runs there.
        """
        job = await run_in_threadpool(lambda: self._store.claim(site=self.site, job_id=job_id))
        if job is None:
            return False
        heartbeat = asyncio.create_task(self._heartbeats([job.id]))
        try:
            await self._execute(job)
        finally:
            heartbeat.cancel()
        return True

    # --- the loop --------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            try:
                await self._tick()
            except Exception:
                log.exception("job supervisor tick failed")
            self._wake.clear()
            # Not ``wait_for``: on Python 3.11 it can swallow the cancellation of ``stop``
            # when a wake-up comes at the same moment, and the loop would run on.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_POLL_SECONDS):
                    await self._wake.wait()

    async def _tick(self) -> None:
        now = time.monotonic()
        interval = self._settings.jobs_stale_seconds / 6
        if now - self._last_sweep >= interval:
            self._last_sweep = now
            await run_in_threadpool(self._store.heartbeat, self.running)
            await run_in_threadpool(self._sweep)
        while len(self._running) < self._settings.jobs_concurrency:
            job = await run_in_threadpool(lambda: self._store.claim(site=self.site))
            if job is None:
                return
            task = asyncio.create_task(self._execute(job), name=f"job-{job.id}")
            self._running[job.id] = task
            task.add_done_callback(functools.partial(self._done, job.id))

    def _done(self, job_id: str, _task: asyncio.Task[None]) -> None:
        self._running.pop(job_id, None)
        self._wake.set()

    async def _heartbeats(self, job_ids: list[str]) -> None:
        while True:
            await asyncio.sleep(self._settings.jobs_stale_seconds / 6)
            await run_in_threadpool(self._store.heartbeat, job_ids)

    def _sweep(self) -> None:
        """Fail jobs whose gateway died; remove their inputs when they were ours."""
        stale = timedelta(seconds=self._settings.jobs_stale_seconds)
        for job in self._store.fail_stale(older_than=stale):
            log.warning("interrupted job marked failed", job_id=job.id, tenant_id=job.tenant_id)
            if job.site == self.site:
                shutil.rmtree(JobDirectory.of(self.root, job.id).root, ignore_errors=True)

    def _recover(self) -> None:
        """Fail stale jobs and remove staging directories no job owns any more."""
        self._sweep()
        if not self.root.is_dir():
            return
        active = self._store.active_ids(site=self.site)
        cutoff = time.time() - _ORPHAN_AGE_SECONDS
        for path in self.root.iterdir():
            # An upload still streaming has no job row yet: only old leftovers go.
            if path.name not in active and path.stat().st_mtime < cutoff:
                log.info("removing abandoned job staging", path=str(path))
                shutil.rmtree(path, ignore_errors=True)

    # --- one job ---------------------------------------------------------------
    def _write_spec(self, job: JobRecord, directory: JobDirectory) -> None:
        from compress import ModelKind  # noqa: PLC0415 - light; keeps the module graph small

        settings = self._settings
        kind = ModelKind(job.source_kind)
        spec = {
            "kind": kind.value,
            "options": job.options,
            "files": {role: f"input/{input_name(role, kind)}" for role in job.inputs},
            "limits": {
                "max_source_bytes": settings.max_model_bytes,
                "max_data_bytes": settings.intake_max_data_bytes,
                "max_unpacked_bytes": settings.intake_max_unpacked_bytes,
                "max_entries": settings.intake_max_archive_entries,
                "max_ratio": settings.intake_max_archive_ratio,
            },
            "max_file_bytes": settings.intake_max_unpacked_bytes + settings.max_model_bytes,
            "sandbox": settings.jobs_sandbox,
        }
        directory.prepare_run()
        directory.spec.write_text(json.dumps(spec), encoding="utf-8")

    def _progress(self, job_id: str) -> Callable[[str, float], Awaitable[None]]:
        async def report(stage: str, fraction: float) -> None:
            await run_in_threadpool(
                lambda: self._store.progress(job_id, progress=fraction * _RUN_SHARE, message=stage)
            )

        return report

    async def _execute(self, job: JobRecord) -> None:
        directory = JobDirectory.of(self.root, job.id)
        bound = log.bind(job_id=job.id, tenant_id=job.tenant_id, model=job.model_name)
        requeued = False
        try:
            if not directory.input.is_dir():
                await self._finish(job, error="the job's uploaded files are gone; upload again")
                return
            await run_in_threadpool(self._write_spec, job, directory)
            bound.info("job started")
            outcome = await run_job_process(
                directory,
                timeout=self._settings.jobs_timeout_seconds,
                threads=self._settings.jobs_threads,
                memory_limit=self._settings.jobs_memory_mb * 1024 * 1024,
                on_progress=self._progress(job.id),
            )
            if outcome.ok:
                await self._seal(job, directory)
            else:
                await self._finish(job, error=outcome.error)
        except asyncio.CancelledError:
            requeued = True
            await run_in_threadpool(
                lambda: self._store.requeue(job.id, reason="interrupted: the server stopped")
            )
            raise
        except Exception:  # noqa: BLE001 - a bug here must fail one job, not the supervisor
            bound.exception("job failed unexpectedly")
            await self._finish(job, error="the job failed unexpectedly")
        finally:
            if not requeued:
                await run_in_threadpool(shutil.rmtree, directory.root, ignore_errors=True)

    async def _seal(self, job: JobRecord, directory: JobDirectory) -> None:
        """Check the result in LiteRT, then seal it as ``ready`` or ``failed`` with its report."""
        report = await run_in_threadpool(_read_result, directory)
        await run_in_threadpool(
            lambda: self._store.progress(job.id, progress=_RUN_SHARE, message="sealing")
        )
        try:
            checked = await run_in_threadpool(check_tflite, directory.result_model)
            info = await run_in_threadpool(
                self._put_version, job, directory, report, checked.signature
            )
        except _JobGone:
            log.warning("job was no longer running when it was sealed; nothing kept", job_id=job.id)
            return
        except (ServiceError, StorageError, AuthError) as exc:
            await self._finish(job, error=exc.message)
            return
        self._resolver.invalidate(job.tenant_id)
        log.info("job finished", job_id=job.id, state=info.state, version=info.version)

    def _put_version(
        self,
        job: JobRecord,
        directory: JobDirectory,
        report: dict[str, Any],
        signature: dict[str, Any],
    ) -> ModelVersionInfo:
        reasons = "; ".join(str(reason) for reason in report.get("reasons") or ())
        error = None if report["passed"] else f"the result missed its bounds: {reasons}"
        state = "ready" if error is None else "failed"

        def still_running(session: Session) -> None:
            if not self._store.lock_running(session, job.id):
                raise _JobGone

        def finish_job(session: Session, version: ModelVersionInfo) -> None:
            done = self._store.finish_in(
                session,
                job.id,
                state=state,
                error=error,
                version_id=version.id,
                version=version.version,
                details={"size_stored": version.size_stored},
                note=summary(report),
            )
            if done is None:
                raise _JobGone
            # The staged files go before the job is seen as done (the model was
            # read whole by now): whoever reads a finished job finds staging empty.
            shutil.rmtree(directory.root, ignore_errors=True)

        with directory.result_model.open("rb") as source:
            return self._registry.put_version(
                tenant_id=job.tenant_id,
                model_name=job.model_name,
                source=source,
                format="tflite",
                signature=signature,
                report=report,
                state=state,
                max_bytes=self._settings.max_model_bytes,
                actor=job.actor,
                first=still_running,
                then=finish_job,
            )

    async def _finish(
        self,
        job: JobRecord,
        *,
        error: str | None,
        version: ModelVersionInfo | None = None,
        note: str | None = None,
    ) -> None:
        state = "failed" if error is not None else "ready"

        def finish() -> None:
            # The uploaded files and results go before the job is seen as done:
            # whoever reads a finished job finds its staging already empty.
            shutil.rmtree(JobDirectory.of(self.root, job.id).root, ignore_errors=True)
            if note is not None:
                self._store.progress(job.id, progress=_RUN_SHARE, message=note)
            done = self._store.finish(
                job.id,
                state=state,
                error=error,
                version_id=None if version is None else version.id,
                version=None if version is None else version.version,
                details={} if version is None else {"size_stored": version.size_stored},
            )
            if done is None:
                log.warning("job was no longer running when it ended", job_id=job.id)

        await run_in_threadpool(finish)
        log.info("job finished", job_id=job.id, state=state, error=error)
