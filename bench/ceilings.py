"""The HTTP and gRPC ceilings the worker-pool issue set its targets against.

    .venv/bin/python bench/ceilings.py             # 8 s per point

Issue 7 measured, on "this machine", a bare ASGI app on uvicorn (httptools,
uvloop) that parses the V2 body with orjson and answers JSON, with no model
and no authentication, and a bare ``grpc.aio`` unary handler; its targets
for sealserve stand on those figures. Machines differ from day to day by 2x,
so this script measures both ceilings here, with the load generators and
settings ``bench/load.py`` uses (``wrk`` with 2 threads and 64 connections;
``h2load`` with 16 connections of 4 streams), to tell how today's machine
compares with the issue's before reading ``bench/load.py``'s figures.

It also measures the floor under the issue's latency target (p99 under 3 ms
at c=8): the same bare app at 8 connections, in two processes and in four
(as many as ``bench/load.py``'s server runs: two gateways and two
workers). The bare app answers in microseconds, so what its p99 shows is
what the kernel's scheduler costs when that many busy processes and the
load generator share two cores.

Then what carrying one request of the issue's compute-heavy CNN (602 KB of
input) costs the same bare servers in CPU, each in one process on one CPU
with the load generator on another, and so the largest share of the CNN's
in-process ceiling any server on that transport could reach here, if it
spent nothing else per call (``transport_floor``).

Last, what one process waking another costs here: two processes passing a
byte back and forth over pipes, once on two different CPUs and once both
on the same CPU. A call through sealserve wakes a gateway, its worker, the
gateway again and the client; where waking an idle CPU is slow (a virtual
machine whose idle CPUs halt), those wake-ups set much of the p99 at low
concurrency, and the per-call CPU of paced traffic.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from load import (
    CNN_FILE,
    MODELS,
    Body,
    Point,
    ceiling,
    grpc_frame,
    v2_binary,
    v2_json,
    wrk,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

ISSUE = {"asgi": (32_000, 48_000), "grpc": (6_000, 6_500)}
"""The issue's figures for one and two processes (req/s)."""
LATENCY_PROCESSES = (2, 4)
"""Bare app processes for the latency floor: one per core, and one per server process."""
LATENCY_ROUNDS = 3
CNN_BATCH = 11
"""The batch size the server's workers run the CNN at under c=64 (sessions 14-17: 9-11)."""
WAKE_ROUND_TRIPS = 20_000

