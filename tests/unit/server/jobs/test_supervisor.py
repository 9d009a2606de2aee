"""JobSupervisor: runs jobs in their own processes, seals results, recovers and stops cleanly."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from datetime import timedelta

import numpy as np
from sqlalchemy import update

from compress import _tf
from server.jobs.layout import JobDirectory
from server.jobs.process import job_environment, resident_bytes
from storage import make_session_factory, unit_of_work
from storage.models import Job
from storage.types import utcnow


def _queue(intake, files, options=None):
    upload = intake.stage(files)
    return asyncio.run(
        intake.service.submit(
            intake.principal,
            "digits",
            upload,
            files={part: name for part, (name, _) in files.items()},
            options=options,
        )
    )


async def _until(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached")


def _run_supervised(intake, until, timeout=90.0):
    async def scenario():
        await intake.supervisor.start()
        try:
            return await _until(until, timeout)
        finally:
            await intake.supervisor.stop()

    return asyncio.run(scenario())


def test_a_tflite_job_is_sealed_ready_with_its_report(intake, demo_model) -> None:
    """The job process measures the model; the supervisor seals it and removes its directory."""
    files = {
        "model": ("m.tflite", demo_model),
        "evaluation": ("e.npz", intake.evaluation.read_bytes()),
    }
    job = _queue(intake, files, options='{"max_accuracy_drop": 0.5}')
    tenant = intake.principal.tenant_id
    done = _run_supervised(intake, lambda: (j := intake.store.get(tenant, job.id)).finished and j)
    assert (done.state, done.version, done.error, done.progress) == ("ready", 1, None, 1.0)
    version = intake.registry.resolve(tenant, "digits", 1)
    assert version.id == done.version_id
    assert version.state == "ready"
    assert version.report["passed"] is True
    assert version.report["result"]["accuracy"] > 0.9
    assert version.signature["inputs"][0]["name"] == "input"
    assert intake.registry.open_version(tenant, version.id) == demo_model
    assert not (intake.staging / job.id).exists()
    actions = [e["action"] for e in intake.registry.audit.query(tenant_id=tenant, limit=20)]
    assert {"model.job.start", "model.job.finish", "model.upload"} <= set(actions)


def test_a_refused_upload_fails_its_job_with_the_reason(intake, demo_model) -> None:
    """A data file the model cannot take: failed job, the reason, no version."""
    bad = intake.evaluation.parent / "wrong.npz"
    np.savez(bad, x=np.zeros((4, 3), np.float32), y=np.zeros(4, np.int64))
    job = _queue(
        intake, {"model": ("m.tflite", demo_model), "evaluation": ("e.npz", bad.read_bytes())}
    )
    tenant = intake.principal.tenant_id
    done = _run_supervised(intake, lambda: (j := intake.store.get(tenant, job.id)).finished and j)
    assert done.state == "failed"
    assert done.error.startswith("the evaluation file's x has rows of shape (3,)")
    assert done.version is None
    assert intake.registry.list_models(tenant) == []


def test_a_job_past_its_time_limit_is_killed_and_failed(make_intake, demo_model) -> None:
    """The process group is killed at the limit; the job says why."""
    intake = make_intake(jobs_timeout_seconds=0.01)
    job = _queue(intake, {"model": ("m.tflite", demo_model)})
    tenant = intake.principal.tenant_id
    done = _run_supervised(intake, lambda: (j := intake.store.get(tenant, job.id)).finished and j)
    assert done.state == "failed"
    assert done.error == "the job ran longer than the limit of 0.01 seconds"
    assert not (intake.staging / job.id).exists()


def test_a_job_process_gets_every_cpu_back_from_a_pinned_gateway(
    make_intake, demo_model, monkeypatch
) -> None:
    """Each job process is released from its gateway's CPU as soon as it starts."""
    released = []
    monkeypatch.setattr("server.jobs.process.affinity.release", released.append)
    intake = make_intake(jobs_timeout_seconds=0.01)
    job = _queue(intake, {"model": ("m.tflite", demo_model)})
    tenant = intake.principal.tenant_id
    _run_supervised(intake, lambda: intake.store.get(tenant, job.id).finished)
    assert len(released) == 1
    assert isinstance(released[0], int)
    assert released[0] > 0


