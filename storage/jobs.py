"""Intake jobs in the database: queue, claim, progress, finish, and recovery.

A job's life is ``queued`` -> ``running`` -> ``ready`` | ``failed``. Every
transition is one unit of work, and the ones an auditor cares about (submit,
start, finish, requeue) append their audit entry in that same transaction.
Claims are atomic: a job moves from ``queued`` to ``running`` in exactly one
supervisor, whatever the number of gateways sharing the database.

Reads a tenant makes are scoped to its tenant: another tenant's job is the
same ``NotFound`` as a missing one. Supervisor methods (claim, sweep) work
across tenants, because running jobs is the platform's work, not a tenant's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from storage.audit import Actor, AuditEvent, AuditLog
from storage.db import unit_of_work
from storage.errors import InvalidInput, NotFound
from storage.models import Job
from storage.models.job import FINAL_JOB_STATES
from storage.types import utcnow

if TYPE_CHECKING:
    from datetime import datetime, timedelta

    from sqlalchemy.orm import Session, sessionmaker

JOB_NOT_FOUND = "job '{job_id}' not found"
LOG_LIMIT = 16 * 1024
"""Characters of log kept per job: the newest lines, so the tail is always there."""
MESSAGE_LIMIT = 256
ERROR_LIMIT = 1024


@dataclass(frozen=True)
class JobRecord:
    """A job as callers see it."""

    id: str
    tenant_id: str
    model_name: str
    state: str
    progress: float
    message: str
    log: str
    source_kind: str
    inputs: tuple[str, ...]
    options: dict[str, Any]
    site: str
    actor: Actor
    version_id: str | None
    version: int | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        """Whether the job reached ``ready`` or ``failed``."""
        return self.state in FINAL_JOB_STATES


def _record(row: Job) -> JobRecord:
    return JobRecord(
        id=row.id,
        tenant_id=row.tenant_id,
        model_name=row.model_name,
        state=row.state,
        progress=row.progress,
        message=row.message,
        log=row.log,
        source_kind=row.source_kind,
        inputs=tuple(row.inputs),
        options=row.options,
        site=row.site,
        actor=Actor(**row.actor),
        version_id=row.version_id,
        version=row.version,
        error=row.error,
        created_at=row.created_at,
        started_at=row.started_at,
        heartbeat_at=row.heartbeat_at,
        finished_at=row.finished_at,
    )


def append_log(log: str, line: str, *, limit: int = LOG_LIMIT) -> str:
    """``log`` with ``line`` (timestamped) added, cut to its newest ``limit`` characters.

    The cut falls on a line boundary, so the log never starts mid-line.
    """
    stamp = utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
    text = f"{log}{stamp} {line.strip()[:MESSAGE_LIMIT]}\n"
    if len(text) <= limit:
        return text
    tail = text[-limit:]
    return tail[tail.find("\n") + 1 :]


def _end(row: Job, *, state: str, error: str | None, version_id: str | None = None) -> None:
    row.state = state
    row.finished_at = utcnow()
    row.version_id = version_id
    row.error = None if error is None else error[:ERROR_LIMIT]
    if state == "ready":
        row.progress = 1.0
    row.message = state
    row.log = append_log(row.log, state if error is None else f"failed: {error}")


class JobStore:
    """Persistence for intake jobs, with their audit entries."""

    def __init__(self, *, session_factory: sessionmaker[Session], audit: AuditLog) -> None:
        self._sessions = session_factory
        self._audit = audit

    # --- tenant-facing -------------------------------------------------------
    def create(
        self,
        *,
        job_id: str,
        tenant_id: str,
        model_name: str,
        source_kind: str,
        inputs: list[str],
        options: dict[str, Any],
        site: str,
        actor: Actor,
    ) -> JobRecord:
        """Queue a job whose input files are already staged under ``job_id``."""
        with unit_of_work(self._sessions, write=True) as session:
            row = Job(
                id=job_id,
                tenant_id=tenant_id,
                model_name=model_name,
                state="queued",
                progress=0.0,
                message="queued",
                log=append_log("", "queued"),
                source_kind=source_kind,
                inputs=list(inputs),
                options=options,
                site=site,
                actor=asdict(actor),
            )
            session.add(row)
            session.flush()
            self._event(
                session,
                row,
                "model.job.submit",
                details={"source_kind": source_kind, "inputs": list(inputs), "options": options},
            )
            return _record(row)

    def get(self, tenant_id: str, job_id: str) -> JobRecord:
        """One of the tenant's jobs; someone else's is as missing as a made-up id."""
        with unit_of_work(self._sessions) as session:
            return _record(self._row(session, tenant_id, job_id))

    def recent(
        self, tenant_id: str, *, model_name: str | None = None, limit: int = 50
    ) -> list[JobRecord]:
        """The tenant's newest jobs, optionally for one model."""
        query = select(Job).where(Job.tenant_id == tenant_id)
        if model_name is not None:
            query = query.where(Job.model_name == model_name)
        with unit_of_work(self._sessions) as session:
            rows = session.scalars(query.order_by(Job.created_at.desc(), Job.id).limit(limit))
            return [_record(row) for row in rows]

    # --- supervisor-facing ---------------------------------------------------
    def claim(self, *, site: str, job_id: str | None = None) -> JobRecord | None:
        """Move the oldest queued job of ``site`` (or job ``job_id``) to ``running``.

        Returns ``None`` when there is none (or another supervisor was first).
        PostgreSQL skips rows another transaction holds; SQLite's write lock
        serialises claims.
        """
        query = select(Job).where(Job.state == "queued", Job.site == site)
        if job_id is not None:
            query = query.where(Job.id == job_id)
        # Supervisors poll: look before taking the write lock (SQLite has one for all).
        with unit_of_work(self._sessions) as session:
            if session.scalar(query.with_only_columns(Job.id).limit(1)) is None:
                return None
        query = query.order_by(Job.created_at, Job.id).limit(1).with_for_update(skip_locked=True)
        with unit_of_work(self._sessions, write=True) as session:
            row = session.scalar(query)
            if row is None:
                return None
            now = utcnow()
            row.state = "running"
            row.started_at = row.heartbeat_at = now
            row.message = "starting"
            row.log = append_log(row.log, "started")
            self._event(session, row, "model.job.start")
            return _record(row)

    def progress(self, job_id: str, *, progress: float, message: str) -> None:
        """Record a running job's stage (logged when it changes) and refresh its heartbeat."""
        with unit_of_work(self._sessions, write=True) as session:
            row = session.get(Job, job_id)
            if row is None or row.state != "running":
                return
            row.progress = min(1.0, max(row.progress, progress))
            row.heartbeat_at = utcnow()
            if message != row.message:
                row.message = message[:MESSAGE_LIMIT]
                row.log = append_log(row.log, f"{message} ({row.progress:.0%})")

    def heartbeat(self, job_ids: list[str]) -> None:
        """Tell other gateways these running jobs are alive."""
        if not job_ids:
            return
        with unit_of_work(self._sessions, write=True) as session:
            session.execute(
                update(Job)
                .where(Job.id.in_(job_ids), Job.state == "running")
                .values(heartbeat_at=utcnow())
            )

    def finish(
        self,
        job_id: str,
        *,
        state: str,
        error: str | None = None,
        version_id: str | None = None,
        version: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> JobRecord | None:
        """End a running job as ``ready`` or ``failed``; ``None`` if it is gone or not running.

        ``error`` is the public reason of a failure; the audit entry records
        the outcome and the version made, if any.
        """
        with unit_of_work(self._sessions, write=True) as session:
            return self.finish_in(
                session,
                job_id,
                state=state,
                error=error,
                version_id=version_id,
                version=version,
                details=details,
            )

    @staticmethod
    def lock_running(session: Session, job_id: str) -> bool:
        """Lock the job's row in the caller's transaction; whether it is still running.

        Taken before anything else in the transaction that seals a job's
        version, so that transaction locks the job before the audit log's
        head, in the same order as ``fail_stale`` (no deadlock between them).
        """
        row = session.get(Job, job_id, with_for_update=True)
        return row is not None and row.state == "running"

    def finish_in(
        self,
        session: Session,
        job_id: str,
        *,
        state: str,
        error: str | None = None,
        version_id: str | None = None,
        version: int | None = None,
        details: dict[str, Any] | None = None,
        note: str | None = None,
    ) -> JobRecord | None:
        """``finish`` inside the caller's transaction (the one that seals its version).

        ``note`` is logged first, as the job's last message before its end.
        """
        if state not in FINAL_JOB_STATES:
            msg = f"invalid final job state {state!r}"
            raise InvalidInput(msg)
        row = session.get(Job, job_id, with_for_update=True)
        if row is None or row.state != "running":
            return None
        if note is not None and note != row.message:
            row.log = append_log(row.log, f"{note[:MESSAGE_LIMIT]} ({row.progress:.0%})")
        if version is not None:
            row.log = append_log(row.log, f"sealed as version {version} ({state})")
        _end(row, state=state, error=error, version_id=version_id)
        row.version = version
        self._event(
            session,
            row,
            "model.job.finish",
            outcome="success" if state == "ready" else "failure",
            details={"state": state, "version": version, "error": row.error, **(details or {})},
        )
        return _record(row)

    def requeue(self, job_id: str, *, reason: str) -> None:
        """Put a running job back in the queue (its gateway is stopping; its inputs stay)."""
        with unit_of_work(self._sessions, write=True) as session:
            row = session.get(Job, job_id)
            if row is None or row.state != "running":
                return
            row.state = "queued"
            row.progress = 0.0
            row.message = "queued"
            row.started_at = row.heartbeat_at = None
            row.log = append_log(row.log, f"{reason}; queued again")
            self._event(session, row, "model.job.requeue", details={"reason": reason})

    def fail_stale(self, *, older_than: timedelta) -> list[JobRecord]:
        """Fail running jobs whose heartbeat is older than ``older_than``: their gateway died.

        The interrupted run may have been anywhere; the tenant uploads again.
        Any gateway may do this for any site: a dead gateway cannot.
        """
        cutoff = utcnow() - older_than
        query = select(Job).where(Job.state == "running", Job.heartbeat_at < cutoff)
        with unit_of_work(self._sessions) as session:
            if session.scalar(query.with_only_columns(Job.id).limit(1)) is None:
                return []
        with unit_of_work(self._sessions, write=True) as session:
            rows = session.scalars(query.with_for_update(skip_locked=True)).all()
            for row in rows:
                message = "the job was interrupted (its server stopped); upload the model again"
                _end(row, state="failed", error=message)
                self._event(
                    session,
                    row,
                    "model.job.finish",
                    outcome="failure",
                    details={"state": "failed", "error": message},
                )
            return [_record(row) for row in rows]

    def active_ids(self, *, site: str) -> set[str]:
        """Ids of the site's queued and running jobs (whose staged inputs must stay)."""
        with unit_of_work(self._sessions) as session:
            return set(
                session.scalars(
                    select(Job.id).where(Job.site == site, Job.state.in_(("queued", "running")))
                )
            )

    # --- helpers -------------------------------------------------------------
    @staticmethod
    def _row(session: Session, tenant_id: str, job_id: str) -> Job:
        row = session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.id == job_id))
        if row is None:
            raise NotFound(JOB_NOT_FOUND.format(job_id=job_id))
        return row

    def _event(
        self,
        session: Session,
        row: Job,
        action: str,
        *,
        outcome: str = "success",
        details: dict[str, Any] | None = None,
    ) -> None:
        self._audit.append(
            session,
            AuditEvent(
                action=action,
                resource=f"job:{row.id}",
                outcome=outcome,
                tenant_id=row.tenant_id,
                actor=Actor(**row.actor),
                details={"model": row.model_name, **(details or {})},
            ),
        )
