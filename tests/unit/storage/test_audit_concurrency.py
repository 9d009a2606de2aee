"""Writers in several processes keep one unbroken audit chain, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select, text

from storage.models import AuditEntry

WRITERS = 8
ACTIONS = 1000
ROOT = Path(__file__).resolve().parents[3]


def test_eight_processes_thousand_actions_each(registry, engine, database_url, master_keys) -> None:
    """8 processes x 1,000 admin actions: exactly one entry per action, in one valid chain."""
    tenants = [registry.create_tenant(f"writer-{n}") for n in range(WRITERS)]
    before = registry.audit.query(tenant_id=None, all_tenants=True, limit=1)[0]["seq"]
    writers = [
        subprocess.Popen(  # noqa: S603 - our own test helper
            [
                sys.executable,
                "-m",
                "tests.audit_writers",
                database_url,
                master_keys.primary.key.hex(),
                tenant.name,
                str(ACTIONS),
            ],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tenant in tenants
    ]
    for writer in writers:
        _, errors = writer.communicate(timeout=600)
        assert writer.returncode == 0, errors
    with engine.connect() as conn:
        total = conn.execute(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.seq > before)
        ).scalar()
        per_tenant = dict(
            conn.execute(
                select(AuditEntry.tenant_id, func.count())
                .where(AuditEntry.action.in_(["tenant.suspend", "tenant.resume"]))
                .group_by(AuditEntry.tenant_id)
            ).all()
        )
        seqs = conn.execute(text("SELECT min(seq), max(seq), count(*) FROM audit_log")).one()
    assert total == WRITERS * ACTIONS
    assert per_tenant == {tenant.id: ACTIONS for tenant in tenants}
    assert seqs[1] - seqs[0] + 1 == seqs[2]  # no gap, no duplicate
    result = registry.audit.verify()
    assert result.ok, result
