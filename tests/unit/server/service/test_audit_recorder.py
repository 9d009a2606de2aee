"""The audit recorder turns inference calls into chained entries of bounded size."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from structlog.testing import capture_logs

from server.service.audit import (
    CALLS_PER_ENTRY,
    DENIAL_KEYS,
    REFUSAL_KEYS,
    AuditRecorder,
    CallRecord,
    DenialKey,
    calls_in,
)
from storage import make_session_factory
from storage.audit import AuditLog

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy import Engine


def _call(tenant: str, n: int) -> CallRecord:
    return CallRecord(
        tenant_id=tenant,
        model="digits",
        version="1",
        subject="cl_app",
        client_id="cl_app",
        outcome="success" if n % 7 else "invalid_request",
        latency_ms=0.5 + n / 1000,
        request_id=f"{tenant}-{n}",
    )


def _written(tenant: str, n: int) -> dict:
    """What ``calls_in`` reads back for ``_call(tenant, n)``."""
    call = _call(tenant, n)
    return {
        "model": call.model,
        "version": call.version,
        "subject": call.subject,
        "client_id": call.client_id,
        "outcome": call.outcome,
        "request_id": call.request_id,
        "latency_us": round(call.latency_ms * 1000),
    }


def test_calls_become_bounded_entries_per_tenant_in_order(engine, master_keys) -> None:
    """1,234 calls of one tenant and 10 of another: 3 + 1 entries, each call once, in group order."""
    log = AuditLog(session_factory=make_session_factory(engine), master_keys=master_keys)
    before = log.query(tenant_id=None, all_tenants=True, action="inference.calls", limit=1000)

    async def scenario() -> None:
        recorder = AuditRecorder(log)
        for n in range(1234):
            await recorder.submit_call(_call("tenant-a", n))
        for n in range(10):
            await recorder.submit_call(_call("tenant-b", n))
        await recorder.stop()  # flushes what is queued

    asyncio.run(scenario())
    entries = [
        entry
        for entry in log.query(
            tenant_id=None, all_tenants=True, action="inference.calls", limit=1000
        )
        if entry not in before
    ]
    by_tenant: dict[str, list[dict]] = {}
    for entry in sorted(entries, key=lambda e: e["seq"]):
        calls = calls_in(entry["details"])
        assert 0 < len(calls) <= CALLS_PER_ENTRY
        assert entry["resource"] == f"calls:{len(calls)}"
        expected = "success" if all(c["outcome"] == "success" for c in calls) else "failure"
        assert entry["outcome"] == expected
        by_tenant.setdefault(entry["tenant_id"], []).extend(calls)
    for tenant, count in (("tenant-a", 1234), ("tenant-b", 10)):
        calls = by_tenant[tenant]
        assert sorted(c["request_id"] for c in calls) == sorted(
            f"{tenant}-{n}" for n in range(count)
        )
        assert all(c == _written(tenant, int(c["request_id"].rsplit("-", 1)[1])) for c in calls)
        for outcome in ("success", "invalid_request"):  # each group in arrival order
            numbers = [
                int(c["request_id"].rsplit("-", 1)[1]) for c in calls if c["outcome"] == outcome
            ]
            assert numbers == sorted(numbers)
    assert len([e for e in entries if e["tenant_id"] == "tenant-a"]) == 3
    assert log.verify().ok


def test_calls_that_share_model_caller_and_outcome_form_one_group(engine, master_keys) -> None:
    """An entry lists each group's fields once and its calls' ids and latencies side by side."""
    log = AuditLog(session_factory=make_session_factory(engine), master_keys=master_keys)

    async def scenario() -> None:
        recorder = AuditRecorder(log)
        for n in range(1, 8):  # 1-6 succeed, 7 is refused for its content
            await recorder.submit_call(_call("tenant-e", n))
        await recorder.submit_call(replace(_call("tenant-e", 8), client_id="cl_other"))
        await recorder.stop()

    asyncio.run(scenario())
    (entry,) = log.query(tenant_id="tenant-e", action="inference.calls", limit=10)
    shared = {"model": "digits", "version": "1", "subject": "cl_app"}
    assert entry["details"] == {
        "groups": [
            {
                **shared,
                "client_id": "cl_app",
                "outcome": "success",
                "request_ids": [f"tenant-e-{n}" for n in range(1, 7)],
                "latency_us": [500 + n for n in range(1, 7)],
            },
            {
                **shared,
                "client_id": "cl_app",
                "outcome": "invalid_request",
                "request_ids": ["tenant-e-7"],
                "latency_us": [507],
            },
            {
                **shared,
                "client_id": "cl_other",
                "outcome": "success",
                "request_ids": ["tenant-e-8"],
                "latency_us": [508],
            },
        ]
    }
    assert (entry["resource"], entry["outcome"]) == ("calls:8", "failure")
    assert log.verify().ok


def test_calls_in_reads_entries_written_before_calls_were_grouped() -> None:
    """An older entry's list of call objects reads like a grouped one."""
    old = {"calls": [{**_written("t", 3), "latency_ms": 0.503}]}
    del old["calls"][0]["latency_us"]
    assert calls_in(old) == [_written("t", 3)]


