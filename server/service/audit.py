"""Audit records that are not part of an action's own transaction, written in batches.

Inference calls and authentication failures happen at request rates, so they
go through a bounded queue flushed at least every second in one transaction
per batch. A full queue makes callers wait (backpressure): records are never
dropped. A write the database refuses (restarting, locked, full) is kept and
written by the next flush, before anything newer; meanwhile new records
queue up to the bounds, then callers wait.

Calls a tenant's own limits refused are counted rather than kept one by one
(an ``inference.refused`` entry per tenant and flush, with a count per model,
version, client and reason): a tenant flooding past its limit must not be
able to grow the shared log, or the gateway's work, by a record per call.
Calls refused for their credentials (``auth.failure``: no valid token;
``auth.denied``: a token without the scope) are counted the same way, per
tenant (none for a caller without a valid token) and flush, by operation,
reason, client and address: anyone can send bad tokens, and a flood of them
must not make every caller wait behind the audit log's writes.
Review (listing, export, verify) goes through the same service.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

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
STOP_SECONDS = 10.0
"""How long ``stop`` keeps retrying a write the database refuses before giving up on it."""
MAX_BATCH = 500
CALLS_PER_ENTRY = 500
"""Most call records in one chained entry: an entry is hashed as one JSON text while
holding the interpreter lock, so big ones would stall the event loop for milliseconds."""
REFUSAL_KEYS = 1000
"""Most distinct (tenant, model, version, client, reason) counts kept per flush; the
rest are counted under model "*" (model names come from the caller)."""


@dataclass(frozen=True, slots=True)
class _Write:
    """One transaction's worth of records, kept until the database has taken it."""

    events: list[AuditEvent]
    calls: dict[str, list[_CallsEntry]]
    """Per tenant, its ``inference.calls`` entries to be."""
    call_count: int
    counted: list[AuditEvent]

    @property
    def records(self) -> int:
        return len(self.events) + self.call_count + len(self.counted)


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


class RefusalKey(NamedTuple):
    """What refused calls are counted by."""

    tenant_id: str
    model: str
    version: str
    subject: str | None
    client_id: str | None
    reason: str


DENIAL_KEYS = 1000
"""Most distinct denial counts kept per action, tenant and flush; the rest are counted
under "*" (an unauthenticated caller chooses its address and what it sends, and must
not crowd out a tenant's own counts)."""


class DenialKey(NamedTuple):
    """What calls refused for their credentials are counted by."""

    action: str
    """``auth.failure`` (no valid token) or ``auth.denied`` (valid, lacking the scope)."""
    tenant_id: str | None
    subject: str | None
    client_id: str | None
    client_addr: str | None
    operation: str
    reason: str