BARE_ASGI = """
import numpy as np
import orjson


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    split = dict(scope["headers"]).get(b"inference-header-content-length")
    if split is None:
        request = orjson.loads(body)
        x = np.asarray(request["inputs"][0]["data"], dtype=np.float32)
    else:  # the binary tensor extension: a JSON header, then the raw tensor
        request = orjson.loads(body[: int(split)])
        x = np.frombuffer(body, dtype=np.float32, offset=int(split))
    data = x.ravel()[:10].tolist()
    answer = orjson.dumps(
        {"outputs": [{"name": "out", "datatype": "FP32", "shape": [1, 10], "data": data}]}
    )
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})
"""


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 30) -> None:
    """Return once something accepts connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.1)
        else:
            return
    msg = f"nothing listens on port {port} after {timeout:g} s"
    raise SystemExit(msg)


def bare_asgi(
    processes: int,
    seconds: float,
    *,
    connections: int = 64,
    rounds: int = 1,
    body: Body | None = None,
    cost: list[float] | None = None,
    load_cost: list[float] | None = None,
) -> list[Point]:
    """``rounds`` wrk runs at ``connections`` against the bare app in ``processes`` workers.

    ``body`` defaults to the digits model's JSON request. With ``cost``, the
    one server process runs on one CPU and ``wrk`` on another, and the
    server's CPU milliseconds per request of each round are appended to it
    (``wrk``'s own to ``load_cost``, when given).
    """
    port = free_port()
    body = body or v2_json("digits", np.full((1, 64), 0.5, np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bare_app.py").write_text(BARE_ASGI)
        server = subprocess.Popen(  # noqa: S603 - fixed arguments
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bare_app:app",
                "--app-dir",
                tmp,
                "--port",
                str(port),
                "--workers",
                str(processes),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ]
        )
        try:
            wait_listening(port)
            time.sleep(1)  # every worker process up, not only the first
            url = f"http://127.0.0.1:{port}"
            points = []
            for _ in range(rounds):
                with _apart(server.pid, cost) as spent:
                    point = wrk(url, body, "-", connections=connections, seconds=seconds)
                points.append(point)
                if cost is not None:
                    cost.append(spent.server / (point.rate * seconds) * 1000)
                if load_cost is not None:
                    load_cost.append(spent.load / (point.rate * seconds) * 1000)
        finally:
            server.terminate()
            server.wait(30)
    failed = sum(point.failed for point in points)
    if failed:
        msg = f"{failed} failed requests against the bare ASGI app"
        raise SystemExit(msg)
    return points


def _cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, every thread) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Spent:
    """CPU seconds used inside an ``_apart`` block (filled in when it ends)."""

    server: float = 0.0
    """By the server process, every thread."""
    load: float = 0.0
    """By the load generators run (and waited for) inside the block."""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def _apart(pid: int, measured: object) -> Iterator[Spent]:
    """``pid`` on the first CPU, load generators started inside on the last.

    Only when ``measured`` is not None (otherwise nothing moves). Yields the
    CPU seconds ``pid`` and the load generators used inside the block, once
    it is over.
    """
    spent = Spent()
    if measured is None:
        yield spent
        return
    mine = os.sched_getaffinity(0)
    cpus = sorted(mine)
    os.sched_setaffinity(pid, {cpus[0]})
    os.sched_setaffinity(0, {cpus[-1]})  # the load generator inherits it
    server, load = _cpu_seconds(pid), _children_cpu()
    try:
        yield spent
    finally:
        spent.server = _cpu_seconds(pid) - server
        spent.load = _children_cpu() - load
        os.sched_setaffinity(0, mine)


def bare_asgi_rate(processes: int, seconds: float) -> float:
    """Requests/s of the bare ASGI app in ``processes`` uvicorn workers at c=64."""
    return bare_asgi(processes, seconds)[0].rate


async def _grpc_server(port: int) -> None:
    import grpc  # noqa: PLC0415 - only the server process needs it

    async def infer(request: bytes, context: object) -> bytes:
        del request, context
        return b""

    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)},
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def bare_grpc(
    processes: int,
    seconds: float,
    *,
    message: bytes | None = None,
    cost: list[float] | None = None,
    load_cost: list[float] | None = None,
) -> float:
    """Calls/s of a bare ``grpc.aio`` unary handler in ``processes`` processes on one port.

    ``message`` (a gRPC frame) defaults to the digits model's request. With
    ``cost`` (one process), as in ``bare_asgi``: the server's CPU
    milliseconds per call are appended to it, and ``h2load``'s to ``load_cost``.
    """
    port = free_port()
    servers = [
        subprocess.Popen([sys.executable, __file__, "--grpc-server", str(port)])  # noqa: S603
        for _ in range(processes)
    ]
    try:
        wait_listening(port)
        time.sleep(1)
        with tempfile.TemporaryDirectory() as tmp, _apart(servers[0].pid, cost) as spent:
            frame = Path(tmp) / "frame"
            frame.write_bytes(message or grpc_frame("digits", np.full((1, 64), 0.5, np.float32)))
            threads = "1" if cost is not None else "2"
            result = subprocess.run(  # noqa: S603 - fixed arguments
                [  # noqa: S607 - h2load from the system
                    "h2load",
                    *("-D", f"{seconds:g}", "-c", "16", "-m", "4", "-t", threads),
                    *("-d", str(frame), "-H", "content-type: application/grpc"),
                    *("-H", "te: trailers"),
                    f"http://127.0.0.1:{port}/inference.GRPCInferenceService/ModelInfer",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
    finally:
        for server in servers:
            server.terminate()
            server.wait(30)
    rate = re.search(r"finished in [0-9.]+m?s, ([0-9.]+) req/s", result.stdout)
    failed = re.search(r"requests: .* (\d+) failed, (\d+) errored", result.stdout)
    if rate is None or failed is None or int(failed.group(1)) or int(failed.group(2)):
        msg = f"h2load against the bare gRPC server did not finish cleanly:\n{result.stdout}"
        raise SystemExit(msg)
    calls = float(rate.group(1)) * seconds
    if cost is not None:
        cost.append(spent.server / calls * 1000)
    if load_cost is not None:
        load_cost.append(spent.load / calls * 1000)
    return float(rate.group(1))


def transport_floor(seconds: float) -> None:
    """What carrying one CNN request costs the bare servers, and what that leaves the CNN.

    The CNN target is throughput >= 90% of the in-process ceiling, which is
    every CPU running the interpreter. A server spends ``c`` CPU seconds per
    call besides the model; with the ceiling at ``R`` rows/s on ``n`` CPUs,
    each row costs ``n / R`` CPU seconds in the interpreter, so the server
    reaches at most ``1 / (1 + c * R / n)`` of the ceiling, if nothing else
    cost anything (no auth, no hop to a worker). The bare gRPC handler does
    not even decode the message; the bare REST app parses the JSON header
    and views the tensor, as any server must.

    ``bench/load.py`` runs its load generator on the same CPUs, so its CPU
    per call counts too: the last column is what is left per call, for
    everything a real server does beyond the bare transport, at 90%
    (``c`` at most ``n / (9 R)`` in all).
    """
    row = MODELS["cnn"][1]
    image = np.random.default_rng(0).random((1, *row), dtype=np.float32)
    costs: dict[str, tuple[list[float], list[float]]] = {
        "bare uvicorn, REST (wrk)": ([], []),
        "bare grpc.aio (h2load)": ([], []),
    }
    rest, grpc = costs.values()
    for _ in range(2):
        bare_asgi(1, seconds, body=v2_binary("cnn", image), cost=rest[0], load_cost=rest[1])
        bare_grpc(1, seconds, message=grpc_frame("cnn", image), cost=grpc[0], load_cost=grpc[1])
    print(
        f"\nCPU per CNN request ({image.nbytes:,} bytes of input), one bare server process on "
        f"one CPU, the load generator on another: REST (uvicorn, binary tensors) "
        f"{_ms_range(rest[0])} ms, wrk {_ms_range(rest[1])} ms; gRPC (grpc.aio) "
        f"{_ms_range(grpc[0])} ms, h2load {_ms_range(grpc[1])} ms"
    )
    if not CNN_FILE.exists():
        print("(no cached CNN: run bench/load.py once to build it, for the share below)")
        return
    processes = len(os.sched_getaffinity(0))
    rate = ceiling(CNN_FILE.read_bytes(), (CNN_BATCH, *row), min(seconds, 5), processes)
    budget = processes / (9 * rate) * 1000
    print(
        f"the CNN's in-process ceiling at batch {CNN_BATCH}: {rate:.0f} rows/s, so 90% of it "
        f"leaves {budget:.2f} ms of CPU per call for everything besides the model"
    )
    print(
        "\n| transport | server CPU ms per CNN request | load generator CPU ms "
        "| most of the ceiling a server can reach | and with the load generator "
        "| left per call at 90% |"
    )
    print("|---|---|---|---|---|---|")
    for name, (server, load) in costs.items():
        alone = [1 / (1 + cost / 1000 * rate / processes) for cost in server]
        both = [
            1 / (1 + (cost + extra) / 1000 * rate / processes)
            for cost, extra in zip(server, load, strict=True)
        ]
        left = [budget - cost - extra for cost, extra in zip(server, load, strict=True)]
        print(
            f"| {name} | {_ms_range(server)} | {_ms_range(load)} "
            f"| {min(alone):.1%}-{max(alone):.1%} | {min(both):.1%}-{max(both):.1%} "
            f"| {_ms_range(left)} ms |"
        )


def _ms_range(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def main() -> None:
    """Measure both ceilings with one and two processes and print them beside the issue's."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each point")
    parser.add_argument("--grpc-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.grpc_server:
        import uvloop  # noqa: PLC0415 - only the server process needs it

        uvloop.run(_grpc_server(args.grpc_server))
        return
    rows = []
    for kind, measure in (("asgi", bare_asgi_rate), ("grpc", bare_grpc)):
        for processes in (1, 2):
            rate = measure(processes, args.seconds)
            issue = ISSUE[kind][processes - 1]
            rows.append((kind, processes, rate, issue))
            print(
                f"bare {kind:4} {processes} process(es): {rate:8.0f} req/s "
                f"(the issue's: {issue}, {rate / issue:.0%})"
            )
    print("\n| ceiling | processes | req/s here | the issue's | here / issue |")
    print("|---|---|---|---|---|")
    for kind, processes, rate, issue in rows:
        name = (
            "bare ASGI (uvicorn, httptools, uvloop, orjson)" if kind == "asgi" else "bare grpc.aio"
        )
        print(f"| {name} | {processes} | {rate:,.0f} | {issue:,} | {rate / issue:.0%} |")
    latency_floor(args.seconds)
    transport_floor(args.seconds)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        across, same = wake_round_trip(cpus[0], cpus[-1]), wake_round_trip(cpus[0], cpus[0])
        print(
            f"\nwake-up round trip between two processes (pipes): {across:.1f} us on two "
            f"CPUs, {same:.1f} us on one CPU"
        )


def wake_round_trip(mine: int, theirs: int, trips: int = WAKE_ROUND_TRIPS) -> float:
    """Microseconds for a byte to go to a process on CPU ``theirs`` and back to CPU ``mine``."""
    there, here = os.pipe(), os.pipe()
    allowed = os.sched_getaffinity(0)
    child = os.fork()
    if child == 0:  # the child: echo every byte back
        os.sched_setaffinity(0, {theirs})
        for _ in range(trips + 1):
            os.write(here[1], os.read(there[0], 1))
        os._exit(0)
    try:
        os.sched_setaffinity(0, {mine})
        os.write(there[1], b"x")  # the first trip starts the child; not timed
        os.read(here[0], 1)
        started = time.perf_counter()
        for _ in range(trips):
            os.write(there[1], b"x")
            os.read(here[0], 1)
        return (time.perf_counter() - started) / trips * 1e6
    finally:
        os.sched_setaffinity(0, allowed)
        os.waitpid(child, 0)
        for fd in (*there, *here):
            os.close(fd)


def latency_floor(seconds: float) -> None:
    """The bare app's p50 and p99 at c=8 in two and four processes, a few rounds each."""
    print(f"\nbare ASGI at c=8, {LATENCY_ROUNDS} rounds each (the issue's target: p99 < 3 ms):")
    rows = []
    for processes in LATENCY_PROCESSES:
        points = bare_asgi(processes, seconds, connections=8, rounds=LATENCY_ROUNDS)
        rows.append((processes, points))
        print(
            f"bare asgi {processes} process(es) c=8: "
            + ", ".join(f"p50 {p.p50_ms:.2f} p99 {p.p99_ms:.2f} ms" for p in points)
        )
    print("\n| latency floor | processes | req/s | p50 ms | p99 ms (each round) |")
    print("|---|---|---|---|---|")
    for processes, points in rows:
        rates = f"{min(p.rate for p in points):,.0f}-{max(p.rate for p in points):,.0f}"
        p50 = f"{min(p.p50_ms for p in points):.2f}-{max(p.p50_ms for p in points):.2f}"
        p99 = " / ".join(f"{p.p99_ms:.2f}" for p in points)
        print(f"| bare ASGI, c=8 | {processes} | {rates} | {p50} | {p99} |")


if __name__ == "__main__":
    main()
