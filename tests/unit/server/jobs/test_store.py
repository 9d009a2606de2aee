"""JobStore: tenant-scoped reads, atomic claims, bounded logs, recovery and audit entries."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from sqlalchemy import update

from storage import NotFound, make_session_factory, unit_of_work
from storage.audit import Actor
from storage.jobs import LOG_LIMIT, JobStore, append_log
from storage.models import Job
from storage.types import new_id, utcnow


@pytest.fixture
def store(engine, registry) -> JobStore:
    """A job store on the test database, auditing into the registry's log."""
    return JobStore(session_factory=make_session_factory(engine), audit=registry.audit)


@pytest.fixture
def tenants(registry) -> tuple[str, str]:
    """Two tenants' ids."""
    return registry.create_tenant("alpha").id, registry.create_tenant("beta").id


def _submit(store: JobStore, tenant_id: str, *, site: str = "here", name: str = "m") -> str:
    job_id = new_id()
    store.create(
        job_id=job_id,
        tenant_id=tenant_id,
        model_name=name,
        source_kind="keras",
        inputs=["model", "evaluation"],
        options={"quantization": "int8"},
        site=site,
        actor=Actor(subject="admin", client_id="c1", request_id="r1"),
    )
    return job_id


def _actions(registry, tenant_id: str) -> list[str]:
    return [e["action"] for e in reversed(registry.audit.query(tenant_id=tenant_id, limit=100))]


def test_a_job_runs_from_queue_to_ready_with_audit_entries(store, registry, tenants) -> None:
    """submit, claim, progress, finish: each step visible and the audited ones recorded."""
    alpha, _ = tenants
    job_id = _submit(store, alpha)
    queued = store.get(alpha, job_id)
    assert (queued.state, queued.progress, queued.finished) == ("queued", 0.0, False)
    claimed = store.claim(site="here")
    assert claimed is not None
    assert (claimed.id, claimed.state) == (job_id, "running")
    assert claimed.started_at is not None
    store.progress(job_id, progress=0.5, message="pruning")
    store.progress(job_id, progress=0.4, message="pruning")  # never goes back
    running = store.get(alpha, job_id)
    assert (running.progress, running.message) == (0.5, "pruning")
    assert running.log.count("pruning") == 1
    done = store.finish(job_id, state="ready", version_id=None, version=3)
    assert done is not None
    assert (done.state, done.progress, done.version, done.error) == ("ready", 1.0, 3, None)
    assert done.finished
    assert "sealed as version 3 (ready)" in done.log
    assert store.finish(job_id, state="failed") is None  # already over
    assert _actions(registry, alpha) == [
        "tenant.create",
        "model.job.submit",
        "model.job.start",
        "model.job.finish",
    ]
    entry = registry.audit.query(tenant_id=alpha, action="model.job.finish", limit=1)[0]
    assert entry["actor_subject"] == "admin"
    assert entry["details"]["version"] == 3


def test_another_tenants_job_is_as_missing_as_a_made_up_one(store, tenants) -> None:
    """The same NotFound text for a foreign id and a random id."""
    alpha, beta = tenants
    job_id = _submit(store, alpha)
    with pytest.raises(NotFound) as foreign:
        store.get(beta, job_id)
    made_up = new_id()
    with pytest.raises(NotFound) as missing:
        store.get(beta, made_up)
    assert foreign.value.message.replace(job_id, "X") == missing.value.message.replace(made_up, "X")
    assert [job.id for job in store.recent(alpha)] == [job_id]
    assert store.recent(beta) == []


def test_claims_take_the_oldest_job_of_their_own_site_once(store, tenants) -> None:
    """A job is claimed once, in order, and only by the site holding its inputs."""
    alpha, beta = tenants
    first = _submit(store, alpha)
    second = _submit(store, beta)
    elsewhere = _submit(store, alpha, site="other-host")
    assert store.claim(site="here").id == first
    assert store.claim(site="here").id == second
    assert store.claim(site="here") is None
    assert store.claim(site="here", job_id=elsewhere) is None
    assert store.active_ids(site="here") == {first, second}
    assert store.claim(site="other-host", job_id=elsewhere).id == elsewhere