def test_stopping_requeues_a_running_job_and_keeps_its_inputs(intake, tmp_path) -> None:
    """A graceful stop kills the job process; the job waits in the queue with its files."""
    keras = _tf.keras()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.save(tmp_path / "small.keras")  # a Keras job imports TensorFlow: seconds to stop it in
    job = _queue(intake, {"model": ("m.keras", (tmp_path / "small.keras").read_bytes())})
    tenant = intake.principal.tenant_id
    running = _run_supervised(intake, lambda: intake.store.get(tenant, job.id).state == "running")
    assert running
    again = intake.store.get(tenant, job.id)
    assert again.state == "queued"
    assert "interrupted: the server stopped; queued again" in again.log
    assert (intake.staging / job.id / "input" / "model.keras").is_file()
    assert not (intake.staging / job.id / "output" / "model.tflite").exists()


def test_start_fails_stale_jobs_and_removes_abandoned_staging(intake, engine, demo_model) -> None:
    """Jobs whose gateway died are failed; directories no job owns are removed once old."""
    job = _queue(intake, {"model": ("m.tflite", demo_model)})
    intake.store.claim(site=intake.supervisor.site)
    with unit_of_work(make_session_factory(engine), write=True) as session:
        session.execute(
            update(Job).where(Job.id == job.id).values(heartbeat_at=utcnow() - timedelta(hours=1))
        )
    abandoned = JobDirectory.of(intake.staging, "6f1c1e2a-0000-4000-8000-000000000001")
    abandoned.create()
    (abandoned.input / "model.keras").write_bytes(b"left over")
    old = time.time() - 2 * 3600
    os.utime(abandoned.root, (old, old))
    fresh = JobDirectory.of(intake.staging, "6f1c1e2a-0000-4000-8000-000000000002")
    fresh.create()  # an upload still streaming: no job row yet, but young
    asyncio.run(intake.supervisor.start())
    asyncio.run(intake.supervisor.stop())
    failed = intake.store.get(intake.principal.tenant_id, job.id)
    assert failed.state == "failed"
    assert "interrupted" in failed.error
    assert sorted(p.name for p in intake.staging.iterdir()) == [fresh.job_id]


def test_the_job_process_environment_holds_no_secret(intake, monkeypatch) -> None:
    """Nothing from SEALSERVE_* (master key, database URL) reaches the job process."""
    monkeypatch.setenv("SEALSERVE_MASTER_KEY", "c2VjcmV0")
    monkeypatch.setenv("SEALSERVE_DATABASE_URL", "postgresql://user:pw@db/x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nope")
    directory = JobDirectory.of(intake.staging, "6f1c1e2a-0000-4000-8000-000000000003")
    env = job_environment(directory, threads=2)
    assert not [name for name in env if name.startswith("SEALSERVE_") or "SECRET" in name]
    assert env["HOME"] == env["TMPDIR"] == str(directory.home)
    assert env["TF_NUM_INTRAOP_THREADS"] == "2"


def test_the_job_process_never_imports_from_its_own_directory(intake, monkeypatch) -> None:
    """Relative or empty PYTHONPATH entries (the job's working directory) are left out."""
    directory = JobDirectory.of(intake.staging, "6f1c1e2a-0000-4000-8000-000000000004")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["", ".", "/opt/lib", "lib", "/srv/x"]))
    assert job_environment(directory, threads=0)["PYTHONPATH"] == os.pathsep.join(
        ["/opt/lib", "/srv/x"]
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["", "."]))
    assert "PYTHONPATH" not in job_environment(directory, threads=0)


def test_a_job_over_its_memory_limit_is_killed_and_failed(make_intake, tmp_path) -> None:
    """Past ``jobs_memory_mb`` resident, the process group is killed; the job says why."""
    intake = make_intake(jobs_memory_mb=200)  # importing TensorFlow alone takes over 500 MiB
    keras = _tf.keras()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.save(tmp_path / "small.keras")
    job = _queue(intake, {"model": ("m.keras", (tmp_path / "small.keras").read_bytes())})
    tenant = intake.principal.tenant_id
    done = _run_supervised(intake, lambda: (j := intake.store.get(tenant, job.id)).finished and j)
    assert done.state == "failed"
    assert done.error == "the job used more memory than its limit of 200 MiB"
    assert done.version is None
    assert not (intake.staging / job.id).exists()


def test_resident_bytes_reads_a_live_process_and_none_for_a_gone_one() -> None:
    """The memory reading the limit rests on: this process's, then a reaped child's."""
    mine = resident_bytes(os.getpid())
    assert mine is not None
    assert 10 * 1024 * 1024 < mine < 64 * 1024 * 1024 * 1024
    child = subprocess.Popen(["true"])  # noqa: S607 - coreutils
    child.wait()
    assert resident_bytes(child.pid) is None
