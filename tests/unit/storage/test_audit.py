"""The audit chain on SQLite and PostgreSQL: every kind of tampering is found and named."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from storage import make_session_factory
from storage.audit import Actor, AuditEvent, AuditLog, entry_hash, entry_record
from storage.models import AuditEntry

ENTRIES = 30


@pytest.fixture
def audit(engine, master_keys) -> AuditLog:
    """An audit log with a checkpoint every 10 entries, holding 30 entries over two tenants."""
    log = AuditLog(
        session_factory=make_session_factory(engine), master_keys=master_keys, checkpoint_every=10
    )
    for n in range(1, ENTRIES + 1):
        log.record(
            AuditEvent(
                action="model.label",
                resource=f"model:m{n}",
                tenant_id="tenant-a" if n % 2 else "tenant-b",
                actor=Actor(subject="cl_admin", client_id="cl_admin", request_id=f"r{n}"),
                details={"n": n},
            )
        )
    return log


def _tamper(engine, *statements: tuple[str, dict]) -> None:
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(
                "SET LOCAL session_replication_role = replica"
            )  # as a superuser could
        for statement, params in statements:
            conn.execute(text(statement), params)


def _row(engine, seq: int) -> dict:
    """An entry's hashed fields as stored (JSON values), plus its hash."""
    with Session(engine) as session:
        entry = session.get(AuditEntry, seq)
        return {**entry_record(entry), "hash": entry.hash}


def _rehash(row: dict) -> str:
    return entry_hash(row)


def _sql_values(row: dict) -> dict:
    return {**row, "ts": datetime.fromisoformat(row["ts"]), "details": json.dumps(row["details"])}


def test_intact_log_verifies(audit) -> None:
    """An untouched log verifies, checkpoints included."""
    result = audit.verify()
    assert (result.ok, result.entries) == (True, ENTRIES)


def test_edited_field(audit, engine) -> None:
    """A changed field is named as an edited entry."""
    _tamper(engine, ("UPDATE audit_log SET resource = 'model:other' WHERE seq = 12", {}))
    result = audit.verify()
    assert (result.ok, result.first_bad_seq) == (False, 12)
    assert "edited" in result.reason


def test_moved_to_another_tenant(audit, engine) -> None:
    """An entry re-assigned to another tenant no longer matches its hash."""
    _tamper(engine, ("UPDATE audit_log SET tenant_id = 'tenant-b' WHERE seq = 7", {}))
    result = audit.verify()
    assert (result.ok, result.first_bad_seq) == (False, 7)


def test_deleted_entry(audit, engine) -> None:
    """A deleted entry leaves a gap that names it."""
    _tamper(engine, ("DELETE FROM audit_log WHERE seq = 15", {}))
    result = audit.verify()
    assert (result.ok, result.first_bad_seq) == (False, 15)
    assert "missing" in result.reason


def test_inserted_entry(audit, engine) -> None:
    """An entry slipped in (later ones renumbered, its own hash made valid) breaks the next link."""
    fake = {**_row(engine, 11), "seq": 12, "resource": "model:forged"}
    fake["prev_hash"] = _row(engine, 11)["hash"]
    fake["hash"] = _rehash(fake)
    statements = [
        (f"UPDATE audit_log SET seq = seq + 1000 WHERE seq = {s}", {})
        for s in range(ENTRIES, 11, -1)
    ]
    statements += [
        (f"UPDATE audit_log SET seq = {s + 1} WHERE seq = {s + 1000}", {})
        for s in range(ENTRIES, 11, -1)
    ]
    columns = ", ".join(fake)
    statements.append(
        (
            f"INSERT INTO audit_log ({columns}) VALUES ({', '.join(':' + c for c in fake)})",
            _sql_values(fake),
        )
    )
    _tamper(engine, *statements)
    result = audit.verify()
    assert not result.ok
    assert result.first_bad_seq in (12, 13)


def test_swapped_entries(audit, engine) -> None:
    """Two entries swapped in place are found at the first of them."""
    _tamper(
        engine,
        ("UPDATE audit_log SET seq = -1 WHERE seq = 20", {}),
        ("UPDATE audit_log SET seq = 20 WHERE seq = 21", {}),
        ("UPDATE audit_log SET seq = 21 WHERE seq = -1", {}),
    )
    result = audit.verify()
    assert (result.ok, result.first_bad_seq) == (False, 20)


def test_edited_and_rehashed(audit, engine) -> None:
    """Recomputing an edited entry's hash still breaks the link of the entry after it."""
    row = {**_row(engine, 14), "outcome": "failure"}
    _tamper(
        engine,
        ("UPDATE audit_log SET outcome = 'failure', hash = :h WHERE seq = 14", {"h": _rehash(row)}),
    )
    result = audit.verify()
    assert (result.ok, result.first_bad_seq) == (False, 15)
    assert "link" in result.reason


def test_truncated_tail_against_export(audit, engine) -> None:
    """A cut-off tail (head row fixed up too) is caught against an exported checkpoint."""
    audit.checkpoint_now()
    exported = list(audit.export())
    last_kept = _row(engine, 24)
    _tamper(
        engine,
        ("DELETE FROM audit_checkpoints WHERE seq > 24", {}),
        ("DELETE FROM audit_log WHERE seq > 24", {}),
        (
            "UPDATE audit_head SET seq = 24, hash = :h, checkpoint_seq = 20",
            {"h": last_kept["hash"]},
        ),
    )
    assert audit.verify().ok  # without the export the cut is invisible...
    result = audit.verify(exported=exported)
    assert (result.ok, result.first_bad_seq) == (False, 25)  # ...with it, it is named
    assert "truncated" in result.reason


