"""The worker service answers each call on its own, keeps Ping responsive, and never leaks."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import pytest

from protos import worker_pb2, worker_pb2_grpc
from server.pool.cache import ModelCache
from server.pool.errors import INTERNAL_MESSAGE
from server.pool.messages import key_to_pb, tensor_from_pb, tensor_to_pb
from server.pool.process import settings_for_worker
from server.pool.worker import create_server
from server.pool.worker_service import WorkerService
from server.service.types import ModelKey, Tensor

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from .conftest import Digits, Reference, Sealed

CODE = worker_pb2.CallErrorCode


@pytest.fixture
def socket_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short directory (Unix socket paths are limited to about 100 bytes)."""
    return tmp_path_factory.mktemp("w")


@contextlib.asynccontextmanager
async def serving(socket_dir: Path, open_model: Callable[[ModelKey], bytes]) -> AsyncIterator[Any]:
    """A WorkerService on a Unix socket in this process, and a stub to it."""
    service = WorkerService(cache=ModelCache(open_model=open_model))
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


def opener(sealed: Sealed) -> Callable[[ModelKey], bytes]:
    """Reads a version's plaintext from the module's registry, as the real worker does."""
    return lambda key: sealed.registry.open_version(key.tenant_id, key.version_id)


def call(
    key: ModelKey, x: np.ndarray, *, name: str = "input", **fields: Any
) -> worker_pb2.InferCall:
    """One InferCall feeding ``x`` as FP32 input ``name``."""
    tensor = Tensor(name=name, datatype="FP32", shape=tuple(x.shape), data=x)
    return worker_pb2.InferCall(model=key_to_pb(key), inputs=[tensor_to_pb(tensor)], **fields)


def test_calls_in_one_request_succeed_or_fail_on_their_own(
    socket_dir: Path, sealed: Sealed, digits: Digits, reference: Reference
) -> None:
    """Good, misnamed, unknown-version and keyless calls each get their own answer, in order."""
    x = digits.x_test[:2]
    calls = [
        call(sealed.key, x, request_id="r-1"),
        call(sealed.key, x, name="pixels"),
        call(ModelKey(sealed.tenant_id, "00000000-0000-0000-0000-000000000000"), x),
        worker_pb2.InferCall(model=worker_pb2.ModelKey(model_version_id="v")),
    ]

    async def scenario() -> worker_pb2.InferResponse:
        async with serving(socket_dir, opener(sealed)) as stub:
            return await stub.Infer(worker_pb2.InferRequest(calls=calls))

    good, misnamed, unknown, keyless = asyncio.run(scenario()).results
    assert not good.HasField("error")
    assert np.array_equal(tensor_from_pb(good.outputs[0]).data, reference(x))
    assert misnamed.error.code == CODE.Value("CALL_ERROR_CODE_INVALID_INPUT")
    assert "unknown input 'pixels'" in misnamed.error.message
    assert unknown.error.code == CODE.Value("CALL_ERROR_CODE_MODEL_NOT_FOUND")
    assert keyless.error.code == CODE.Value("CALL_ERROR_CODE_INVALID_INPUT")


def test_ping_answers_while_a_model_loads(socket_dir: Path, sealed: Sealed, digits: Digits) -> None:
    """A model stuck in loading does not delay Ping."""
    release = threading.Event()

    def slow_open(key: ModelKey) -> bytes:
        release.wait(5)
        return sealed.registry.open_version(key.tenant_id, key.version_id)

    async def scenario() -> float:
        async with serving(socket_dir, slow_open) as stub:
            infer = asyncio.ensure_future(
                stub.Infer(worker_pb2.InferRequest(calls=[call(sealed.key, digits.x_test[:1])]))
            )
            await asyncio.sleep(0.1)
            started = time.monotonic()
            await stub.Ping(worker_pb2.PingRequest(), timeout=2)
            elapsed = time.monotonic() - started
            assert not infer.done()
            release.set()
            assert not (await infer).results[0].HasField("error")
            return elapsed

    assert asyncio.run(scenario()) < 0.5


