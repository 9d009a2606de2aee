"""Audit records that are not part of an action's own transaction, written in batches.

Inference calls and authentication failures happen at request rates, so they
go through a bounded queue flushed at least every second in one transaction
per batch. A full queue makes callers wait (backpressure): records are never
dropped. Review (listing, export, verify) goes through the same service.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from starlette.concurrency import run_in_threadpool

from auth import Scope, authorize
from server.service.errors import InvalidRequest
from storage.audit import Actor, AuditEvent

if TYPE_CHECKING:
    from auth import Principal
    from storage.audit import AuditLog

log = structlog.get_logger(__name__)
FLUSH_SECONDS = 1.0
MAX_BATCH = 500
MAX_CALLS_PER_FLUSH = 20_000


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One inference call, as the audit log keeps it."""

    tenant_id: str
    model: str
    version: str
    subject: str | None
    client_id: str | None
    outcome: str
    latency_ms: float
    request_id: str | None


class AuditRecorder:
    """Batches events into the audit log from the event loop.

    Inference calls are grouped per tenant into one chained entry per flush
    (``inference.calls``, each call's record in its details), so serving pays
    a queue put per call rather than a row and a hash.
    """

    def __init__(
        self, audit: AuditLog, *, max_queue: int = 10_000, max_calls: int = 100_000
    ) -> None:
        self._audit = audit
        self._queue: asyncio.Queue[AuditEvent] = asyncio.Queue(maxsize=max_queue)
        self._calls: asyncio.Queue[CallRecord] = asyncio.Queue(maxsize=max_calls)
        self._task: asyncio.Task[None] | None = None

    async def submit(self, event: AuditEvent) -> None:
        """Queue ``event``; waits while the queue is full."""
        await self._queue.put(event)

    async def submit_call(self, call: CallRecord) -> None:
        """Queue one inference call's record; waits while the queue is full."""
        if self._calls.full():
            await self._calls.put(call)
        else:
            self._calls.put_nowait(call)

    def start(self) -> None:
        """Start flushing in the background."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Flush what is queued and stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty() or not self._calls.empty():
            await self._flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self._flush()
            except Exception:
                log.exception("audit flush failed; retrying")

    async def _flush(self) -> None:
        # Drain only what was queued when the flush began: records arriving
        # while it writes wait for the next tick, so a busy server writes one
        # transaction a second rather than a stream of small ones.
        events, calls = self._queue.qsize(), min(self._calls.qsize(), MAX_CALLS_PER_FLUSH)
        while events > 0 or calls > 0:
            batch: list[AuditEvent] = []
            while len(batch) < min(events, MAX_BATCH):
                batch.append(self._queue.get_nowait())
            events -= len(batch)
            batch.extend(self._call_events(calls))
            calls = 0
            await run_in_threadpool(self._audit.record_many, batch)

    def _call_events(self, limit: int) -> list[AuditEvent]:
        by_tenant: dict[str, list[dict[str, Any]]] = defaultdict(list)
        taken = 0
        while taken < limit and not self._calls.empty():
            call = self._calls.get_nowait()
            by_tenant[call.tenant_id].append(
                {
                    "model": call.model,
                    "version": call.version,
                    "subject": call.subject,
                    "client_id": call.client_id,
                    "outcome": call.outcome,
                    "latency_ms": round(call.latency_ms, 3),
                    "request_id": call.request_id,
                }
            )
            taken += 1
        return [
            AuditEvent(
                action="inference.calls",
                resource=f"calls:{len(calls)}",
                tenant_id=tenant_id,
                outcome="success" if all(c["outcome"] == "success" for c in calls) else "failure",
                actor=Actor(subject="gateway"),
                details={"calls": calls},
            )
            for tenant_id, calls in by_tenant.items()
        ]


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