class AuditRecorder:
    """Batches events into the audit log from the event loop.

    Inference calls are grouped per tenant into chained entries of at most
    ``CALLS_PER_ENTRY`` calls per flush (``inference.calls``, each call's
    request id and latency in its details, see ``calls_in``), so serving pays
    two list appends per call rather than a row and a hash.
    """

    def __init__(
        self, audit: AuditLog, *, max_queue: int = 10_000, max_calls: int = 100_000
    ) -> None:
        self._audit = audit
        self._queue: asyncio.Queue[AuditEvent] = asyncio.Queue(maxsize=max_queue)
        # Calls arrive at request rates: each goes straight into its entry's
        # columns (see _CallsEntry); a flush takes them whole.
        self._calls: dict[str, list[_CallsEntry]] = {}
        self._call_count = 0
        self._refusals: Counter[RefusalKey] = Counter()
        self._denials: Counter[DenialKey] = Counter()
        self._denial_keys: Counter[tuple[str, str | None]] = Counter()
        self._max_calls = max_calls
        self._room = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._unwritten: _Write | None = None
        """A write the database refused: the next flush sends it first."""

    async def submit(self, event: AuditEvent) -> None:
        """Queue ``event``; waits while the queue is full."""
        await self._queue.put(event)

    async def submit_call(self, call: CallRecord) -> None:
        """Queue one inference call's record; waits while the queue is full."""
        while self._call_count >= self._max_calls:
            self._room.clear()
            await self._room.wait()
        entries = self._calls.get(call.tenant_id)
        if entries is None:
            entries = self._calls[call.tenant_id] = [_CallsEntry()]
        elif entries[-1].count >= CALLS_PER_ENTRY:
            entries.append(_CallsEntry())
        entries[-1].add(call)
        self._call_count += 1

    def count_refusal(self, call: CallRecord, reason: str) -> None:
        """Count one call the tenant's own limit (``reason``) refused; no record of its own."""
        key = RefusalKey(
            call.tenant_id, call.model, call.version, call.subject, call.client_id, reason
        )
        if key not in self._refusals and len(self._refusals) >= REFUSAL_KEYS:
            key = key._replace(model="*", version="*")
        self._refusals[key] += 1

    def count_denial(self, key: DenialKey) -> None:
        """Count one call refused for its credentials; no record of its own."""
        if key not in self._denials:
            group = (key.action, key.tenant_id)
            if self._denial_keys[group] >= DENIAL_KEYS:
                key = DenialKey(key.action, key.tenant_id, "*", "*", "*", "*", "*")
            else:
                self._denial_keys[group] += 1
        self._denials[key] += 1

    def start(self) -> None:
        """Start flushing in the background."""
        self._task = asyncio.create_task(self._run())

    async def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Flush what is queued and stop; a database still refusing after ``timeout`` is logged."""
        # Not cancelled: a write running in its thread would commit anyway while
        # still counted as unwritten, and be written a second time below.
        self._stopping.set()
        if self._task is not None:
            await self._task
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._pending():
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - retried until the deadline, then reported
                if loop.time() >= deadline:
                    log.error(  # noqa: TRY400 - a trace would repeat the records' SQL
                        "audit records lost at shutdown: the database refused them",
                        records=self._pending(),
                        error=_reason(exc),
                    )
                    return
                await asyncio.sleep(min(FLUSH_SECONDS, timeout / 10))

    def _pending(self) -> int:
        """Records not yet in the database."""
        unwritten = self._unwritten.records if self._unwritten is not None else 0
        return (
            unwritten
            + self._queue.qsize()
            + self._call_count
            + len(self._refusals)
            + len(self._denials)
        )

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), FLUSH_SECONDS)
            if self._stopping.is_set():
                return
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - kept and retried by the next flush
                log.warning(
                    "audit flush failed; its records are kept and retried",
                    records=self._pending(),
                    error=_reason(exc),
                )

    async def flush(self) -> None:
        """Write what is queued now, after any write the database refused before.

        Raises what the database raised; the refused write is kept for the next call.
        """
        if self._unwritten is not None:
            await run_in_threadpool(self._write, self._unwritten)
            self._unwritten = None
        # Take only what was queued when the flush began: records arriving
        # while it writes wait for the next tick, so a busy server writes one
        # transaction a second rather than a stream of small ones.
        events = self._queue.qsize()
        calls, self._calls = self._calls, {}
        call_count, self._call_count = self._call_count, 0
        refusals, self._refusals = self._refusals, Counter()
        denials, self._denials = self._denials, Counter()
        self._denial_keys = Counter()
        self._room.set()
        while events > 0 or calls or refusals or denials:
            batch: list[AuditEvent] = []
            while len(batch) < min(events, MAX_BATCH):
                batch.append(self._queue.get_nowait())
            events -= len(batch)
            # Call entries become events in the thread, not on the event loop.
            counted = [*_refusal_events(refusals), *_denial_events(denials)]
            self._unwritten = _Write(batch, calls, call_count, counted)
            await run_in_threadpool(self._write, self._unwritten)
            self._unwritten = None
            calls, call_count, refusals, denials = {}, 0, Counter(), Counter()

    def _write(self, write: _Write) -> None:
        calls = [
            entry.event(tenant_id)
            for tenant_id, entries in write.calls.items()
            for entry in entries
        ]
        self._audit.record_many([*write.events, *calls, *write.counted])


def _reason(exc: BaseException) -> str:
    """What the database said, without the statement and its parameters (the records)."""
    original = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error
    said = str(original if original is not None else exc).strip().splitlines()
    return f"{type(exc).__name__}: {said[0] if said else ''}"


_GroupKey = tuple[str, str, str | None, str | None, str]
"""Model, version, subject, client id and outcome: what the calls of one group share."""


class _CallsEntry:
    """One ``inference.calls`` entry to be: up to ``CALLS_PER_ENTRY`` calls of a tenant.

    Calls that share model, version, caller and outcome form one group, which
    names those once and lists its calls' request ids and latencies (integer
    microseconds) side by side: each group's calls in arrival order, the
    groups in the order of their first call. A busy gateway records thousands
    of calls a second; an object per call, repeating its model and caller,
    cost several times this in building and in the JSON its hash covers, on
    a thread that shares the interpreter with the calls.
    """

    __slots__ = ("columns", "count")

    def __init__(self) -> None:
        self.count = 0
        self.columns: dict[_GroupKey, tuple[list[str | None], list[int]]] = {}

    def add(self, call: CallRecord) -> None:
        """Add ``call`` to its group."""
        key = (call.model, call.version, call.subject, call.client_id, call.outcome)
        column = self.columns.get(key)
        if column is None:
            column = self.columns[key] = ([], [])
        column[0].append(call.request_id)
        column[1].append(round(call.latency_ms * 1000))
        self.count += 1

    def event(self, tenant_id: str) -> AuditEvent:
        """The entry, for the audit log."""
        return AuditEvent(
            action="inference.calls",
            resource=f"calls:{self.count}",
            tenant_id=tenant_id,
            outcome="success" if all(key[4] == "success" for key in self.columns) else "failure",
            actor=Actor(subject="gateway"),
            details={
                "groups": [
                    {
                        "model": model,
                        "version": version,
                        "subject": subject,
                        "client_id": client_id,
                        "outcome": outcome,
                        "request_ids": request_ids,
                        "latency_us": latencies,
                    }
                    for (model, version, subject, client_id, outcome), (
                        request_ids,
                        latencies,
                    ) in self.columns.items()
                ]
            },
        )


def calls_in(details: dict[str, Any]) -> list[dict[str, Any]]:
    """The calls an ``inference.calls`` entry's ``details`` record, one dict each, group by group.

    Each has ``model``, ``version``, ``subject``, ``client_id``, ``outcome``,
    ``request_id`` and ``latency_us``. Entries written before calls were
    grouped list one object per call under ``calls`` (latency in
    milliseconds); those read the same way.
    """
    if "calls" in details:
        return [
            {
                **{k: v for k, v in call.items() if k != "latency_ms"},
                "latency_us": round(call["latency_ms"] * 1000),
            }
            for call in details["calls"]
        ]
    return [
        {
            **{k: v for k, v in group.items() if k not in ("request_ids", "latency_us")},
            "request_id": request_id,
            "latency_us": latency,
        }
        for group in details["groups"]
        for request_id, latency in zip(group["request_ids"], group["latency_us"], strict=True)
    ]


def _refusal_events(refusals: Counter[RefusalKey]) -> list[AuditEvent]:
    """One entry per tenant: how many calls its limits refused, per model, client and reason."""
    by_tenant: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for key, count in refusals.items():
        by_tenant[key.tenant_id].append(
            {
                "model": key.model,
                "version": key.version,
                "subject": key.subject,
                "client_id": key.client_id,
                "reason": key.reason,
                "count": count,
            }
        )
    return [
        AuditEvent(
            action="inference.refused",
            resource=f"refused:{sum(entry['count'] for entry in counts)}",
            tenant_id=tenant_id,
            outcome="failure",
            actor=Actor(subject="gateway"),
            details={"refused": counts},
        )
        for tenant_id, counts in by_tenant.items()
    ]


def _denial_events(denials: Counter[DenialKey]) -> list[AuditEvent]:
    """One entry per action and tenant: how many calls were refused, per operation and reason."""
    grouped: dict[tuple[str, str | None], list[dict[str, Any]]] = defaultdict(list)
    for key, count in denials.items():
        grouped[key.action, key.tenant_id].append(
            {
                "operation": key.operation,
                "reason": key.reason,
                "subject": key.subject,
                "client_id": key.client_id,
                "client_addr": key.client_addr,
                "count": count,
            }
        )
    return [
        AuditEvent(
            action=action,
            resource=f"attempts:{sum(entry['count'] for entry in counts)}",
            tenant_id=tenant_id,
            outcome="denied" if action == "auth.denied" else "failure",
            actor=Actor(subject="gateway"),
            details={"attempts": counts},
        )
        for (action, tenant_id), counts in grouped.items()
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