def test_unexpected_failure_is_internal_and_generic(
    socket_dir: Path, sealed: Sealed, digits: Digits
) -> None:
    """An exception nobody expected answers INTERNAL with a fixed text, never its own words."""

    def broken_open(key: ModelKey) -> bytes:
        raise RuntimeError("cannot connect to postgres://admin:hunter2@db")

    async def scenario() -> worker_pb2.InferResult:
        async with serving(socket_dir, broken_open) as stub:
            reply = await stub.Infer(
                worker_pb2.InferRequest(calls=[call(sealed.key, digits.x_test[:1])])
            )
            return reply.results[0]

    result = asyncio.run(scenario())
    assert result.error.code == CODE.Value("CALL_ERROR_CODE_INTERNAL")
    assert result.error.message == INTERNAL_MESSAGE


def test_budget_spent_loading_is_deadline_exceeded(
    socket_dir: Path, sealed: Sealed, digits: Digits
) -> None:
    """A call whose timeout_ms runs out during the load fails; the load still completes."""

    def slow_open(key: ModelKey) -> bytes:
        time.sleep(0.3)
        return sealed.registry.open_version(key.tenant_id, key.version_id)

    async def scenario() -> tuple[worker_pb2.InferResult, worker_pb2.StatusResponse]:
        async with serving(socket_dir, slow_open) as stub:
            reply = await stub.Infer(
                worker_pb2.InferRequest(calls=[call(sealed.key, digits.x_test[:1], timeout_ms=50)])
            )
            await asyncio.sleep(0.5)
            return reply.results[0], await stub.Status(worker_pb2.StatusRequest())

    result, status = asyncio.run(scenario())
    assert result.error.code == CODE.Value("CALL_ERROR_CODE_DEADLINE_EXCEEDED")
    assert [m.model.model_version_id for m in status.models] == [sealed.key.version_id]


def test_load_status_and_unload(socket_dir: Path, sealed: Sealed) -> None:
    """Load is idempotent, Status lists what is held and its memory, Unload forgets it."""
    model = key_to_pb(sealed.key)

    async def scenario() -> None:
        async with serving(socket_dir, opener(sealed)) as stub:
            first = await stub.Load(worker_pb2.LoadRequest(model=model))
            again = await stub.Load(worker_pb2.LoadRequest(model=model))
            assert (first.newly_loaded, again.newly_loaded) == (True, False)
            assert first.model.bytes_used > len(sealed.model_bytes)
            ping = await stub.Ping(worker_pb2.PingRequest())
            status = await stub.Status(worker_pb2.StatusRequest())
            assert status.instance_id == ping.instance_id
            assert not ping.draining
            assert [entry.model for entry in status.models] == [model]
            assert status.in_flight == 0
            assert status.memory.models_bytes == first.model.bytes_used
            assert status.memory.rss_bytes > 10 * 2**20
            unloads = [await stub.Unload(worker_pb2.UnloadRequest(model=model)) for _ in range(2)]
            assert [reply.was_loaded for reply in unloads] == [True, False]
            assert not (await stub.Status(worker_pb2.StatusRequest())).models

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("version", "content", "status"),
    [
        ("00000000-0000-0000-0000-000000000000", None, grpc.StatusCode.NOT_FOUND),
        (None, b"\x00" * 64, grpc.StatusCode.FAILED_PRECONDITION),
        ("", None, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_load_failures_abort_with_the_mapped_status(
    socket_dir: Path, sealed: Sealed, version: str | None, content: bytes | None, status: Any
) -> None:
    """Unknown version, unloadable bytes and a half key abort Load with their own statuses."""
    key = sealed.put(content, model_name="broken") if content is not None else None
    model = (
        key_to_pb(key)
        if key
        else worker_pb2.ModelKey(tenant_id=sealed.tenant_id, model_version_id=version)
    )

    async def scenario() -> grpc.aio.AioRpcError:
        async with serving(socket_dir, opener(sealed)) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Load(worker_pb2.LoadRequest(model=model))
            return caught.value

    error = asyncio.run(scenario())
    assert error.code() == status
    assert "Traceback" not in (error.details() or "")


def _ping(socket: Path, timeout: float = 30) -> str:
    async def ping() -> str:
        async with grpc.aio.insecure_channel(f"unix:{socket}") as channel:
            reply = await worker_pb2_grpc.WorkerStub(channel).Ping(
                worker_pb2.PingRequest(), timeout=timeout, wait_for_ready=True
            )
            return str(reply.instance_id)

    return asyncio.run(ping())


def test_entry_point_ignores_sigint_and_drains_on_sigterm(socket_dir: Path, sealed: Sealed) -> None:
    """`python -m server.pool.worker --settings-json JSON` serves; SIGINT is ignored, SIGTERM ends it."""
    socket = socket_dir / "cli.sock"
    settings = settings_for_worker(sealed.settings).decode().strip()
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [
            sys.executable,
            "-m",
            "server.pool.worker",
            "--socket",
            str(socket),
            "--settings-json",
            settings,
        ]
    )
    try:
        instance = _ping(socket)
        process.send_signal(signal.SIGINT)
        time.sleep(0.3)
        assert process.poll() is None
        assert _ping(socket, timeout=5) == instance
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        process.kill()
        process.wait()


def test_pool_started_worker_exits_when_stdin_closes(socket_dir: Path, sealed: Sealed) -> None:
    """With settings on stdin, the closed pipe (the parent gone) ends the worker."""
    socket = socket_dir / "lifeline.sock"
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [
            sys.executable,
            "-m",
            "server.pool.worker",
            "--socket",
            str(socket),
            "--settings-json",
            "-",
        ],
        stdin=subprocess.PIPE,
    )
    try:
        assert process.stdin is not None
        process.stdin.write(settings_for_worker(sealed.settings))
        process.stdin.flush()
        _ping(socket)
        process.stdin.close()
        assert process.wait(10) == 0
    finally:
        process.kill()
        process.wait()


