"""Gateways pinned to CPUs (``SEALSERVE_GATEWAY_CPU_AFFINITY``), with the workers they start.

One server for the module: two gateways, two workers and a spare each. Each
gateway, every thread of it and all its workers run on the CPU of its index;
a worker or a replica that is killed comes back on the same CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from server.affinity import cpus_for
from tests.functional.conftest import token_for
from tests.servers import (
    SEALSERVE,
    ServerProcess,
    alive,
    argument,
    children,
    server_env,
    start_server,
    wait_for,
)

CPUS = sorted(os.sched_getaffinity(0))
"""What the server is started with: this process's CPUs."""
GATEWAYS = 2
WORKERS_EACH = 2 + 1
"""Each gateway's worker processes: two workers and a spare (``SEALSERVE_SPARE_WORKERS``)."""


def thread_cpus(pid: int) -> list[set[int]]:
    """The CPUs each thread of ``pid`` may run on (none if it is gone)."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for thread in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                found.append(os.sched_getaffinity(int(thread.name)))
    return found


def pinned_to(pid: int, cpus: set[int]) -> bool:
    """Whether ``pid`` runs and every thread of it may run on ``cpus`` only."""
    masks = thread_cpus(pid)
    return bool(masks) and all(mask == cpus for mask in masks)


def replica_of(server: ServerProcess) -> int | None:
    """The replica gateway's pid, if one runs."""
    found = children(server.process.pid, b"server.replicas")
    return found[0] if len(found) == 1 else None


def workers_of(gateway: int) -> list[int]:
    """The local workers ``gateway`` started."""
    return children(gateway, b"server.pool.worker")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """``serve`` with two pinned gateways and four workers, ready."""
    data_dir = tmp_path_factory.mktemp("pinned")
    env = server_env(
        data_dir,
        SEALSERVE_WORKERS="4",
        SEALSERVE_SPARE_WORKERS="1",
        SEALSERVE_GATEWAYS=str(GATEWAYS),
        SEALSERVE_GATEWAY_CPU_AFFINITY="true",
        SEALSERVE_SHUTDOWN_GRACE_SECONDS="2",
    )
    subprocess.run([SEALSERVE, "init", "--demo"], env=env, check=True, capture_output=True)  # noqa: S603
    running = start_server(env, data_dir / "server.log")
    try:
        replica = wait_for(lambda: replica_of(running), 30, "the replica")
        for gateway in (running.process.pid, replica):  # spares start after the workers
            wait_for(lambda g=gateway: len(workers_of(g)) == WORKERS_EACH, 30, "the spares")
        yield running
    finally:
        running.process.send_signal(signal.SIGTERM)
        try:
            running.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            running.process.kill()
            running.process.wait()


def layout(server: ServerProcess) -> list[tuple[set[int], int, list[int]]]:
    """(CPUs it should be on, gateway pid, its workers' pids) for both gateways.

    On this 2-CPU machine one CPU each; on a bigger one, half of them each.
    """
    replica = replica_of(server)
    assert replica is not None
    return [
        (cpus_for(CPUS, index, GATEWAYS), gateway, workers_of(gateway))
        for index, gateway in enumerate((server.process.pid, replica))
    ]


def call(server: ServerProcess, data_dir: Path) -> None:
    """Eight inference calls on new connections (both gateways answer some); all succeed."""
    demo = json.loads((data_dir / "demo-client.json").read_text())
    body = json.loads((data_dir / "demo-request.json").read_text())
    token = token_for(server.url, demo["client_id"], demo["client_secret"])
    for _ in range(8):
        reply = httpx.post(
            f"{server.url}/v2/models/digits/infer",
            json=body,
            headers={"Authorization": f"Bearer {token}", "Connection": "close"},
            timeout=10,
        )
        assert reply.status_code == 200, reply.text


def test_each_gateway_and_its_workers_run_on_the_cpus_of_its_index(
    server: ServerProcess,
) -> None:
    """Gateway i, every thread of it, and all its workers: on the i-th CPU only."""
    seen: list[set[int]] = []
    for cpus, gateway, workers in layout(server):
        assert len(workers) == WORKERS_EACH
        for pid in (gateway, *workers):
            assert pinned_to(pid, cpus), (cpus, pid, thread_cpus(pid))
        seen.append(cpus)
    if len(CPUS) > 1:  # the two gateways share no CPU
        assert not seen[0] & seen[1]
    # The replica knows every CPU the server has, to give children it should not pin.
    replica = replica_of(server)
    assert replica is not None
    assert argument(replica, "--cpus") == ",".join(map(str, CPUS))
    call(server, Path(server.log).parent)  # and they serve


def test_a_killed_worker_comes_back_on_its_gateways_cpu(server: ServerProcess) -> None:
    """Its replacements are started by the pinned gateway, so they inherit the CPU.

    (A spare takes its slot, and a new spare is started behind it.)
    """
    cpus, replica, workers = layout(server)[1]
    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    new = wait_for(
        lambda: [pid for pid in workers_of(replica) if pid not in workers],
        20,
        "a restarted worker",
    )[0]
    assert not alive(victim)
    wait_for(lambda: pinned_to(new, cpus), 10, "the restarted worker pinned")


def test_a_killed_replica_comes_back_on_its_cpu_with_its_workers(server: ServerProcess) -> None:
    """The primary starts the new replica with the CPU list; it pins itself and its workers."""
    cpus, old, _ = layout(server)[1]
    os.kill(old, signal.SIGKILL)
    new = wait_for(
        lambda: (pid := replica_of(server)) is not None and pid != old and pid,
        15,
        "a new replica",
    )
    workers = wait_for(lambda: len(w := workers_of(new)) == WORKERS_EACH and w, 30, "its workers")
    for pid in (new, *workers):
        wait_for(lambda pid=pid: pinned_to(pid, cpus), 30, f"{pid} pinned to {cpus}")
    call(server, Path(server.log).parent)
