"""Two gateway processes on the same ports (``sealserve serve --gateways 2``).

Both serve REST and gRPC, metrics add up over them, a killed replica comes
back, SIGTERM stops everything, and a stranger cannot share the ports.

One server for the module (two gateways, one worker and one spare each); the
tests run in file order and the last one shuts it down.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from protos import inference_pb2, inference_pb2_grpc
from tests.digits import digits_test_split, in_process_probabilities
from tests.functional.conftest import token_for
from tests.servers import (
    SEALSERVE,
    ServerProcess,
    alive,
    argument,
    children,
    free_port,
    server_env,
    start_server,
    wait_for,
)

if TYPE_CHECKING:
    from collections.abc import Callable


GRACE = 2.0
SPARES = 1
"""Spare workers each gateway keeps (``SEALSERVE_SPARE_WORKERS``): they must go down with it."""
INFER_ROUTE = "/v2/models/{model}/infer"


@dataclass
class Gateways:
    """The running server and what the tests need to call it and look inside it."""

    server: ServerProcess
    env: dict[str, str]
    token: str
    body: dict
    shared_dir: Path
    client: httpx.Client = field(default_factory=httpx.Client)
    seen_prefixes: set[str] = field(default_factory=set)

    @property
    def pid(self) -> int:
        """The primary gateway (the process ``sealserve serve`` is)."""
        return self.server.process.pid

    def replica(self) -> int | None:
        """The replica gateway's pid, if one runs."""
        found = children(self.pid, b"server.replicas")
        return found[0] if len(found) == 1 else None

    def infer(self, *, timeout: float = 10.0) -> str:
        """One REST inference on a new connection; the answering process's request-id prefix."""
        reply = self.client.post(
            f"{self.server.url}/v2/models/digits/infer",
            json=self.body,
            # Closed after the answer: the next call opens a new connection.
            headers={"Authorization": f"Bearer {self.token}", "Connection": "close"},
            timeout=timeout,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["outputs"][0]["shape"] == [1, 10]
        # Generated request ids are a per-process random prefix (12 hex) and a counter.
        return reply.headers["x-request-id"][:12]

    def grpc_infer(self, *, timeout: float = 10.0) -> np.ndarray:
        """One gRPC ModelInfer on a new channel with its own connection; the probabilities."""
        x, _ = digits_test_split()
        request = inference_pb2.ModelInferRequest(model_name="digits")
        request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
        request.raw_input_contents.append(x[:1].astype("<f4").tobytes())
        options = [("grpc.use_local_subchannel_pool", 1)]  # no connection shared between channels
        with grpc.insecure_channel(f"127.0.0.1:{self.server.grpc_port}", options) as channel:
            answer = inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                request, metadata=[("authorization", f"Bearer {self.token}")], timeout=timeout
            )
        return np.frombuffer(answer.raw_output_contents[0], dtype="<f4").reshape(1, 10)

    def wait_for_spares(self) -> None:
        """Until both gateways report their spares started (they start after the workers)."""

        def ready() -> bool:
            samples = self.scrape()
            return all(
                samples.get(("sealserve_spare_workers", frozenset({("gateway", g)}))) == SPARES
                for g in ("0", "1")
            )

        wait_for(ready, 30, "the spare workers", interval=0.2)

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """``/metrics`` on a new connection (any gateway may answer), as sample -> value."""
        text = self.client.get(
            f"{self.server.url}/metrics", headers={"Connection": "close"}, timeout=10
        ).text
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def inference_counts_by_pid(self) -> dict[int, float]:
        """Per gateway process: ``sealserve_inference_requests_total`` from its own counter file."""
        counts = {}
        for path in self.shared_dir.glob("counter_*.db"):
            with tempfile.TemporaryDirectory(prefix="ss-") as alone:
                shutil.copy(path, alone)
                registry = CollectorRegistry()
                MultiProcessCollector(registry, path=alone)
                counts[int(path.stem.split("_")[1])] = sum(
                    sample.value
                    for family in registry.collect()
                    for sample in family.samples
                    if sample.name == "sealserve_inference_requests_total"
                )
        return counts


def open_connections(gateways: Gateways) -> list[float]:
    """``sealserve_http_connections`` of both gateways, smallest first."""
    samples = gateways.scrape()
    return sorted(
        samples[("sealserve_http_connections", frozenset({("gateway", index)}))]
        for index in ("0", "1")
    )