def test_a_full_queue_makes_callers_wait_until_a_flush(engine, master_keys) -> None:
    """Past max_calls a caller waits (nothing is dropped) and goes on once a flush takes the queue."""
    log = AuditLog(session_factory=make_session_factory(engine), master_keys=master_keys)

    async def scenario() -> tuple[bool, bool]:
        recorder = AuditRecorder(log, max_calls=5)
        for n in range(5):
            await recorder.submit_call(_call("tenant-c", n))
        sixth = asyncio.ensure_future(recorder.submit_call(_call("tenant-c", 5)))
        await asyncio.sleep(0.05)
        waited = not sixth.done()
        await recorder.flush()
        await asyncio.wait_for(sixth, 1)
        await recorder.stop()
        return waited, sixth.done()

    waited, done = asyncio.run(scenario())
    assert waited and done
    calls = [
        call
        for entry in log.query(tenant_id="tenant-c", action="inference.calls", limit=100)
        for call in calls_in(entry["details"])
    ]
    assert sorted(c["request_id"] for c in calls) == [f"tenant-c-{n}" for n in range(6)]


def test_refusals_by_a_tenants_own_limits_are_counted_not_kept_one_by_one(
    engine, master_keys
) -> None:
    """3,000 refused calls of one tenant make one entry of counts; admitted calls keep records."""
    log = AuditLog(session_factory=make_session_factory(engine), master_keys=master_keys)

    async def scenario() -> None:
        recorder = AuditRecorder(log)
        for n in range(3000):
            refused = replace(_call("tenant-d", n), outcome="overloaded")
            if n % 3 == 0:
                refused = replace(refused, client_id="cl_other", subject="cl_other")
            recorder.count_refusal(refused, "rate" if n % 2 else "concurrency")
        await recorder.submit_call(_call("tenant-d", 1))
        await recorder.stop()

    asyncio.run(scenario())
    (entry,) = log.query(tenant_id="tenant-d", action="inference.refused", limit=10)
    counts = {
        (row["client_id"], row["reason"]): row["count"] for row in entry["details"]["refused"]
    }
    assert counts == {
        ("cl_app", "rate"): 1000,
        ("cl_app", "concurrency"): 1000,
        ("cl_other", "rate"): 500,
        ("cl_other", "concurrency"): 500,
    }
    assert entry["resource"] == "refused:3000"
    assert entry["outcome"] == "failure"
    (calls,) = log.query(tenant_id="tenant-d", action="inference.calls", limit=10)
    assert [c["request_id"] for c in calls_in(calls["details"])] == ["tenant-d-1"]
    assert log.verify().ok


def test_refusal_counts_stay_bounded_whatever_model_names_a_caller_invents(
    engine, master_keys
) -> None:
    """Past REFUSAL_KEYS distinct keys, further refusals are counted under model '*'."""
    log = AuditLog(session_factory=make_session_factory(engine), master_keys=master_keys)

    async def scenario() -> None:
        recorder = AuditRecorder(log)
        for n in range(REFUSAL_KEYS + 50):
            recorder.count_refusal(replace(_call("tenant-e", n), model=f"m{n}"), "rate")
        await recorder.stop()

    asyncio.run(scenario())
    (entry,) = log.query(tenant_id="tenant-e", action="inference.refused", limit=10)
    rows = entry["details"]["refused"]
    assert len(rows) == REFUSAL_KEYS + 1  # the rest share one "*" row
    assert sum(row["count"] for row in rows) == REFUSAL_KEYS + 50
    assert sum(row["count"] for row in rows if row["model"] == "*") == 50


def test_calls_refused_for_their_credentials_are_counted_per_tenant_and_bounded(
    engine, master_keys
) -> None:
    """Bad tokens (no tenant) and missing scopes (their tenant) become one entry each per flush.

    A caller without a valid token picks its address and what it sends, so
    past DENIAL_KEYS distinct keys the rest share one "*" row.
    """
    log = AuditLog(session_factory=make_session_factory(engine), master_keys=master_keys)

    async def scenario() -> None:
        recorder = AuditRecorder(log)
        for n in range(DENIAL_KEYS + 500):
            recorder.count_denial(
                DenialKey(
                    "auth.failure",
                    None,
                    None,
                    None,
                    f"10.0.{n // 256}.{n % 256}",
                    "POST /v2/models/{model}/infer",
                    "invalid token",
                )
            )
        for _ in range(3):
            recorder.count_denial(
                DenialKey(
                    "auth.denied",
                    "tenant-f",
                    "cl_app",
                    "cl_app",
                    "127.0.0.1",
                    "GET /admin/v1/audit",
                    "missing scope audit:read",
                )
            )
        await recorder.stop()

    asyncio.run(scenario())
    (failure,) = log.query(tenant_id=None, action="auth.failure", all_tenants=True, limit=10)
    rows = failure["details"]["attempts"]
    assert failure["tenant_id"] is None
    assert failure["resource"] == f"attempts:{DENIAL_KEYS + 500}"
    assert len(rows) == DENIAL_KEYS + 1
    assert [row["count"] for row in rows if row["client_addr"] == "*"] == [500]
    (denied,) = log.query(tenant_id="tenant-f", action="auth.denied", limit=10)
    assert denied["outcome"] == "denied"
    assert denied["details"]["attempts"] == [
        {
            "operation": "GET /admin/v1/audit",
            "reason": "missing scope audit:read",
            "subject": "cl_app",
            "client_id": "cl_app",
            "client_addr": "127.0.0.1",
            "count": 3,
        }
    ]
    assert log.verify().ok


