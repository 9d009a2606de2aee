"""Twenty models of three tenants on workers that hold only a few: all answered, LRU evicts."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import re

import httpx
import numpy as np
import pytest

from server.bootstrap import build_container
from server.settings import Settings
from tests.digits import DEMO_MODEL, digits_test_split, in_process_probabilities
from tests.functional.conftest import token_for
from tests.servers import cli, server_env, start_server

MODELS = 20
TENANTS = ("demo", "north", "south")
BUDGET_MB = 2
PAD_KIB = (100, 50)
"""Model i is the digits model plus 100 + 50*i KiB of padding: same outputs, sizes 0.1-1 MiB."""
ROUNDS = 3
CONCURRENCY = 8


def series(metrics: str, name: str) -> dict[str, float]:
    """Values of one metric family by worker label."""
    found = re.findall(rf'^{name}{{worker="(\d+)"}} (\S+)$', metrics, re.MULTILINE)
    return {worker: float(value) for worker, value in found}


@pytest.fixture(scope="module")
def placed(tmp_path_factory):
    """Two workers with a 2 MiB budget each, and 20 sealed models over 3 tenants.

    Yields ``(server, models)``; ``models`` holds ``(model name, token)``.
    """
    data_dir = tmp_path_factory.mktemp("placement")
    env = server_env(
        data_dir,
        SEALSERVE_WORKERS="2",
        SEALSERVE_WORKER_MEMORY_BUDGET_MB=str(BUDGET_MB),
        SEALSERVE_LOG_LEVEL="WARNING",
    )
    cli("init", "--demo", env=env)
    secrets = {"demo": json.loads((data_dir / "demo-client.json").read_text())}
    for tenant in TENANTS[1:]:
        cli("tenants", "create", tenant, env=env)
        secrets[tenant] = json.loads(
            cli(
                "clients",
                "create",
                "--tenant",
                tenant,
                "--role",
                "tenant-client",
                "--json",
                env=env,
            ).stdout
        )
    # Seal the versions straight into the registry: uploads are tested elsewhere,
    # and twenty checked uploads would cost this test most of its time.
    container = build_container(Settings(data_dir=data_dir))
    registry = container.registry
    tenant_ids = {t.name: t.id for t in registry.list_tenants()}
    signature = registry.resolve(tenant_ids["demo"], "digits", None).signature
    content = DEMO_MODEL.read_bytes()
    names = []
    for i in range(MODELS):
        tenant = TENANTS[i % len(TENANTS)]
        padding = os.urandom((PAD_KIB[0] + PAD_KIB[1] * i) * 1024)
        registry.put_version(
            tenant_id=tenant_ids[tenant],
            model_name=f"m{i:02d}",
            source=io.BytesIO(content + padding),
            format="tflite",
            signature=signature,
        )
        names.append((tenant, f"m{i:02d}"))
    container.close()
    running = start_server(env, data_dir / "server.log")
    tokens = {
        tenant: token_for(running.url, secret["client_id"], secret["client_secret"])
        for tenant, secret in secrets.items()
    }
    yield running, [(name, tokens[tenant]) for tenant, name in names]
    running.stop()


class Run:
    """Clients calling the models, and a watcher reading /metrics meanwhile."""

    def __init__(self, url: str, budget: int) -> None:
        self.url = url
        self.budget = budget
        self.x, _ = digits_test_split()
        self.expected = in_process_probabilities()
        self.wrong: list[str] = []
        self.over: list[str] = []
        self.held_most = 0.0

    async def client(self, http: httpx.AsyncClient, queue: asyncio.Queue) -> None:
        """Take calls off the queue until it is empty; record every wrong answer."""
        while not queue.empty():
            model, token, row = queue.get_nowait()
            body = {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": [1, 64],
                        "data": self.x[row].tolist(),
                    }
                ]
            }
            reply = await http.post(
                f"{self.url}/v2/models/{model}/infer",
                json=body,
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            if reply.status_code != 200:
                self.wrong.append(f"{model}: {reply.status_code} {reply.text[:200]}")
                continue
            got = np.asarray(reply.json()["outputs"][0]["data"], dtype=np.float32)
            if not np.allclose(got, self.expected[row], atol=1e-6):
                self.wrong.append(f"{model}: wrong outputs")

    async def watch(self, http: httpx.AsyncClient, done: asyncio.Event) -> None:
        """Sample each worker's model bytes until ``done``."""
        while not done.is_set():
            metrics = (await http.get(f"{self.url}/metrics")).text
            for worker, held in series(metrics, "sealserve_worker_model_bytes").items():
                self.held_most = max(self.held_most, held)
                if held > self.budget:
                    self.over.append(f"worker {worker} held {held} bytes")
            await asyncio.sleep(0.1)

    async def __call__(self, calls: list) -> str:
        """Run every call at CONCURRENCY, then return the final /metrics."""
        queue: asyncio.Queue = asyncio.Queue()
        for item in calls:
            queue.put_nowait(item)
        done = asyncio.Event()
        async with httpx.AsyncClient() as http:
            watcher = asyncio.create_task(self.watch(http, done))
            await asyncio.gather(*(self.client(http, queue) for _ in range(CONCURRENCY)))
            await asyncio.sleep(1.5)  # one more status refresh
            done.set()
            await watcher
            return (await http.get(f"{self.url}/metrics")).text


def test_twenty_models_on_a_small_budget_are_all_served_within_it(placed) -> None:
    """Every call on every model is right; workers evict (visible in /metrics) and stay in budget."""
    server, models = placed
    budget = BUDGET_MB * 1024 * 1024
    calls = [
        (model, token, row) for _ in range(ROUNDS) for model, token in models for row in (0, 1)
    ]
    random.Random(7).shuffle(calls)  # noqa: S311 - a reproducible order, not a secret
    run = Run(server.url, budget)
    metrics = asyncio.run(run(calls))
    assert run.wrong == []
    assert run.over == []
    assert 0 < run.held_most <= budget
    assert series(metrics, "sealserve_worker_memory_budget_bytes") == {"0": budget, "1": budget}
    evictions = series(metrics, "sealserve_worker_evictions_total")
    assert sum(evictions.values()) >= MODELS - 2 * 4  # more models than both workers can hold
    models_held = series(metrics, "sealserve_worker_models")
    assert all(0 < held < MODELS for held in models_held.values())
    served = re.findall(
        r'^sealserve_inference_requests_total\{.*outcome="ok".*\} (\S+)$', metrics, re.MULTILINE
    )
    assert sum(float(v) for v in served) == len(calls)