def infer_count(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> float:
    """Successful REST inference calls on the v2 route, over every gateway process."""
    labels = frozenset({("route", INFER_ROUTE), ("method", "POST"), ("status", "200")})
    return samples.get(("sealserve_http_requests_total", labels), 0.0)


def workers_up(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> set[str]:
    """Worker labels reported live."""
    return {
        dict(labels)["worker"]
        for (name, labels), value in samples.items()
        if name == "sealserve_worker_up" and value == 1.0
    }


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory):
    """``init --demo`` and ``serve`` with two gateways and two workers, ready (so both listen).

    Started from a directory holding a ``server`` package of its own, which the
    processes the server starts must not import in place of ours.
    """
    data_dir = tmp_path_factory.mktemp("gateways")
    decoy = tmp_path_factory.mktemp("decoy")
    (decoy / "server").mkdir()
    (decoy / "server" / "__init__.py").write_text("raise SystemExit('the decoy was imported')\n")
    env = server_env(
        data_dir,
        SEALSERVE_WORKERS="2",
        SEALSERVE_SPARE_WORKERS=str(SPARES),
        SEALSERVE_GATEWAYS="2",
        SEALSERVE_SHUTDOWN_GRACE_SECONDS=str(GRACE),
        SEALSERVE_LOG_LEVEL="INFO",
    )
    subprocess.run([SEALSERVE, "init", "--demo"], env=env, check=True, capture_output=True)  # noqa: S603
    running = start_server(env, data_dir / "server.log", cwd=decoy)
    try:
        replica = wait_for(
            lambda: children(running.process.pid, b"server.replicas"), 30, "the replica"
        )[0]
        demo = json.loads((data_dir / "demo-client.json").read_text())
        state = Gateways(
            server=running,
            env=env,
            token=token_for(running.url, demo["client_id"], demo["client_secret"]),
            body=json.loads((data_dir / "demo-request.json").read_text()),
            shared_dir=Path(argument(replica, "--shared-dir")),
        )
        # Ready (which start_server waited for) means every gateway listens: the
        # first test's calls must reach both without waiting any longer.
        assert "gateway process listening" in running.output()
        yield state
        state.client.close()
    finally:
        if running.process.poll() is None:
            running.process.send_signal(signal.SIGTERM)
            try:
                running.process.wait(timeout=GRACE + 15)
            except subprocess.TimeoutExpired:
                running.process.kill()
                running.process.wait()


def test_both_gateways_serve_and_metrics_add_up_over_processes(gateways: Gateways) -> None:
    """200 calls on new connections reach both processes; every scrape counts all 200."""
    before = infer_count(gateways.scrape())
    answered_by = [gateways.infer() for _ in range(200)]
    prefixes = set(answered_by)
    gateways.seen_prefixes |= prefixes
    # Two processes, each with its own id prefix: the connections were spread over both.
    assert len(prefixes) == 2, prefixes
    assert min(answered_by.count(prefix) for prefix in prefixes) >= 20
    counts = [infer_count(gateways.scrape()) - before for _ in range(8)]
    assert counts == [200.0] * 8  # every process's counts, whichever process scraped

    def pools_reported() -> bool:
        scrapes = [gateways.scrape() for _ in range(6)]
        return all(
            {"0.0", "1.0"} <= workers_up(samples)
            # Calls carried to workers, summed over both gateways' pools.
            and samples.get(("sealserve_worker_rpc_calls_count", frozenset()), 0.0) >= 200
            # How busy each gateway's loop is (what makes gRPC calls wait for company).
            and all(
                0.0 <= samples.get(busy, -1.0) <= 1.0
                for busy in (
                    ("sealserve_gateway_loop_busy", frozenset({("gateway", "0")})),
                    ("sealserve_gateway_loop_busy", frozenset({("gateway", "1")})),
                )
            )
            for samples in scrapes
        )

    # Pool snapshots are published once a second: allow a few.
    wait_for(pools_reported, 15, "both pools in every scrape", interval=0.5)
    # Each gateway process counted inference calls of its own.
    by_pid = gateways.inference_counts_by_pid()
    assert by_pid.keys() >= {gateways.pid, gateways.replica()}
    assert all(by_pid[pid] >= 20 for pid in (gateways.pid, gateways.replica()))


def test_grpc_on_the_shared_port_is_served_by_both_gateways(gateways: Gateways) -> None:
    """ModelInfer on 40 new connections: right answers, from both processes."""
    before = gateways.inference_counts_by_pid()
    expected = in_process_probabilities()[:1]
    for _ in range(40):
        np.testing.assert_allclose(gateways.grpc_infer(), expected, rtol=1e-6)
    after = gateways.inference_counts_by_pid()
    served = {pid: after[pid] - before.get(pid, 0.0) for pid in (gateways.pid, gateways.replica())}
    assert sum(served.values()) == 40, served
    assert all(count > 0 for count in served.values()), served


def test_keep_alive_connections_are_split_evenly_between_the_gateways(
    gateways: Gateways,
) -> None:
    """16 connections opened one after another: 8 served by each gateway, all the way.

    The kernel's hash alone splits 16 connections 8/8 about one time in five;
    a gateway holding more passes each new one to the other as it accepts it.
    """
    headers = {"Authorization": f"Bearer {gateways.token}"}
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(httpx.Client(http1=True)) for _ in range(16)]

        def call(client: httpx.Client) -> str:
            reply = client.post(
                f"{gateways.server.url}/v2/models/digits/infer",
                json=gateways.body,
                headers=headers,
                timeout=10,
            )
            assert reply.status_code == 200, reply.text
            assert reply.json()["outputs"][0]["shape"] == [1, 10]
            return reply.headers["x-request-id"][:12]

        first = [call(client) for client in clients]  # each opens its connection
        assert sorted(first.count(prefix) for prefix in set(first)) == [8, 8], first
        # Every connection, handed over or not, keeps serving from the same process.
        for _ in range(2):
            assert [call(client) for client in clients] == first
        assert open_connections(gateways) == [8.0, 9.0]  # the scrape's own is the 17th
        # WebSocket upgrades leave uvicorn's HTTP protocol; they must leave the count too.
        for _ in range(4):
            with socket.create_connection(
                ("127.0.0.1", gateways.server.rest_port), timeout=10
            ) as raw:
                raw.sendall(
                    b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\n"
                    b"upgrade: websocket\r\nsec-websocket-version: 13\r\n"
                    b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                )
                assert raw.recv(1024).startswith(b"HTTP/1.1 ")
    gateways.seen_prefixes |= set(first)
    # Closed connections are uncounted: only each scrape's own stays open while it runs.
    wait_for(lambda: open_connections(gateways) == [0.0, 1.0], 10, "connections uncounted")


