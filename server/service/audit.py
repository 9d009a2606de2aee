"""Audit records that are not part of an action's own transaction, written in batches.

Inference calls and authentication failures happen at request rates, so they
go through a bounded queue flushed at least every second in one transaction
per batch. A full queue makes callers wait (backpressure): records are never
dropped. Review (listing, export, verify) goes through the same service.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from starlette.concurrency import run_in_threadpool

from auth import Scope, authorize
from server.service.errors import InvalidRequest

if TYPE_CHECKING:
    from auth import Principal
    from storage.audit import AuditEvent, AuditLog

log = structlog.get_logger(__name__)
FLUSH_SECONDS = 1.0
MAX_BATCH = 500


class AuditRecorder:
    """Batches events into the audit log from the event loop."""

    def __init__(self, audit: AuditLog, *, max_queue: int = 10_000) -> None:
        self._audit = audit
        self._queue: asyncio.Queue[AuditEvent] = asyncio.Queue(maxsize=max_queue)
        self._task: asyncio.Task[None] | None = None

    async def submit(self, event: AuditEvent) -> None:
        """Queue ``event``; waits while the queue is full."""
        await self._queue.put(event)

    def start(self) -> None:
        """Start flushing in the background."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Flush what is queued and stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self._flush()
            except Exception:
                log.exception("audit flush failed; retrying")

    async def _flush(self) -> None:
        while not self._queue.empty():
            batch: list[AuditEvent] = []
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await run_in_threadpool(self._audit.record_many, batch)


class AuditReviewService:
    """Reading the log: tenant admins see their tenant, platform auditors everything."""

    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit

    def list(
        self,
        principal: Principal | None,
        *,
        tenant_id: str | None = None,
        limit: int = 100,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """Entries newest first; ``before_seq`` in ``filters`` pages backwards."""
        if principal is not None:
            authorize(principal, Scope.AUDIT_READ, tenant_id=principal.tenant_id)
        if not 1 <= limit <= 1000:  # noqa: PLR2004
            raise InvalidRequest("limit must be between 1 and 1000")
        for key in ("since", "until"):
            value = filters.get(key)
            if isinstance(value, str):
                try:
                    filters[key] = datetime.fromisoformat(value)
                except ValueError:
                    raise InvalidRequest(f"{key} must be an ISO 8601 time") from None
        if principal is not None and principal.tenant_id is not None:
            # A tenant admin reads its own tenant only, whatever it asks for.
            return self._audit.query(tenant_id=principal.tenant_id, limit=limit, **filters)
        return self._audit.query(tenant_id=tenant_id, all_tenants=True, limit=limit, **filters)