def test_replaced_checkpoint(audit, engine) -> None:
    """A checkpoint re-signed with another key (or with a changed hash) is refused."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    forged = Ed25519PrivateKey.generate().sign(b"sealserve-audit-checkpoint:20:" + b"0" * 64)
    _tamper(
        engine,
        (
            "UPDATE audit_checkpoints SET hash = :h, signature = :s WHERE seq = 20",
            {"h": "0" * 64, "s": forged},
        ),
    )
    result = audit.verify()
    assert not result.ok
    assert "checkpoint" in result.reason


def test_plain_update_is_refused_or_caught(audit, engine) -> None:
    """PostgreSQL refuses UPDATE and DELETE outright; on SQLite verify catches them."""
    statements = (
        "UPDATE audit_log SET outcome = 'x' WHERE seq = 1",
        "DELETE FROM audit_log WHERE seq = 2",
    )
    if engine.dialect.name == "postgresql":
        for statement in statements:
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
                conn.execute(text(statement))
        assert audit.verify().ok
    else:
        with engine.begin() as conn:
            conn.execute(text(statements[0]))
        assert (audit.verify().ok, audit.verify().first_bad_seq) == (False, 1)


def test_entries_are_filtered_and_paged(audit) -> None:
    """Queries filter by tenant and action and page backwards with the cursor."""
    page = audit.query(tenant_id="tenant-a", limit=5)
    assert [e["seq"] for e in page] == [29, 27, 25, 23, 21]
    older = audit.query(tenant_id="tenant-a", limit=5, before_seq=21)
    assert [e["seq"] for e in older] == [19, 17, 15, 13, 11]
    assert audit.query(tenant_id=None, all_tenants=True, limit=1)[0]["seq"] == ENTRIES
    assert audit.query(tenant_id="tenant-b", action="nothing", limit=5) == []


def test_action_and_record_commit_together(registry, engine) -> None:
    """An admin action that fails leaves neither its change nor its record."""
    registry.create_tenant("acme")
    before = registry.audit.query(tenant_id=None, all_tenants=True)
    with pytest.raises(Exception):  # noqa: B017, PT011 - any failure must roll both back
        registry.create_tenant("acme")
    after = registry.audit.query(tenant_id=None, all_tenants=True)
    assert len(after) == len(before)
    assert before[0]["action"] == "tenant.create"
    assert registry.audit.verify().ok
    digest = hashlib.sha256(b"x").hexdigest()
    assert digest not in json.dumps(after)


def test_a_batch_extends_the_chain_and_signs_checkpoints_inside_it(audit, engine) -> None:
    """``record_many`` writes a batch under one lock: the chain and the checkpoints are as if one by one."""
    batch = [
        AuditEvent(
            action="inference.calls",
            resource="model:digits",
            tenant_id="tenant-a",
            actor=Actor(subject="cl_app", client_id="cl_app"),
            details={"calls": [{"request_id": f"b{n}", "latency_ms": 0.5 + n}]},
        )
        for n in range(25)
    ]
    audit.record_many(batch)
    assert audit.verify().ok
    with Session(engine) as session:
        seqs = session.scalars(text("SELECT seq FROM audit_checkpoints ORDER BY seq")).all()
        last = session.scalar(text("SELECT max(seq) FROM audit_log"))
    assert last == ENTRIES + len(batch)
    # One checkpoint every 10 entries, two of them signed inside the batch.
    assert seqs == [10, 20, 30, 40, 50]
    first, final = _row(engine, ENTRIES + 1), _row(engine, last)
    assert (first["details"]["calls"][0]["request_id"], first["prev_hash"]) == (
        "b0",
        _row(engine, ENTRIES)["hash"],
    )
    assert final["details"]["calls"][0]["request_id"] == "b24"


@pytest.mark.parametrize(
    "details",
    [
        {"calls": [{"latency_ms": 0.123, "request_id": "r1"}], "ratio": 1e16, "name": "é\u2028"},
        {"score": float("nan"), "delta": float("-inf")},  # orjson would write null
        {"shape": (1, 64)},  # a tuple
        {"count": 2**70},  # past 64 bits
    ],
    ids=["calls", "not-finite", "tuple", "big-int"],
)
def test_details_read_back_as_written_and_verify(audit, engine, details) -> None:
    """Whichever encoder stores an entry's details, they read back equal and the chain holds."""
    event = AuditEvent(
        action="model.compressed",
        resource="model:m1",
        tenant_id="tenant-a",
        actor=Actor(subject="cl_admin"),
        details=details,
    )
    if engine.dialect.name == "postgresql" and "score" in details:
        # PostgreSQL's json type has no NaN: the entry is refused whole, the chain untouched.
        with pytest.raises(DBAPIError):
            audit.record(event)
        assert audit.verify().ok
        return
    seq = audit.record(event)
    stored = _row(engine, seq)["details"]
    assert json.dumps(stored, sort_keys=True) == json.dumps(details, sort_keys=True)
    assert audit.verify().ok