@dataclass(frozen=True)
class Outcome:
    """One call made under load."""

    started: float
    seconds: float
    prefix: str | None
    """The answering process's request-id prefix (REST only)."""
    error: str


@dataclass
class Load:
    """Calls made on new connections from a few threads, each recorded with its start time."""

    call: Callable[[], object]
    threads: int = 3
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        """Begin calling."""
        for _ in range(self.threads):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._workers.append(thread)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            prefix, error = None, ""
            try:
                result = self.call()
                prefix = result if isinstance(result, str) else None
            except Exception as exc:  # noqa: BLE001 - recorded and judged by the test
                error = repr(exc)
            self.outcomes.append(Outcome(started, time.monotonic() - started, prefix, error))

    def stop(self) -> None:
        """Stop calling and wait for the calls in flight."""
        self._stop.set()
        for thread in self._workers:
            thread.join(30)

    def prefixes(self, after: float = 0.0) -> set[str]:
        """Processes that answered calls started after ``after``."""
        return {o.prefix for o in list(self.outcomes) if o.prefix and o.started > after}

    def since(self, moment: float) -> list[Outcome]:
        """The calls started after ``moment``."""
        return [o for o in self.outcomes if o.started > moment]


def test_a_killed_replica_is_replaced_and_calls_keep_succeeding(gateways: Gateways) -> None:
    """SIGKILL the replica: a new one runs within 10 s and serves; fresh calls never fail.

    Nor do they wait: a restarted replica joins the shared ports (REST and
    gRPC) only once its workers run, so no new connection sits in the queue
    of a process that cannot answer yet.
    """
    old = gateways.replica()
    assert old is not None
    gateways.wait_for_spares()
    orphans = children(old, b"server.pool.worker")
    assert len(orphans) == 1 + SPARES  # its worker and its spare
    orphan_sockets = {Path(argument(pid, "--socket")).parent for pid in orphans}
    rest = Load(lambda: gateways.infer(timeout=15))
    remote = Load(lambda: gateways.grpc_infer(timeout=15), threads=1)
    rest.start()
    remote.start()
    try:
        # Know both processes' prefixes before the kill, so the new replica's is recognised.
        wait_for(
            lambda: len(gateways.seen_prefixes | rest.prefixes()) >= 2,
            10,
            "calls answered by both gateways",
        )
        known = gateways.seen_prefixes | rest.prefixes()
        killed_at = time.monotonic()
        os.kill(old, signal.SIGKILL)  # the replica of the server this module started
        new = wait_for(
            lambda: (pid := gateways.replica()) is not None and pid != old and pid,
            10,
            "a new replica process",
        )
        wait_for(
            lambda: rest.prefixes(after=killed_at) - known,
            45,
            "a call answered by the new replica",
            interval=0.2,
        )
        time.sleep(1.0)
    finally:
        rest.stop()
        remote.stop()
    gateways.seen_prefixes |= rest.prefixes(after=killed_at)
    assert not alive(old)
    assert not any(alive(pid) for pid in orphans)  # its workers died with it, spare included
    # The killed replica could not remove its socket directory: it lies in the
    # primary's shared directory, which goes when the primary stops.
    (orphan_dir,) = orphan_sockets
    assert orphan_dir.is_relative_to(gateways.shared_dir)
    settled = killed_at + 1.0
    for load in (rest, remote):
        assert load.since(settled), "no calls were made after the kill"
        assert [o.error for o in load.since(settled) if o.error] == []
        slowest = max(o.seconds for o in load.since(settled))
        assert slowest < 3.0, f"a call waited {slowest:.1f} s (normal: well under 0.5 s)"
    # Counts of the killed process are not lost: its counter file stays in the shared dir.
    assert old in gateways.inference_counts_by_pid()
    assert new in gateways.inference_counts_by_pid()


