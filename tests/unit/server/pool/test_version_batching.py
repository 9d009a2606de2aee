"""The worker batches each model version by its own settings, read when it loads the version."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from protos import worker_pb2, worker_pb2_grpc
from server.pool.batcher import Batcher, BatchStats
from server.pool.cache import ModelCache
from server.pool.messages import key_to_pb, tensor_to_pb
from server.pool.runtime import LoadedModel
from server.pool.worker import create_server
from server.pool.worker_service import BatchPolicy, WorkerService
from server.service.types import ModelKey, Tensor
from storage import BatchSettings

from .conftest import DIGITS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    import numpy as np

    from .conftest import Digits, Sealed

CALLS = 16
DEFAULTS = BatchPolicy(max_batch=32, max_delay=0.0, max_queue=100)


@pytest.mark.parametrize(
    ("settings", "batchable", "expected"),
    [
        (None, True, (32, 0.0)),
        (BatchSettings(enabled=True), True, (32, 0.0)),
        (BatchSettings(enabled=False), True, (1, 0.0)),
        (BatchSettings(max_batch_size=8), True, (8, 0.0)),
        (BatchSettings(max_queue_delay_ms=20), True, (32, 0.02)),
        (BatchSettings(max_batch_size=4, max_queue_delay_ms=5), True, (4, 0.005)),
        (None, False, (1, 0.0)),
        (BatchSettings(enabled=True, max_batch_size=64, max_queue_delay_ms=50), False, (1, 0.0)),
    ],
)
def test_version_settings_override_the_workers_and_never_batch_a_fixed_shape_model(
    settings: BatchSettings | None, batchable: bool, expected: tuple[int, float]
) -> None:
    """Set fields win, unset ones keep the worker's; off, or no batch dimension, means one call."""
    policy = DEFAULTS.for_version(settings, batchable=batchable)
    assert (policy.max_batch, policy.max_delay) == expected
    assert policy.max_queue == DEFAULTS.max_queue


