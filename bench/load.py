"""Load benchmark: a real ``sealserve serve`` driven by native load generators.

    .venv/bin/python bench/load.py                 # everything, 10 s per point
    .venv/bin/python bench/load.py --seconds 5 --only digits --write-docs

What it does, in one run on this machine:

1. A fresh data directory: ``sealserve init --demo`` (the digits model,
   sealed), plus the heavy CNN (224x224x3 -> Conv32-Pool-Conv64-Pool-Conv128-
   Pool-Dense512-Dense10, random weights, built with TensorFlow and converted
   with ``TFLiteConverter.from_keras_model``; cached under ~/.cache) pushed
   through ``sealserve models push``, and a second tenant for the fairness run.
2. The in-process LiteRT ceiling for each model at batch 1: calls per second
   of one interpreter on one thread, and of one interpreter per CPU in as many
   processes (what the server's workers could do at best with no gateway).
   For the CNN, after the server has stopped, also at each batch size its
   workers ran (the mean rows per invocation of each point, from
   ``sealserve_batch_size``), so that a batching server is held against an
   interpreter given batches of the same size.
3. ``sealserve serve`` with authentication on (one gateway per CPU, each
   pinned with its worker to its CPU, as on a host whose CPUs the server has
   to itself; ``--no-cpu-affinity`` leaves placement to the kernel), then for
   each model and protocol, concurrency 1, 8 and 64: REST with ``wrk`` (a
   Lua script sets the body and the bearer token; digits as JSON over the
   Open Inference Protocol and TF Serving ``:predict``, the CNN as the
   binary tensor extension), gRPC with ``h2load`` (raw HTTP/2 frames carrying a
   ``ModelInferRequest``; latencies from its per-request log). Both are C
   programs: the load generator costs a fraction of what the server does.
   Every point checks that no call failed (wrk's non-2xx count; for gRPC the
   server's own ``sealserve_inference_requests_total`` by outcome).
4. Fairness: a second server with per-tenant limits; tenant ``demo`` calls at
   a steady pace alone, then again while tenant ``flood`` sends ten times its
   rate limit, then while the flood goes to a third, identical server (the
   machine's share of the rise); the victim's p99 in each.

The machine has 2 cores shared with everything else running, so figures move
between runs: run it more than once and report the range.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SEALSERVE = str(Path(sys.executable).with_name("sealserve"))
CACHE = Path.home() / ".cache" / "sealserve-bench"
CNN_FILE = CACHE / "cnn224.tflite"
DIGITS_FILE = ROOT / "server" / "demo" / "digits.tflite"
CONCURRENCY = (1, 8, 64)
MODELS = {"digits": (DIGITS_FILE, (64,)), "cnn": (CNN_FILE, (224, 224, 3))}
"""Each model's file and one input row (without the batch dimension)."""
BATCH_MATCHED = ("cnn",)
"""Models whose ceiling is also measured at the batch sizes the server ran."""
WARM_UP = 5.0
"""Seconds of load on each model and protocol before its points are measured."""
STATUS_SETTLE = 2.0
"""Seconds for the gateways' worker status (refreshed every second) to catch up."""
GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"


# --- models and the in-process ceiling ------------------------------------------
def build_cnn(path: Path) -> None:
    """The heavy CNN with random weights, converted to TFLite (float32, builtin ops)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf  # noqa: PLC0415 - only this step needs TensorFlow

    tf.keras.utils.set_random_seed(0)
    layers = tf.keras.layers
    model = tf.keras.Sequential(
        [
            tf.keras.Input((224, 224, 3), name="input"),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(128, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(512, activation="relu"),
            layers.Dense(10, activation="softmax", name="probabilities"),
        ]
    )
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(converter.convert())


def _ceiling_worker(content: bytes, shape: tuple[int, ...], seconds: float, out: Any) -> None:
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415 - child process

    runner = Interpreter(model_content=content, num_threads=1).get_signature_runner()
    name = next(iter(runner.get_input_details()))
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    runner(**{name: x})  # warm
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        runner(**{name: x})
        calls += 1
    out.put(calls / (time.perf_counter() - started))


def ceiling(content: bytes, shape: tuple[int, ...], seconds: float, processes: int) -> float:
    """Rows/s of in-process LiteRT: ``processes`` interpreters, one thread each.

    ``shape[0]`` is the batch: each invocation runs that many rows.
    """
    context = get_context("spawn")
    queue = context.Queue()
    children = [
        context.Process(target=_ceiling_worker, args=(content, shape, seconds, queue))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    rates = [queue.get(timeout=seconds + 120) for _ in children]
    for child in children:
        child.join()
    return float(sum(rates)) * shape[0]


# --- the server ----------------------------------------------------------------------
@dataclass
class Server:
    """A running ``sealserve serve``."""

    process: subprocess.Popen[bytes]
    rest: int
    grpc: int

    @property
    def url(self) -> str:
        """Base REST URL."""
        return f"http://127.0.0.1:{self.rest}"

    def stop(self) -> None:
        """SIGTERM and wait."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


def run_cli(*args: str, env: dict[str, str]) -> str:
    """Run the real command line; its stdout."""
    return subprocess.run(  # noqa: S603 - our own console script
        [SEALSERVE, *args], env=env, capture_output=True, text=True, check=True, timeout=600
    ).stdout