@contextlib.contextmanager
def _log_table_away(engine: Engine) -> Iterator[None]:
    """The audit log's table renamed away: every write to the log fails, as in an outage."""
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE audit_log RENAME TO audit_log_away")
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE audit_log_away RENAME TO audit_log")


def test_a_write_the_database_refuses_is_kept_and_written_first_later(engine, master_keys) -> None:
    """Nothing is lost to a failed flush: its records go in by the next one, before newer ones."""
    log = AuditLog(session_factory=make_session_factory(engine), master_keys=master_keys)
    refused: list[BaseException] = []

    async def scenario() -> None:
        recorder = AuditRecorder(log)
        for n in range(5):
            await recorder.submit_call(_call("tenant-g", n))
        recorder.count_refusal(_call("tenant-g", 99), "rate")
        with _log_table_away(engine):
            for _ in range(2):  # refused twice: still one write, kept whole
                try:
                    await recorder.flush()
                except Exception as exc:  # noqa: BLE001 - the database's own error
                    refused.append(exc)
            for n in range(5, 8):
                await recorder.submit_call(_call("tenant-g", n))
        await recorder.flush()
        await recorder.stop()

    asyncio.run(scenario())
    assert len(refused) == 2
    entries = sorted(
        log.query(tenant_id="tenant-g", action="inference.calls", limit=10), key=lambda e: e["seq"]
    )
    assert [[c["request_id"] for c in calls_in(e["details"])] for e in entries] == [
        [f"tenant-g-{n}" for n in range(5)],
        [f"tenant-g-{n}" for n in range(5, 8)],
    ]
    (counted,) = log.query(tenant_id="tenant-g", action="inference.refused", limit=10)
    assert counted["resource"] == "refused:1"
    assert log.verify().ok


def test_stop_gives_up_on_a_database_that_keeps_refusing_and_says_so(engine, master_keys) -> None:
    """Shutdown does not hang on a dead database; the records it could not write are logged."""
    log = AuditLog(session_factory=make_session_factory(engine), master_keys=master_keys)

    async def scenario() -> float:
        recorder = AuditRecorder(log)
        for n in range(3):
            await recorder.submit_call(_call("tenant-h", n))
        started = time.monotonic()
        await recorder.stop(timeout=0.3)
        return time.monotonic() - started

    with _log_table_away(engine), capture_logs() as logs:
        took = asyncio.run(scenario())
    assert took < 5
    (lost,) = [entry for entry in logs if entry["log_level"] == "error"]
    assert lost["event"] == "audit records lost at shutdown: the database refused them"
    assert lost["records"] == 3
    assert lost["error"].startswith("OperationalError: ") or lost["error"].startswith(
        "ProgrammingError: "
    )
    assert "INSERT" not in lost["error"]  # the driver's reason, not the records' statement


def test_stop_during_a_flush_writes_each_record_once(engine, master_keys) -> None:
    """Stopping while a flush waits on the database lets it finish; nothing is written twice."""
    log = AuditLog(session_factory=make_session_factory(engine), master_keys=master_keys)
    log.checkpoint_now()  # the chain's head row exists, to be locked below

    async def scenario() -> None:
        recorder = AuditRecorder(log)
        recorder.start()
        for n in range(3):
            await recorder.submit_call(_call("tenant-i", n))
        with engine.connect() as holder:
            # Hold the log's write lock so the background flush blocks in its thread.
            holder.begin()
            holder.exec_driver_sql("UPDATE audit_head SET seq = seq WHERE id = 1")
            await asyncio.sleep(1.4)  # the flush tick came and waits for the lock
            stopping = asyncio.ensure_future(recorder.stop())
            await asyncio.sleep(0.2)
            holder.rollback()
        await stopping

    asyncio.run(scenario())
    (entry,) = log.query(tenant_id="tenant-i", action="inference.calls", limit=10)
    assert [c["request_id"] for c in calls_in(entry["details"])] == [
        f"tenant-i-{n}" for n in range(3)
    ]
    assert log.verify().ok