def test_stale_running_jobs_fail_and_requeued_ones_run_again(store, registry, engine, tenants):
    """A job whose heartbeat stopped is failed; a requeued one goes back to the queue."""
    alpha, _ = tenants
    stale = _submit(store, alpha)
    fresh = _submit(store, alpha)
    store.claim(site="here")
    store.claim(site="here")
    with unit_of_work(make_session_factory(engine), write=True) as session:
        session.execute(
            update(Job).where(Job.id == stale).values(heartbeat_at=utcnow() - timedelta(minutes=5))
        )
    failed = store.fail_stale(older_than=timedelta(seconds=30))
    assert [job.id for job in failed] == [stale]
    record = store.get(alpha, stale)
    assert record.state == "failed"
    assert "interrupted" in record.error
    store.requeue(fresh, reason="server stopping")
    again = store.get(alpha, fresh)
    assert (again.state, again.started_at) == ("queued", None)
    assert "server stopping; queued again" in again.log
    assert store.claim(site="here").id == fresh
    assert "model.job.requeue" in _actions(registry, alpha)


def test_the_log_keeps_its_newest_whole_lines() -> None:
    """Past the limit the oldest lines go, and the log still starts at a line."""
    log = ""
    for number in range(2000):
        log = append_log(log, f"line {number}")
    assert len(log) <= LOG_LIMIT
    assert log.endswith("line 1999\n")
    assert log.split(" ", 1)[0].endswith("Z")
    assert "line 0\n" not in log


def test_jobs_go_with_their_tenant(store, registry, tenants) -> None:
    """Deleting a tenant deletes its jobs (their rows cascade)."""
    alpha, _ = tenants
    job_id = _submit(store, alpha)
    registry.delete_tenant("alpha")
    with pytest.raises(NotFound):
        store.get(alpha, job_id)


class _RefusedError(Exception):
    """Raised by a ``then`` hook to roll the sealing transaction back."""


def _seal_with_job(store: JobStore, registry, tenant_id: str, job_id: str, *, fail_after=False):
    """Seal a small version whose job ends in the same transaction (as the supervisor does)."""

    def finish_job(session, version) -> None:
        done = store.finish_in(
            session, job_id, state="ready", version_id=version.id, version=version.version
        )
        if done is None or fail_after:
            raise _RefusedError

    return registry.put_version(
        tenant_id=tenant_id,
        model_name="m",
        source=io.BytesIO(b"model bytes" * 100),
        format="tflite",
        actor=Actor(subject="admin"),
        then=finish_job,
    )


def test_a_version_and_the_end_of_its_job_commit_together(store, registry, tenants) -> None:
    """The job is ready with its version, and both are in the audit log, or neither is."""
    alpha, _ = tenants
    job_id = _submit(store, alpha)
    store.claim(site="here")
    version = _seal_with_job(store, registry, alpha, job_id)
    done = store.get(alpha, job_id)
    assert (done.state, done.version_id, done.version) == ("ready", version.id, 1)
    assert {"model.upload", "model.job.finish"} <= set(_actions(registry, alpha))

    # A failure after the job's row was ended rolls back the row and the version.
    second = _submit(store, alpha)
    store.claim(site="here")
    with pytest.raises(_RefusedError):
        _seal_with_job(store, registry, alpha, second, fail_after=True)
    assert store.get(alpha, second).state == "running"
    assert [v.version for v in registry.get_model(alpha, "m").versions] == [1]


def test_a_job_failed_elsewhere_before_sealing_seals_nothing(store, registry, engine, tenants):
    """Another gateway failed the job as stale: its result is not kept as a version."""
    alpha, _ = tenants
    job_id = _submit(store, alpha)
    store.claim(site="here")
    with unit_of_work(make_session_factory(engine), write=True) as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(minutes=5))
        )
    assert [job.id for job in store.fail_stale(older_than=timedelta(seconds=30))] == [job_id]
    with pytest.raises(_RefusedError):
        _seal_with_job(store, registry, alpha, job_id)
    assert registry.list_models(alpha) == []
    assert "model.upload" not in _actions(registry, alpha)
    assert store.get(alpha, job_id).state == "failed"