def start(env: dict[str, str], log: Path, **extra: str) -> Server:
    """``sealserve serve`` on fixed local ports, once it is ready."""
    env = {**env, **extra}
    with log.open("ab") as handle:
        process = subprocess.Popen(  # noqa: S603 - our own console script
            [SEALSERVE, "serve"], env=env, stdout=handle, stderr=subprocess.STDOUT
        )
    server = Server(process, int(env["SEALSERVE_REST_PORT"]), int(env["SEALSERVE_GRPC_PORT"]))
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"{server.url}/v2/health/ready", timeout=1):  # noqa: S310
                return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    msg = f"server did not start; see {log}"
    raise RuntimeError(msg)


def token(url: str, client: dict[str, str]) -> str:
    """An access token from the server's token endpoint."""
    basic = base64.b64encode(f"{client['client_id']}:{client['client_secret']}".encode()).decode()
    request = urllib.request.Request(  # noqa: S310 - a local URL we built
        f"{url}/v1/auth/token",
        data=b"grant_type=client_credentials",
        headers={"Authorization": f"Basic {basic}"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310
        return str(json.load(reply)["access_token"])


def outcomes(url: str) -> dict[str, float]:
    """``sealserve_inference_requests_total`` summed by outcome."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as reply:  # noqa: S310
        text = reply.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("sealserve_inference_requests_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            totals[outcome] = totals.get(outcome, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def batch_totals(url: str, model: str) -> tuple[float, float]:
    """(invocations, rows) the workers have run for ``model``: ``sealserve_batch_size``."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as reply:  # noqa: S310
        text = reply.read().decode()
    totals = {"count": 0.0, "sum": 0.0}
    for line in text.splitlines():
        for part in totals:
            if line.startswith(f"sealserve_batch_size_{part}{{") and f'model="{model}"' in line:
                totals[part] += float(line.rsplit(" ", 1)[1])
    return totals["count"], totals["sum"]


# --- load generators -------------------------------------------------------------------
@dataclass
class Point:
    """One measured point."""

    rate: float
    p50_ms: float
    p99_ms: float
    failed: int


WRK_SCRIPT = """
local f = io.open(os.getenv("BENCH_BODY"), "rb"); local body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.body = body
wrk.headers["Content-Type"] = os.getenv("BENCH_TYPE")
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
local header = os.getenv("BENCH_HEADER_LENGTH")
if header ~= nil and header ~= "" then wrk.headers["Inference-Header-Content-Length"] = header end
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
if pause > 0 then delay = function() return pause end end
done = function(summary, latency, requests)
  io.write(string.format("BENCH %f %f %f %d\\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout))
end
"""


@dataclass
class Body:
    """A request body for one route."""

    path: str
    data: bytes
    content_type: str = "application/json"
    header_length: int | None = None


def wrk(
    url: str, body: Body, tok: str, *, connections: int, seconds: float, delay_ms: float = 0
) -> Point:
    """REST load with wrk at ``connections`` connections (closed loop unless ``delay_ms``)."""
    with tempfile.TemporaryDirectory() as tmp:
        script, data = Path(tmp) / "bench.lua", Path(tmp) / "body"
        script.write_text(WRK_SCRIPT)
        data.write_bytes(body.data)
        env = {
            **os.environ,
            "BENCH_BODY": str(data),
            "BENCH_TYPE": body.content_type,
            "BENCH_TOKEN": tok,
            "BENCH_HEADER_LENGTH": "" if body.header_length is None else str(body.header_length),
            "BENCH_DELAY_MS": str(delay_ms),
        }
        threads = min(2, connections)
        result = subprocess.run(  # noqa: S603 - fixed arguments
            [  # noqa: S607 - wrk from the system
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{seconds:g}s",
                "--timeout",
                "30s",
                "-s",
                str(script),
                url + body.path,
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    line = next(x for x in result.stdout.splitlines() if x.startswith("BENCH "))
    rate, p50, p99, failed = line.split()[1:]
    return Point(float(rate), float(p50), float(p99), int(failed))


def grpc_frame(model: str, x: np.ndarray) -> bytes:
    """A length-prefixed gRPC message holding a ModelInferRequest with raw input bytes."""
    from protos import inference_pb2  # noqa: PLC0415 - after sys.path is set

    request = inference_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    del tensor
    request.raw_input_contents.append(x.astype("<f4").tobytes())
    message: bytes = request.SerializeToString()
    return b"\x00" + struct.pack(">I", len(message)) + message


def h2load(server: Server, frame: bytes, tok: str, *, concurrency: int, seconds: float) -> Point:
    """Load gRPC with h2load: ``concurrency`` streams over up to 16 connections."""
    connections = min(concurrency, 16)
    streams = max(1, concurrency // connections)
    before = outcomes(server.url)
    with tempfile.TemporaryDirectory() as tmp:
        data, log = Path(tmp) / "frame", Path(tmp) / "log"
        data.write_bytes(frame)
        result = subprocess.run(  # noqa: S603 - fixed arguments
            [  # noqa: S607 - h2load from the system
                "h2load",
                "-D",
                f"{seconds:g}",
                "-c",
                str(connections),
                "-m",
                str(streams),
                "-t",
                str(min(2, connections)),
                "-d",
                str(data),
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                "-H",
                f"authorization: Bearer {tok}",
                "--log-file",
                str(log),
                f"http://127.0.0.1:{server.grpc}{GRPC_PATH}",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows = [line.split("\t") for line in log.read_text().splitlines() if line]
    after = outcomes(server.url)
    done = [row for row in rows if row[1] == "200"]
    micros = np.array([float(row[2]) for row in done]) if done else np.array([0.0])
    found = re.search(r"^finished in ([0-9.]+)(m?s),", result.stdout, re.MULTILINE)
    elapsed = seconds
    if found:
        elapsed = float(found.group(1)) / (1000 if found.group(2) == "ms" else 1)
    failed_server = sum(v - before.get(k, 0.0) for k, v in after.items() if k != "ok")
    return Point(
        len(done) / elapsed,
        float(np.percentile(micros, 50)) / 1000,
        float(np.percentile(micros, 99)) / 1000,
        (len(rows) - len(done)) + int(failed_server),
    )


# --- the run ---------------------------------------------------------------------------
def v2_json(model: str, x: np.ndarray) -> Body:
    """Open Inference Protocol JSON body."""
    inputs = [
        {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
    ]
    return Body(f"/v2/models/{model}/infer", json.dumps({"inputs": inputs}).encode())


def v2_binary(model: str, x: np.ndarray) -> Body:
    """Open Inference Protocol body with the binary tensor extension."""
    raw = x.astype("<f4").tobytes()
    header = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(x.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
    }
    head = json.dumps(header).encode()
    return Body(f"/v2/models/{model}/infer", head + raw, "application/octet-stream", len(head))


def tfs_predict(model: str, x: np.ndarray) -> Body:
    """TF Serving REST ``:predict`` body (row format)."""
    return Body(f"/v1/models/{model}:predict", json.dumps({"instances": x.tolist()}).encode())


@dataclass
class Setup:
    """What the runs share."""

    env: dict[str, str]
    data_dir: Path
    clients: dict[str, dict[str, str]]


def prepare(work: Path, *, with_cnn: bool) -> Setup:
    """Data directory with the demo tenant, the CNN and a second tenant."""
    data_dir = work / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALSERVE_")}
    env |= {
        "SEALSERVE_DATA_DIR": str(data_dir),
        "SEALSERVE_LOG_LEVEL": "WARNING",
        "SEALSERVE_REST_PORT": "18700",
        "SEALSERVE_GRPC_PORT": "18701",
        "SEALSERVE_MAX_MODEL_BYTES": str(512 * 1024 * 1024),
    }
    run_cli("init", "--demo", env=env)
    if with_cnn:
        if not CNN_FILE.exists():
            print("building the CNN with TensorFlow (cached for later runs)...", flush=True)
            build_cnn(CNN_FILE)
        run_cli("models", "push", str(CNN_FILE), "--name", "cnn", "--tenant", "demo", env=env)
    run_cli("tenants", "create", "flood", env=env)
    run_cli("models", "push", str(DIGITS_FILE), "--name", "digits", "--tenant", "flood", env=env)
    flood = json.loads(
        run_cli(
            "clients", "create", "--tenant", "flood", "--role", "tenant-client", "--json", env=env
        )
    )
    demo = json.loads((data_dir / "demo-client.json").read_text())
    return Setup(env, data_dir, {"demo": demo, "flood": flood})


def throughput(setup: Setup, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """Every model x protocol x concurrency point on one server."""
    digits = np.random.default_rng(0).random((1, 64), dtype=np.float32)
    cnn = np.random.default_rng(0).random((1, 224, 224, 3), dtype=np.float32)
    server = start(setup.env, setup.data_dir / "server.log", SEALSERVE_WORKERS=str(args.workers))
    try:
        tok = token(server.url, setup.clients["demo"])
        cases: list[tuple[str, str, Any]] = []
        if args.only in ("all", "digits"):
            cases += [
                ("digits", "REST v2 (JSON)", v2_json("digits", digits)),
                ("digits", "REST TF Serving :predict", tfs_predict("digits", digits)),
                ("digits", "gRPC v2", grpc_frame("digits", digits)),
            ]
        if args.only in ("all", "cnn"):
            cases += [
                ("cnn", "REST v2 (binary tensors)", v2_binary("cnn", cnn)),
                ("cnn", "gRPC v2", grpc_frame("cnn", cnn)),
            ]
        for model, protocol, body in cases:
            # Warm up first, at the highest concurrency: the first calls load the model
            # on each worker, and the first batches of each new size grow its
            # interpreter's memory (for the CNN, 67 ms and a slow invocation per new
            # largest batch), so every point then measures the steady state.
            warm = token(server.url, setup.clients["demo"])
            if isinstance(body, Body):
                wrk(server.url, body, warm, connections=max(CONCURRENCY), seconds=WARM_UP)
            else:
                h2load(server, body, warm, concurrency=max(CONCURRENCY), seconds=WARM_UP)
            matched = model in BATCH_MATCHED
            for concurrency in CONCURRENCY:
                tok = token(server.url, setup.clients["demo"])  # never expires mid-run
                if matched:
                    time.sleep(STATUS_SETTLE)
                    before = batch_totals(server.url, model)
                if isinstance(body, Body):
                    point = wrk(
                        server.url, body, tok, connections=concurrency, seconds=args.seconds
                    )
                else:
                    point = h2load(server, body, tok, concurrency=concurrency, seconds=args.seconds)
                row = {"model": model, "protocol": protocol, "c": concurrency, **point.__dict__}
                batch = ""
                if matched:
                    time.sleep(STATUS_SETTLE)
                    after = batch_totals(server.url, model)
                    if after[0] > before[0]:
                        row["batch"] = (after[1] - before[1]) / (after[0] - before[0])
                        batch = f"  batch {row['batch']:.1f}"
                rows.append(row)
                print(
                    f"{model:7} {protocol:28} c={concurrency:<3} {point.rate:9.0f} req/s  "
                    f"p50 {point.p50_ms:7.2f} ms  p99 {point.p99_ms:7.2f} ms  "
                    f"failed {point.failed}{batch}",
                    flush=True,
                )
    finally:
        server.stop()


def fairness(setup: Setup, args: argparse.Namespace) -> dict[str, Any]:
    """The victim's p99 alone, next to a tenant sending 10x its rate limit, and with a bystander.

    One p99 from a few hundred paced calls moves by 2x between identical
    runs on this machine, so the run alternates ``--rounds`` times on one
    server. The victim (``bench/victim.py``) keeps every latency: each
    condition's p99 is taken over all its rounds' calls together, beside the
    median of the rounds' own p99s.

    Each round has three conditions: the victim alone; the flood sent to the
    victim's server ("flooded", the figure the issue's target is about); and
    the same flood sent to a second, identical server on this machine
    ("elsewhere"). The last costs the machine the same CPU without touching
    the victim's server, so it shows how much of the rise is the machine's
    (two cores shared with the flood's client and its refusals) rather than
    the victim's server letting one tenant slow another. (The second server
    idles through the other two conditions.)
    """
    limits = {
        "SEALSERVE_WORKERS": str(args.workers),
        "SEALSERVE_TENANT_RATE_LIMIT": str(args.rate_limit),
        "SEALSERVE_TENANT_MAX_CONCURRENCY": "32",
    }
    server = start(setup.env, setup.data_dir / "server-fair.log", **limits)
    bystander: Server | None = None
    try:
        bystander = start(
            setup.env,
            setup.data_dir / "server-bystander.log",
            SEALSERVE_REST_PORT=str(server.rest + 10),
            SEALSERVE_GRPC_PORT=str(server.grpc + 10),
            **limits,
        )
        run = _FairnessRun(setup, args, server)
        for _ in range(args.rounds):
            run.paced("alone")
            run.flooding(server, "flooded")
            run.flooding(bystander, "elsewhere")
    finally:
        server.stop()
        if bystander is not None:
            bystander.stop()
    result = run.result()
    print(
        f"fairness: limit {args.rate_limit:g}/s; flooder sent {result['flood_rate']:.0f} req/s "
        f"({result['flood_refused_share']:.0%} refused 429); victim p99 over "
        f"{result['calls_alone']} / {result['calls_flooded']} calls of {args.rounds} rounds "
        f"{result['p99_alone_ms']:.2f} ms alone -> {result['p99_flooded_ms']:.2f} ms flooded "
        f"({_change(result, 'flooded')}); rounds alone "
        f"{_ms(result['p99_alone_each_ms'])}, flooded {_ms(result['p99_flooded_each_ms'])}; "
        f"the flood sent to a second server instead: {result['p99_elsewhere_ms']:.2f} ms "
        f"({_change(result, 'elsewhere')}; rounds {_ms(result['p99_elsewhere_each_ms'])}); "
        f"victim failures {result['victim_failed']}; server CPU during the flood "
        f"{result['server_cores_flooded']:.2f} cores, "
        f"{result['server_us_per_call_flooded']:.0f} us per call",
        flush=True,
    )
    return result


class _FairnessRun:
    """The fairness run's clients and what they measured, condition by condition."""

    VICTIM_CONNECTIONS = 4
    FLOOD_CONNECTIONS = 20

    def __init__(self, setup: Setup, args: argparse.Namespace, server: Server) -> None:
        self._setup, self._args, self._server = setup, args, server
        self._victim = token(server.url, setup.clients["demo"])
        self._body = v2_json("digits", np.random.default_rng(0).random((1, 64), dtype=np.float32))
        # The victim paces itself at a third of the limit; the flooder sends 10x the limit.
        self._flood_delay = self.FLOOD_CONNECTIONS * 1000 / (args.flood_factor * args.rate_limit)
        self.points: dict[str, list[Point]] = {"alone": [], "flooded": [], "elsewhere": []}
        self.pooled: dict[str, list[float]] = {condition: [] for condition in self.points}
        """Every latency of the victim's calls, per condition."""
        self.floods: list[tuple[float, float]] = []
        """Per flood on the victim's server: the flooder's send rate and refused share."""
        self.server_cpu: list[tuple[float, float]] = []
        """Per flood on the victim's server: its cores in use, and its CPU seconds per call."""

    def paced(self, condition: str) -> Point:
        """One round of the victim's paced calls, kept under ``condition``."""
        args = self._args
        with tempfile.NamedTemporaryFile() as data:
            data.write(self._body.data)
            data.flush()
            output = subprocess.run(  # noqa: S603 - our own interpreter and script
                [
                    sys.executable,
                    str(ROOT / "bench" / "victim.py"),
                    self._server.url,
                    self._body.path,
                    self._victim,
                    data.name,
                    str(args.rate_limit / 3),
                    str(self.VICTIM_CONNECTIONS),
                    str(args.seconds),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        measured = json.loads(output)
        latencies = measured["latencies_ms"]
        self.pooled[condition] += latencies
        point = Point(
            len(latencies) / args.seconds,
            float(np.percentile(latencies, 50)),
            float(np.percentile(latencies, 99)),
            int(measured["failed"]),
        )
        self.points[condition].append(point)
        return point

    def flooding(self, target: Server, condition: str) -> None:
        """A round of the victim's calls while the flooding tenant floods ``target``."""
        args, server = self._args, self._server
        ours = target is server  # only then is the server's CPU and the flood's rate kept
        with tempfile.TemporaryFile() as out:
            cpu_before = tree_cpu(server.process.pid) if ours else 0.0
            started = time.monotonic()
            flood = subprocess.Popen(  # noqa: S603 - our own interpreter and this file
                [
                    sys.executable,
                    __file__,
                    "--flood",
                    target.url,
                    token(target.url, self._setup.clients["flood"]),
                    str(self.FLOOD_CONNECTIONS),
                    str(self._flood_delay),
                    str(args.seconds + 2),
                ],
                stdout=out,
            )
            time.sleep(1)
            victim = self.paced(condition)
            flood.wait()
            cpu = tree_cpu(server.process.pid) - cpu_before if ours else 0.0
            elapsed = time.monotonic() - started
            out.seek(0)
            sent, refused = (float(v) for v in out.read().decode().split())
        if ours:
            self.floods.append((sent, refused))
            calls = sent * (args.seconds + 2) + victim.rate * args.seconds
            self.server_cpu.append((cpu / elapsed, cpu / calls))

    def result(self) -> dict[str, Any]:
        """The run's figures: pooled and per-round p99s per condition, the flood, the CPU."""
        points, pooled = self.points, self.pooled
        alone, loaded = points["alone"], points["flooded"]
        return {
            "limit": self._args.rate_limit,
            "rounds": self._args.rounds,
            "flood_rate": statistics.median(sent for sent, _ in self.floods),
            "flood_refused_share": statistics.median(refused for _, refused in self.floods),
            "victim_rate": statistics.median(point.rate for point in loaded),
            "p99_alone_ms": float(np.percentile(pooled["alone"], 99)),
            "p99_flooded_ms": float(np.percentile(pooled["flooded"], 99)),
            "p99_elsewhere_ms": float(np.percentile(pooled["elsewhere"], 99)),
            "calls_alone": len(pooled["alone"]),
            "calls_flooded": len(pooled["flooded"]),
            "calls_elsewhere": len(pooled["elsewhere"]),
            "p99_alone_median_ms": statistics.median(point.p99_ms for point in alone),
            "p99_flooded_median_ms": statistics.median(point.p99_ms for point in loaded),
            "p50_alone_ms": float(np.percentile(pooled["alone"], 50)),
            "p50_flooded_ms": float(np.percentile(pooled["flooded"], 50)),
            "p50_elsewhere_ms": float(np.percentile(pooled["elsewhere"], 50)),
            "p99_alone_each_ms": [point.p99_ms for point in alone],
            "p99_flooded_each_ms": [point.p99_ms for point in loaded],
            "p99_elsewhere_each_ms": [point.p99_ms for point in points["elsewhere"]],
            "victim_failed": sum(point.failed for each in points.values() for point in each),
            "server_cores_flooded": statistics.median(cores for cores, _ in self.server_cpu),
            "server_us_per_call_flooded": statistics.median(each for _, each in self.server_cpu)
            * 1e6,
        }


def _change(fair: dict[str, Any], condition: str) -> str:
    """The victim's pooled p99 under ``condition`` against alone, as a signed percentage."""
    return f"{fair[f'p99_{condition}_ms'] / fair['p99_alone_ms'] - 1:+.0%}"


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) used so far by ``root`` and its live descendants."""
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        parents[int(entry.name)] = int(fields[1])
        used[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += used.get(pid, 0.0)
        todo += [child for child, parent in parents.items() if parent == pid]
    return total


def _ms(values: list[float]) -> str:
    return "/".join(f"{value:.1f}" for value in values)


def flood_main(url: str, tok: str, connections: int, delay_ms: float, seconds: float) -> None:
    """The flooding tenant: paced wrk at 10x its limit; prints its send rate and 429 share."""
    digits = np.random.default_rng(1).random((1, 64), dtype=np.float32)
    point = wrk(
        url,
        v2_json("digits", digits),
        tok,
        connections=connections,
        seconds=seconds,
        delay_ms=delay_ms,
    )
    total = point.rate * seconds
    print(point.rate, point.failed / total if total else 0.0)


TARGETS = (
    # (model, protocol, concurrency, what, target): what is "rate", "p99" or "ceiling"
    ("digits", "REST v2 (JSON)", 64, "rate", 10_000.0),
    ("digits", "gRPC v2", 64, "rate", 4_000.0),
    ("digits", "REST TF Serving :predict", 64, "rate", 10_000.0),
    ("digits", "REST v2 (JSON)", 8, "p99", 3.0),
    ("cnn", "REST v2 (binary tensors)", 64, "ceiling", 0.9),
    ("cnn", "gRPC v2", 64, "ceiling", 0.9),
)


def latency_floor(args: argparse.Namespace) -> dict[str, Any] | None:
    """A bare ASGI app's p50 and p99 at c=8 in as many processes as the server runs.

    The app (``bench/ceilings.py``) has no model, no authentication and no
    hop, and answers in microseconds: its p99 is what the scheduler alone
    costs with that many busy processes and ``wrk`` on this machine, the
    floor under the p99 target.
    """
    if args.only not in ("all", "digits"):
        return None
    from ceilings import LATENCY_ROUNDS, bare_asgi  # noqa: PLC0415 - ceilings imports this module

    processes = args.gateways + args.workers
    points = bare_asgi(processes, min(args.seconds, 5), connections=8, rounds=LATENCY_ROUNDS)
    floor = {
        "processes": processes,
        "p50_ms": [point.p50_ms for point in points],
        "p99_ms": [point.p99_ms for point in points],
    }
    print(f"latency floor: {_floor_text(floor)}", flush=True)
    return floor


def machine_speed(args: argparse.Namespace) -> dict[str, Any] | None:
    """The issue's two ceilings measured now: how this machine compares with the issue's.

    Issue 7 set its targets against a bare ASGI app and a bare ``grpc.aio``
    handler it measured on its day (``bench/ceilings.py``); the same machine
    has run them at anything from under a third of that speed to all of it.
    Measured in the same run, with the same load generators, they tell a
    reader whether a missed target was missed on a fast day or a slow one.
    """
    if args.only not in ("all", "digits"):
        return None
    from ceilings import ISSUE, bare_asgi_rate, bare_grpc  # noqa: PLC0415 - ceilings imports this module

    processes = min(max(args.gateways, 1), 2)  # the issue measured one and two processes
    seconds = min(args.seconds, 5)
    speed = {
        "processes": processes,
        "asgi": bare_asgi_rate(processes, seconds),
        "grpc": bare_grpc(processes, seconds),
        "asgi_issue": ISSUE["asgi"][processes - 1],
        "grpc_issue": ISSUE["grpc"][processes - 1],
    }
    print(f"machine speed: {_speed_text(speed)}", flush=True)
    return speed


def _speed_text(speed: dict[str, Any]) -> str:
    return (
        f"in {speed['processes']} processes at c=64, a bare ASGI app served "
        f"{speed['asgi']:,.0f} req/s ({speed['asgi'] / speed['asgi_issue']:.0%} of the "
        f"{speed['asgi_issue']:,} the issue measured) and a bare grpc.aio handler "
        f"{speed['grpc']:,.0f} calls/s ({speed['grpc'] / speed['grpc_issue']:.0%} of "
        f"{speed['grpc_issue']:,})"
    )


def _floor_text(floor: dict[str, Any]) -> str:
    return (
        f"a bare ASGI app in {floor['processes']} processes at c=8: p50 "
        f"{min(floor['p50_ms']):.2f}-{max(floor['p50_ms']):.2f} ms, p99 "
        + " / ".join(f"{p99:.2f}" for p99 in floor["p99_ms"])
        + f" ms in {len(floor['p99_ms'])} rounds"
    )


def ceiling_for(row: dict[str, Any], ceilings: dict[str, dict[str, Any]]) -> tuple[float, int]:
    """The ceiling a point is held against, in rows/s, and the batch size it was measured at.

    c=1 is one call at a time: one interpreter on one thread. Otherwise every
    worker's interpreter, at the batch size the server's workers ran where
    that was measured (``BATCH_MATCHED``), else at batch 1.
    """
    ceiling_ = ceilings.get(row["model"], {})
    if row["c"] == 1:
        return ceiling_.get("one", 0.0), 1
    batch = round(row.get("batch", 1.0))
    matched = ceiling_.get("batched", {}).get(str(batch))
    if batch > 1 and matched:
        return matched, batch
    return ceiling_.get("all", 0.0), 1


def measure_batched_ceilings(
    rows: list[dict[str, Any]], ceilings: dict[str, dict[str, Any]], args: argparse.Namespace
) -> None:
    """The ceiling of each ``BATCH_MATCHED`` model at each batch size its points ran."""
    for name in BATCH_MATCHED:
        sizes = sorted(
            {round(r["batch"]) for r in rows if r["model"] == name and r["c"] > 1 and "batch" in r}
            - {0, 1}
        )
        if name not in ceilings or not sizes:
            continue
        path, row = MODELS[name]
        content = path.read_bytes()
        batched = ceilings[name].setdefault("batched", {})
        for size in sizes:
            shape = (size, *row)
            batched[str(size)] = ceiling(content, shape, min(args.seconds, 5), args.workers)
            print(
                f"ceiling {name} at batch {size}: {batched[str(size)]:.0f} rows/s "
                f"with {args.workers} processes",
                flush=True,
            )


def verdicts(
    rows: list[dict[str, Any]],
    ceilings: dict[str, dict[str, Any]],
    floor: dict[str, Any] | None = None,
    speed: dict[str, Any] | None = None,
) -> list[str]:
    """One line per target the issue sets whose point was measured: figure, target, met or not."""
    lines = []
    for model, protocol, concurrency, what, target in TARGETS:
        row = next(
            (
                r
                for r in rows
                if (r["model"], r["protocol"], r["c"]) == (model, protocol, concurrency)
            ),
            None,
        )
        if row is None:
            continue
        name = f"{model} {protocol} c={concurrency}"
        after = ""
        if what == "rate":
            met, text = row["rate"] >= target, f"{row['rate']:.0f} req/s (target >= {target:.0f})"
        elif what == "p99":
            met, text = row["p99_ms"] < target, f"p99 {row['p99_ms']:.2f} ms (target < {target:g})"
        else:
            top, batch = ceiling_for(row, ceilings)
            share = row["rate"] / top if top else 0.0
            met = share >= target
            text = f"{share:.0%} of the ceiling at batch {batch} (target >= {target:.0%})"
            single = ceilings.get(model, {}).get("all", 0.0)
            if batch > 1 and single:
                after = f" ({row['rate'] / single:.0%} of the batch-1 ceiling)"
        line = f"target {name}: {text}: {'met' if met else 'MISSED'}"
        if what == "p99" and floor:
            line += f" (the floor today: {_floor_text(floor)})"
        if what == "rate" and speed:
            kind = "grpc" if protocol.startswith("gRPC") else "asgi"
            share = speed[kind] / speed[f"{kind}_issue"]
            bare = "grpc.aio handler" if kind == "grpc" else "ASGI app"
            line += f" (a bare {bare} ran at {share:.0%} of the issue's figure today)"
        lines.append(line + after)
    return lines


def write_docs(results: dict[str, Any]) -> None:
    """Replace this benchmark's section of docs/benchmarks.md with the new figures."""
    docs = ROOT / "docs" / "benchmarks.md"
    marker_start = "<!-- bench/load.py: start -->"
    marker_end = "<!-- bench/load.py: end -->"
    lines = [marker_start, "", f"Run: {results['when']}, {results['machine']}.", ""]
    lines += [
        "In-process LiteRT ceiling at batch 1 (no server): "
        + "; ".join(
            f"{m}: {c['one']:.0f} calls/s on one thread, "
            f"{c['all']:.0f} with {c['processes']} processes"
            + "".join(
                f"; at batch {size}, {rate:.0f} rows/s with {c['processes']} processes"
                for size, rate in c.get("batched", {}).items()
            )
            for m, c in results["ceiling"].items()
        )
        + ".",
    ]
    if results.get("floor"):
        lines += [
            "",
            (
                f"Latency floor ({_floor_text(results['floor'])}): no model, no "
                "authentication and no hop; what the scheduler costs with that many busy "
                "processes on this machine, under the p99 target at c=8."
            ),
        ]
    if results.get("speed"):
        lines += [
            "",
            (
                f"This machine during the run ({_speed_text(results['speed'])}): the issue "
                "set its targets against these two ceilings on its day."
            ),
        ]
    lines += [
        "",
        "| model | protocol | concurrency | req/s | p50 ms | p99 ms | failed | % of ceiling* |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        # c=1 can use one worker at a time: compare with one thread, else with all.
        top, batch = ceiling_for(row, results["ceiling"])
        share = f"{row['rate'] / top:.0%}" if top else ""
        if share and batch > 1:
            share += f" (batch {batch})"
        lines.append(
            f"| {row['model']} | {row['protocol']} | {row['c']} | {row['rate']:.0f} | "
            f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['failed']} | {share} |"
        )
    lines += [
        "",
        (
            "\\* of the 1-thread ceiling at c=1, otherwise of the all-workers ceiling above;"
            " for the CNN at the batch size its workers ran in that point (mean rows per"
            " invocation, rounded), when it was more than 1."
        ),
    ]
    fair = results.get("fairness")
    if fair:
        lines += [
            "",
            (
                f"Fairness: per-tenant rate limit {fair['limit']:g} req/s; tenant `flood` sent "
                f"{fair['flood_rate']:.0f} req/s ({fair['flood_refused_share']:.0%} refused "
                f"with 429) while tenant `demo` called at a steady third of its limit: demo's "
                f"p99 over all calls of {fair.get('rounds', 1)} alternating rounds "
                f"({fair.get('calls_alone', '?')} alone, {fair.get('calls_flooded', '?')} "
                f"flooded) {fair['p99_alone_ms']:.2f} ms alone, {fair['p99_flooded_ms']:.2f} ms "
                f"during the flood ({_change(fair, 'flooded')}); p50 "
                f"{fair['p50_alone_ms']:.2f} -> {fair['p50_flooded_ms']:.2f} ms; "
                f"{fair['victim_failed']} failed calls for demo."
                + (
                    f" The server used {fair['server_cores_flooded']:.2f} cores during the flood, "
                    f"{fair['server_us_per_call_flooded']:.0f} us of CPU per call."
                    if "server_cores_flooded" in fair
                    else ""
                )
                + (
                    f" With the same flood sent to a second, identical server on this machine "
                    f"instead, demo's p99 was {fair['p99_elsewhere_ms']:.2f} ms "
                    f"({_change(fair, 'elsewhere')}): the part of the rise that two shared "
                    "cores cost whichever server takes the flood."
                    if "p99_elsewhere_ms" in fair
                    else ""
                )
            ),
        ]
    lines += ["", marker_end]
    text = docs.read_text() if docs.exists() else ""
    if marker_start in text:
        before, rest = text.split(marker_start, 1)
        text = before + "\n".join(lines) + rest.split(marker_end, 1)[1]
    else:
        text += "\n" + "\n".join(lines) + "\n"
    docs.write_text(text)


def measure_ceilings(args: argparse.Namespace, *, with_cnn: bool) -> dict[str, dict[str, Any]]:
    """In-process LiteRT calls/s per model at batch 1: one thread, and one process per worker."""
    ceilings: dict[str, dict[str, Any]] = {}
    if args.only in ("fairness", "audit"):
        return ceilings
    for name in ("digits", "cnn") if with_cnn else ("digits",):
        path, row = MODELS[name]
        content = path.read_bytes()
        shape = (1, *row)
        one = ceiling(content, shape, min(args.seconds, 5), 1)
        every = ceiling(content, shape, min(args.seconds, 5), args.workers)
        ceilings[name] = {"one": one, "all": every, "processes": args.workers}
        print(
            f"ceiling {name}: {one:.0f} calls/s one thread, "
            f"{every:.0f} with {args.workers} processes",
            flush=True,
        )
    return ceilings


def audit_overhead(setup: Setup, args: argparse.Namespace) -> dict[str, Any]:
    """Digits over REST at c=64, inference auditing on and off, alternated to share the noise."""
    digits = np.random.default_rng(0).random((1, 64), dtype=np.float32)
    body = v2_json("digits", digits)
    rates: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(args.rounds):
        for mode in ("on", "off"):
            server = start(
                setup.env,
                setup.data_dir / f"server-audit-{mode}.log",
                SEALSERVE_WORKERS=str(args.workers),
                SEALSERVE_AUDIT_INFERENCE="true" if mode == "on" else "false",
            )
            try:
                tok = token(server.url, setup.clients["demo"])
                wrk(server.url, body, tok, connections=8, seconds=2)  # load the model everywhere
                point = wrk(server.url, body, tok, connections=64, seconds=args.seconds)
            finally:
                server.stop()
            rates[mode].append(point.rate)
            print(
                f"audit {mode:3}  {point.rate:9.0f} req/s  p99 {point.p99_ms:7.2f} ms  "
                f"failed {point.failed}",
                flush=True,
            )
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    print(
        f"audit on / off: {on:.0f} / {off:.0f} req/s = {on / off:.1%} "
        f"(target >= 90%: {'met' if on >= 0.9 * off else 'MISSED'})",
        flush=True,
    )
    return {"on": on, "off": off, "ratio": on / off, "runs": rates}


def main() -> None:  # noqa: C901 - one flat dispatch over the benchmark's modes
    """Parse arguments and run the benchmark."""
    if len(sys.argv) > 1 and sys.argv[1] == "--flood":
        url, tok, connections, delay_ms, seconds = sys.argv[2:7]
        flood_main(url, tok, int(connections), float(delay_ms), float(seconds))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each point")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--gateways",
        type=int,
        default=os.cpu_count() or 1,
        help="gateway processes sharing the ports (serve --gateways)",
    )
    parser.add_argument(
        "--cpu-affinity",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pin each gateway and its worker to a CPU (SEALSERVE_GATEWAY_CPU_AFFINITY), "
        "as on a host whose CPUs the server has to itself",
    )
    parser.add_argument(
        "--only", choices=("all", "digits", "cnn", "fairness", "audit"), default="all"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="audit: on/off rounds; fairness: alone/flooded rounds"
    )
    parser.add_argument(
        "--rate-limit", type=float, default=200.0, help="fairness: req/s per tenant"
    )
    parser.add_argument(
        "--flood-factor",
        type=float,
        default=10.0,
        help="fairness: the flooding tenant sends this many times its rate limit",
    )
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--docs-from", type=Path, help="only render a --json file into the docs")
    args = parser.parse_args()
    if args.docs_from:
        write_docs(json.loads(args.docs_from.read_text()))
        return
    for tool in ("wrk", "h2load"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install -y wrk nghttp2-client")
    work = Path(tempfile.mkdtemp(prefix="sealserve-load-"))
    print(f"work directory (kept if the run fails): {work}", flush=True)
    try:
        with_cnn = args.only in ("all", "cnn")
        setup = prepare(work, with_cnn=with_cnn)
        setup.env["SEALSERVE_GATEWAYS"] = str(args.gateways)
        setup.env["SEALSERVE_GATEWAY_CPU_AFFINITY"] = "true" if args.cpu_affinity else "false"
        ceilings = measure_ceilings(args, with_cnn=with_cnn)
        floor = latency_floor(args)
        speed = machine_speed(args)
        rows: list[dict[str, Any]] = []
        if args.only not in ("fairness", "audit"):
            throughput(setup, args, rows)
            measure_batched_ceilings(rows, ceilings, args)
        results: dict[str, Any] = {
            "when": time.strftime("%Y-%m-%d %H:%M"),
            "machine": (
                f"{os.cpu_count()} CPUs, {args.gateways} gateway processes"
                f"{' pinned one per CPU with their workers' if args.cpu_affinity else ''}, "
                f"{args.workers} workers, {args.seconds:g} s per point"
            ),
            "ceiling": ceilings,
            "floor": floor,
            "speed": speed,
            "rows": rows,
        }
        for line in verdicts(rows, ceilings, floor, speed):
            print(line, flush=True)
        if args.only in ("all", "fairness"):
            results["fairness"] = fairness(setup, args)
        if args.only in ("all", "audit"):
            results["audit"] = audit_overhead(setup, args)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        if args.write_docs:
            write_docs(results)
    except BaseException:
        print(f"failed; the servers' logs are in {work}", flush=True)
        raise
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