def test_a_second_server_cannot_take_the_same_ports(gateways: Gateways) -> None:
    """An independent single-gateway server on either port fails with "cannot start"."""
    replica = gateways.replica()
    for rest_port, grpc_port, reason in (
        (free_port(), gateways.server.grpc_port, "cannot listen for gRPC"),
        (gateways.server.rest_port, free_port(), "Address already in use"),
    ):
        env = {
            **gateways.env,
            "SEALSERVE_GATEWAYS": "1",
            "SEALSERVE_WORKERS": "1",
            "SEALSERVE_REST_PORT": str(rest_port),
            "SEALSERVE_GRPC_PORT": str(grpc_port),
        }
        second = subprocess.run(  # noqa: S603 - our own console script
            [SEALSERVE, "serve"], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert second.returncode == 1, second.stdout + second.stderr
        assert "Traceback" not in second.stderr, second.stderr
        last = " ".join(second.stderr.strip().splitlines()[-2:])
        assert "error: cannot start:" in last, second.stderr
        assert reason in last, second.stderr
    # The server that owns the ports is unaffected: both processes still answer.
    assert gateways.replica() == replica
    assert len({gateways.infer() for _ in range(40)}) == 2


def test_sigterm_stops_every_process_and_removes_the_shared_dir(gateways: Gateways) -> None:
    """SIGTERM to the primary: it, the replica and all workers exit; the metrics dir is gone."""
    replica = gateways.replica()
    assert replica is not None
    gateways.wait_for_spares()
    workers = children(gateways.pid, b"server.pool.worker") + children(
        replica, b"server.pool.worker"
    )
    assert len(workers) == 2 * (1 + SPARES)
    socket_dirs = {Path(argument(pid, "--socket")).parent for pid in workers}
    everyone = [gateways.pid, replica, *workers]
    assert gateways.shared_dir.is_dir()
    began = time.monotonic()
    gateways.server.process.send_signal(signal.SIGTERM)
    code = gateways.server.process.wait(timeout=GRACE + 15)
    wait_for(lambda: not any(alive(pid) for pid in everyone), 5, "every process gone")
    took = time.monotonic() - began
    assert code == 0, gateways.server.output()[-3000:]
    assert took < GRACE + 8
    assert not gateways.shared_dir.exists()
    assert not any(directory.exists() for directory in socket_dirs)