def test_a_warm_model_answers_a_frame_on_the_spot_each_call_on_its_own(
    sealed: Sealed, digits: Digits, reference: Reference
) -> None:
    """Once warm, a frame is answered without queueing, with the answers the queue gives.

    Good, misnamed, undecodable and keyless calls in one frame each get their
    own answer; a frame naming a model not loaded is left to the queue, unrun.
    """
    x = digits.x_test[:2]
    undecodable = call(sealed.key, x)
    del undecodable.inputs[0].shape[:]
    undecodable.inputs[0].shape.extend([3, 64])  # the bytes hold 2 rows
    frame = worker_pb2.InferRequest(
        calls=[
            call(sealed.key, x),
            call(sealed.key, x, name="pixels"),
            undecodable,
            worker_pb2.InferCall(model=worker_pb2.ModelKey(model_version_id="v")),
            call(sealed.key, digits.x_test[2:3]),
        ]
    )
    other = ModelKey(sealed.tenant_id, "00000000-0000-0000-0000-000000000000")

    async def scenario() -> tuple[worker_pb2.InferResponse, worker_pb2.InferResponse]:
        service = WorkerService(cache=ModelCache(open_model=opener(sealed)))
        try:
            assert service.answer_now(frame) is None  # cold: nothing is loaded yet
            queued = await service.infer(frame)
            answered = service.answer_now(frame)
            for _ in range(50):  # a first invocation on a busy machine may not count as quick
                if answered is not None:
                    break
                queued = await service.infer(frame)
                answered = service.answer_now(frame)
            assert answered is not None
            assert service.answer_now(worker_pb2.InferRequest(calls=[call(other, x)])) is None
            return queued, answered
        finally:
            service.close()

    queued, answered = asyncio.run(scenario())
    assert answered == queued
    good, misnamed, undecoded, keyless, single = answered.results
    assert np.array_equal(tensor_from_pb(good.outputs[0]).data, reference(x))
    assert np.array_equal(tensor_from_pb(single.outputs[0]).data, reference(digits.x_test[2:3]))
    assert "unknown input 'pixels'" in misnamed.error.message
    for refused in (misnamed, undecoded, keyless):
        assert refused.error.code == CODE.Value("CALL_ERROR_CODE_INVALID_INPUT")