def test_unbatchable_model_runs_one_call_per_invocation_and_is_not_held(digits: Digits) -> None:
    """Even a batcher built with a large batch and a delay runs such a model call by call, at once."""
    model = LoadedModel.load(DIGITS.read_bytes())
    model.batchable = False
    executor = ThreadPoolExecutor(1)
    gate = threading.Event()
    stats = BatchStats()
    x = digits.x_test[:1]
    inputs = [Tensor(name="input", datatype="FP32", shape=x.shape, data=x)]

    async def scenario() -> float:
        batcher = Batcher(
            model, executor=executor, max_batch=8, max_delay=0.5, max_queue=100, stats=stats
        )
        executor.submit(gate.wait, 5)
        calls = [asyncio.ensure_future(batcher.submit(inputs, [], deadline=None)) for _ in range(6)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        gate.set()
        await asyncio.gather(*calls)
        return time.monotonic() - started

    elapsed = asyncio.run(scenario())
    executor.shutdown()
    assert (stats.calls, stats.batches, stats.buckets[0]) == (6, 6, 6)
    assert elapsed < 0.5  # the 0.5 s delay was never waited out


@contextlib.asynccontextmanager
async def worker(socket_dir: Path, sealed: Sealed) -> AsyncIterator[Any]:
    """A WorkerService reading bytes and batching settings from the registry, as `serve` wires it."""
    registry = sealed.registry
    cache = ModelCache(
        open_model=lambda key: registry.open_version(key.tenant_id, key.version_id),
        read_batching=lambda key: registry.version_batching(key.tenant_id, key.version_id),
    )
    service = WorkerService(cache=cache, batching=DEFAULTS)
    address = f"unix:{socket_dir / 'worker.sock'}"
    server = create_server(service, address)
    await server.start()
    channel = grpc.aio.insecure_channel(address)
    try:
        yield worker_pb2_grpc.WorkerStub(channel)
    finally:
        await channel.close()
        await server.stop(0)
        service.close()


def seal(sealed: Sealed, name: str, batching: BatchSettings | None) -> ModelKey:
    """The digits model sealed as a version of ``name`` with ``batching``."""
    info = sealed.registry.put_version(
        tenant_id=sealed.tenant_id,
        model_name=name,
        source=io.BytesIO(sealed.model_bytes),
        format="tflite",
        batching=batching,
    )
    return ModelKey(sealed.tenant_id, info.id)


def calls(key: ModelKey, x: np.ndarray) -> worker_pb2.InferRequest:
    """One Infer RPC with a single-row call per row of ``x`` (they reach the batcher together)."""
    return worker_pb2.InferRequest(
        calls=[
            worker_pb2.InferCall(
                model=key_to_pb(key),
                inputs=[
                    tensor_to_pb(
                        Tensor(name="input", datatype="FP32", shape=(1, x.shape[1]), data=row[None])
                    )
                ],
            )
            for row in x
        ]
    )


def stats_of(status: worker_pb2.StatusResponse, key: ModelKey) -> worker_pb2.BatchStats:
    """The worker's batching statistics for one model version."""
    return next(s for s in status.batching if s.model == key_to_pb(key))


@pytest.fixture
def socket_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short directory (Unix socket paths are limited to about 100 bytes)."""
    return tmp_path_factory.mktemp("vb")


def test_each_version_is_batched_by_its_own_settings(
    socket_dir: Path, sealed: Sealed, digits: Digits
) -> None:
    """Concurrent calls: off runs 16 invocations of 1 row; max 4 never exceeds 4 rows but groups."""
    off = seal(sealed, "solo", BatchSettings(enabled=False))
    four = seal(sealed, "four", BatchSettings(max_batch_size=4, max_queue_delay_ms=50))
    default = seal(sealed, "plain", None)
    x = digits.x_test[:CALLS]

    async def scenario() -> worker_pb2.StatusResponse:
        async with worker(socket_dir, sealed) as stub:
            replies = await asyncio.gather(*(stub.Infer(calls(k, x)) for k in (off, four, default)))
            for reply in replies:
                assert not any(result.HasField("error") for result in reply.results)
            return await stub.Status(worker_pb2.StatusRequest())

    status = asyncio.run(scenario())
    solo = stats_of(status, off)
    assert (solo.calls, solo.batches, solo.size_buckets[0]) == (CALLS, CALLS, CALLS)
    grouped = stats_of(status, four)
    assert grouped.calls == CALLS
    assert sum(grouped.size_buckets[:3]) == grouped.batches  # every batch <= 4 rows
    assert grouped.size_buckets[0] < grouped.batches  # and some held more than one
    plain = stats_of(status, default)
    assert plain.batches < CALLS  # the worker's own default batches too


def test_changed_settings_apply_when_the_version_is_loaded_again(
    socket_dir: Path, sealed: Sealed, digits: Digits
) -> None:
    """A version turned off while loaded keeps its batcher until it is unloaded and reloaded."""
    key = seal(sealed, "switched", BatchSettings(max_batch_size=8, max_queue_delay_ms=50))
    x = digits.x_test[:8]
    model = key_to_pb(key)

    async def scenario() -> tuple[worker_pb2.BatchStats, worker_pb2.BatchStats]:
        async with worker(socket_dir, sealed) as stub:
            await stub.Infer(calls(key, x))
            before = stats_of(await stub.Status(worker_pb2.StatusRequest()), key)
            sealed.registry.set_batching(
                sealed.tenant_id, "switched", 1, BatchSettings(enabled=False)
            )
            await stub.Unload(worker_pb2.UnloadRequest(model=model))
            await stub.Infer(calls(key, x))
            after = stats_of(await stub.Status(worker_pb2.StatusRequest()), key)
            return before, after

    before, after = asyncio.run(scenario())
    assert before.batches < len(x)
    assert after.batches - before.batches == len(x)  # one invocation per call after the reload
