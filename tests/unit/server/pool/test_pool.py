"""A real pool of worker processes serves the sealed digits model like LiteRT in process.

Workers start once per module (``pool``, reached through ``served``); tests that kill, hang or stop
workers use pools of their own so the others keep a healthy one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pytest

from server.pool import supervision
from server.pool.pool import WorkerPool
from server.pool.process import settings_for_worker
from server.pool.status import WorkerState, WorkerStatus
from server.service.errors import DeadlineExceeded, InvalidRequest, ModelNotReady, Unavailable
from server.service.types import ModelKey, Tensor

from .conftest import DIGITS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator

    from .conftest import Digits, Reference, Sealed

TIMEOUT = 30.0
T = TypeVar("T")


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    """One event loop for the module, so a pool and its channels outlive a single test."""
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture(scope="module")
def socket_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short parent for socket directories (Unix socket paths are limited)."""
    return tmp_path_factory.mktemp("s")


@pytest.fixture(scope="module")
def pool(runner: asyncio.Runner, sealed: Sealed, socket_root: Path) -> Iterator[WorkerPool]:
    """Two workers serving the sealed registry, for the whole module."""
    pool = WorkerPool(sealed.settings, workers=2, socket_dir=socket_root / "shared")
    runner.run(pool.start())
    yield pool
    runner.run(pool.stop(5))


@dataclass(frozen=True)
class Served:
    """The module's event loop, its shared pool, the registry behind it, and a socket root."""

    runner: asyncio.Runner
    pool: WorkerPool
    sealed: Sealed
    socket_root: Path

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the module's loop (the pool's channels live there)."""
        return self.runner.run(coroutine)


@pytest.fixture(scope="module")
def served(runner: asyncio.Runner, pool: WorkerPool, sealed: Sealed, socket_root: Path) -> Served:
    """Everything a test of the shared pool needs, in one fixture."""
    return Served(runner=runner, pool=pool, sealed=sealed, socket_root=socket_root)


@pytest.fixture(scope="module")
def big_key(sealed: Sealed) -> ModelKey:
    """The digits model padded to 64 MiB: it computes the same, but takes a while to unseal."""
    return sealed.put(DIGITS.read_bytes() + os.urandom(64 * 2**20), model_name="digits-padded")


@contextlib.asynccontextmanager
async def own_pool(sealed: Sealed, socket_dir: Path, workers: int) -> AsyncIterator[WorkerPool]:
    """A pool for one test, stopped at the end whatever happens."""
    pool = WorkerPool(sealed.settings, workers=workers, socket_dir=socket_dir)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.stop(5)


def tensor(x: np.ndarray, *, name: str = "input", datatype: str = "FP32") -> Tensor:
    """An input tensor over ``x``."""
    return Tensor(name=name, datatype=datatype, shape=tuple(x.shape), data=x)


async def predict(pool: WorkerPool, key: ModelKey, x: np.ndarray, **kwargs: Any) -> np.ndarray:
    """The model's probabilities for ``x``, through the pool."""
    (out,) = await pool.infer(key, [tensor(x)], [], request_id=None, timeout=TIMEOUT, **kwargs)
    return out.data


async def eventually(check: Callable[[], Awaitable[Any]], *, within: float = 15.0) -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.002)
    pytest.fail(f"condition not met within {within} s")


def holders(statuses: list[WorkerStatus], key: ModelKey) -> list[int]:
    """Indexes of the workers that report holding ``key``."""
    return [s.index for s in statuses if any(m.key == key for m in s.models)]


def gone(pid: int) -> bool:
    """The process no longer exists, or is a zombie nobody reaped yet."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except FileNotFoundError:
        return True
    return text.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def first(pool: WorkerPool, match: Callable[[WorkerStatus], bool]) -> WorkerStatus | None:
    """The first worker whose status matches, if any."""
    return next((s for s in await pool.status() if match(s)), None)


def test_start_returns_with_every_worker_live(served: Served) -> None:
    """start() returns once each worker answered Ping; sockets sit in a 0700 directory."""
    statuses = served.run(served.pool.status())
    assert [s.state for s in statuses] == [WorkerState.LIVE] * 2
    assert len({s.pid for s in statuses}) == 2
    assert all(s.instance_id and s.rss_bytes for s in statuses)
    assert stat.S_IMODE((served.socket_root / "shared").stat().st_mode) == 0o700


@pytest.mark.parametrize("batch", [1, 32])
def test_outputs_equal_in_process_litert(
    served: Served, digits: Digits, reference: Reference, batch: int
) -> None:
    """A batch through the pool comes back bit for bit as LiteRT computes it in process."""
    x = digits.x_test[:batch]
    (out,) = served.run(
        served.pool.infer(
            served.sealed.key, [tensor(x)], ["probabilities"], request_id="r-1", timeout=TIMEOUT
        )
    )
    assert (out.name, out.datatype, out.shape) == ("probabilities", "FP32", (batch, 10))
    assert np.array_equal(out.data, reference(x))


def test_accuracy_on_the_test_split_equals_in_process(
    served: Served, digits: Digits, reference: Reference
) -> None:
    """Every prediction on the 450 test images matches in-process LiteRT, so accuracy does too."""
    batches = [digits.x_test[i : i + 32] for i in range(0, len(digits.x_test), 32)]

    async def scenario() -> np.ndarray:
        return np.concatenate([await predict(served.pool, served.sealed.key, x) for x in batches])

    served_labels = served.run(scenario()).argmax(axis=1)
    local_labels = np.concatenate([reference(x) for x in batches]).argmax(axis=1)
    assert np.array_equal(served_labels, local_labels)
    accuracy = float((served_labels == digits.y_test).mean())
    assert accuracy == float((local_labels == digits.y_test).mean())
    assert accuracy > 0.97


def test_sequential_calls_stay_on_one_worker(served: Served, digits: Digits) -> None:
    """Model affinity: calls one after another never load the model on a second worker."""
    key = served.sealed.put(DIGITS.read_bytes(), model_name="digits-affinity")

    async def scenario() -> None:
        for i in range(20):
            await predict(served.pool, key, digits.x_test[i : i + 1])

    served.run(scenario())
    assert len(holders(served.run(served.pool.status()), key)) == 1


def test_concurrent_calls_are_all_answered(
    served: Served, digits: Digits, reference: Reference
) -> None:
    """Sixty-four calls at once all get their own, correct answers."""
    rows = [digits.x_test[i : i + 1] for i in range(64)]

    async def scenario() -> list[np.ndarray]:
        return await asyncio.gather(*(predict(served.pool, served.sealed.key, x) for x in rows))

    for row, result in zip(rows, served.run(scenario()), strict=True):
        assert np.array_equal(result, reference(row))


def test_load_places_a_model_ahead_of_its_first_call(served: Served, digits: Digits) -> None:
    """load() puts the model on one worker, which then serves it."""
    key = served.sealed.put(DIGITS.read_bytes(), model_name="digits-preloaded")
    served.run(served.pool.load(key))
    statuses = served.run(served.pool.status())
    (index,) = holders(statuses, key)
    (entry,) = [m for m in statuses[index].models if m.key == key]
    assert entry.bytes_used > DIGITS.stat().st_size
    served.run(predict(served.pool, key, digits.x_test[:1]))
    assert holders(served.run(served.pool.status()), key) == [index]


@pytest.mark.parametrize("version_of", ["missing", "other tenant"])
def test_unknown_version_is_model_not_ready(
    served: Served, digits: Digits, version_of: str
) -> None:
    """A version that does not exist in the tenant (or exists only in another) is not served."""
    sealed = served.sealed
    if version_of == "missing":
        key = ModelKey(sealed.tenant_id, "00000000-0000-0000-0000-000000000000")
    else:
        other = sealed.registry.create_tenant("other")
        key = ModelKey(other.id, sealed.key.version_id)
    with pytest.raises(ModelNotReady, match="not available") as caught:
        served.run(predict(served.pool, key, digits.x_test[:1]))
    assert caught.value.detail == "the model version does not exist"
    with pytest.raises(ModelNotReady):
        served.run(served.pool.load(key))


@pytest.mark.parametrize(
    ("inputs", "outputs", "message"),
    [
        ([tensor(np.zeros((1, 64), np.float32), name="pixels")], [], "unknown input 'pixels'"),
        ([tensor(np.zeros((2, 65), np.float32))], [], r"input 'input': shape \[2, 65\]"),
        ([tensor(np.zeros((1, 64)), datatype="FP64")], [], "input 'input': datatype FP64"),
        ([tensor(np.zeros((1, 64), np.float32))], ["logits"], "unknown output 'logits'"),
    ],
)
def test_misfit_calls_are_invalid_requests_naming_the_tensor(
    served: Served, inputs: list[Tensor], outputs: list[str], message: str
) -> None:
    """Wrong input name, shape, dtype or output name: InvalidRequest that names it."""
    with pytest.raises(InvalidRequest, match=message):
        served.run(
            served.pool.infer(served.sealed.key, inputs, outputs, request_id=None, timeout=TIMEOUT)
        )


def test_call_out_of_time_is_deadline_exceeded(served: Served, digits: Digits) -> None:
    """A budget too small for the hop ends as DeadlineExceeded, not a hang or a crash."""
    call = served.pool.infer(
        served.sealed.key, [tensor(digits.x_test[:1])], [], request_id=None, timeout=1e-6
    )
    with pytest.raises(DeadlineExceeded):
        served.run(call)


def test_worker_killed_mid_load_is_retried_and_restarted(
    served: Served, big_key: ModelKey, digits: Digits, reference: Reference
) -> None:
    """SIGKILL while a worker unseals a model: the call is answered elsewhere, the worker returns."""
    pool, x = served.pool, digits.x_test[:4]

    async def scenario() -> tuple[np.ndarray, WorkerStatus, WorkerStatus]:
        call = asyncio.ensure_future(predict(pool, big_key, x))

        async def loading() -> WorkerStatus | None:
            assert not call.done(), "the load finished before the worker could be killed"
            return await first(
                pool,
                lambda s: bool(s.worker_in_flight) and big_key not in {m.key for m in s.models},
            )

        victim = await eventually(loading)
        os.kill(victim.pid, signal.SIGKILL)
        result = await call

        async def restarted() -> WorkerStatus | None:
            status = (await pool.status())[victim.index]
            return status if status.state is WorkerState.LIVE and status.pid != victim.pid else None

        return result, victim, await eventually(restarted)

    result, victim, back = served.run(scenario())
    assert np.array_equal(result, reference(x))
    assert back.restarts == victim.restarts + 1
    assert back.instance_id != victim.instance_id
    assert gone(victim.pid or 0)
    assert np.array_equal(served.run(predict(pool, big_key, x)), reference(x))


def test_single_worker_call_is_retried_on_its_restarted_self(
    served: Served, big_key: ModelKey, digits: Digits
) -> None:
    """With no other worker, the retry waits for the restart instead of failing."""

    async def scenario() -> np.ndarray:
        async with own_pool(served.sealed, served.socket_root / "single", 1) as pool:
            call = asyncio.ensure_future(predict(pool, big_key, digits.x_test[:1]))
            status = await eventually(lambda: first(pool, lambda s: bool(s.worker_in_flight)))
            os.kill(status.pid, signal.SIGKILL)
            return await call

    assert served.run(scenario()).shape == (1, 10)


def test_hung_worker_is_killed_and_replaced(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that stops answering Ping (SIGSTOP) is killed and a new one started."""
    monkeypatch.setattr(supervision, "PING_INTERVAL", 0.1)
    monkeypatch.setattr(supervision, "PING_TIMEOUT", 0.2)
    monkeypatch.setattr(supervision, "PING_FAILURES", 2)

    async def scenario() -> tuple[int, WorkerStatus]:
        async with own_pool(served.sealed, served.socket_root / "hung", 1) as pool:
            (before,) = await pool.status()
            assert before.pid is not None
            os.kill(before.pid, signal.SIGSTOP)
            after = await eventually(
                lambda: first(pool, lambda s: s.state is WorkerState.LIVE and s.pid != before.pid)
            )
            return before.pid, after

    old_pid, after = served.run(scenario())
    assert after.restarts == 1
    assert gone(old_pid)


def test_the_snapshot_shows_a_restart_as_it_happens(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/metrics reads the snapshot: a killed worker's return shows without waiting for the interval."""
    monkeypatch.setattr(supervision, "STATUS_INTERVAL", 3600.0)

    async def scenario() -> tuple[int, list[WorkerStatus]]:
        async with own_pool(served.sealed, served.socket_root / "snapshot", 1) as pool:
            (before,) = await pool.status()
            assert before.pid is not None
            os.kill(before.pid, signal.SIGKILL)

            async def back() -> list[WorkerStatus] | None:
                snapshot = pool.snapshot
                if [s.state for s in snapshot] == [WorkerState.LIVE] and snapshot[0].pid not in (
                    None,
                    before.pid,
                ):
                    return snapshot
                return None

            return before.pid, await eventually(back)

    old_pid, (after,) = served.run(scenario())
    assert after.restarts == 1
    assert after.pid != old_pid


def test_stop_drains_then_leaves_no_child_process(
    served: Served, big_key: ModelKey, digits: Digits, reference: Reference
) -> None:
    """stop() lets a running call finish, refuses new ones, and ends and reaps every worker."""
    socket_dir = served.socket_root / "stop"
    pool = WorkerPool(served.sealed.settings, workers=2, socket_dir=socket_dir)
    x = digits.x_test[:1]

    async def scenario() -> tuple[np.ndarray, list[int]]:
        await pool.start()
        pids = [s.pid for s in await pool.status() if s.pid is not None]
        call = asyncio.ensure_future(predict(pool, big_key, x))
        await eventually(lambda: first(pool, lambda s: bool(s.in_flight)))
        stopping = asyncio.ensure_future(pool.stop(10))
        await asyncio.sleep(0)
        with pytest.raises(Unavailable):
            await predict(pool, served.sealed.key, x)
        result = await call
        await stopping
        return result, pids

    result, pids = served.run(scenario())
    assert np.array_equal(result, reference(x))
    assert len(pids) == 2
    assert all(gone(pid) for pid in pids)
    assert not list(socket_dir.glob("*.sock"))
    assert all(s.pid is None for s in served.run(pool.status()))


_PARENT = """
import asyncio, sys
from pathlib import Path
from server.pool.pool import WorkerPool
from server.settings import Settings

async def main():
    settings = Settings.model_validate_json(sys.stdin.readline())
    pool = WorkerPool(settings, workers=2, socket_dir=Path(sys.argv[1]))
    await pool.start()
    print("PIDS", *[s.pid for s in await pool.status()], flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_workers_die_with_their_parent(
    sealed: Sealed, socket_root: Path, sig: signal.Signals
) -> None:
    """A gateway killed without stop() (SIGTERM unhandled, or SIGKILL) leaves no orphan worker."""
    parent = subprocess.Popen(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", _PARENT, str(socket_root / f"orphans-{sig.name}")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert parent.stdin is not None
        assert parent.stdout is not None
        parent.stdin.write(settings_for_worker(sealed.settings))
        parent.stdin.flush()
        line = b""
        while not line.startswith(b"PIDS"):
            line = parent.stdout.readline()
            assert line, "the parent exited before starting its workers"
        pids = [int(pid) for pid in line.split()[1:]]
        assert len(pids) == 2
        assert not any(gone(pid) for pid in pids)
        parent.send_signal(sig)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert all(gone(pid) for pid in pids)
    finally:
        parent.kill()
        parent.wait()
        for stream in (parent.stdin, parent.stdout):
            if stream is not None:
                stream.close()


def test_loading_a_model_does_not_stall_calls_to_another(
    served: Served, big_key: ModelKey, digits: Digits, reference: Reference
) -> None:
    """While one worker unseals a 64 MiB model, its calls on a loaded model keep flowing."""
    x = digits.x_test[:1]

    async def scenario() -> tuple[float, list[float]]:
        async with own_pool(served.sealed, served.socket_root / "stall", 1) as pool:
            await predict(pool, served.sealed.key, x)  # loaded, warm
            started = time.monotonic()
            load = asyncio.ensure_future(pool.load(big_key))
            latencies = []
            while not load.done():
                begin = time.monotonic()
                assert np.array_equal(await predict(pool, served.sealed.key, x), reference(x))
                latencies.append(time.monotonic() - begin)
            await load
            return time.monotonic() - started, latencies

    load_seconds, latencies = served.run(scenario())
    assert len(latencies) > 10
    # The load takes far longer than any call made meanwhile.
    assert max(latencies) < max(0.1, load_seconds / 4), (load_seconds, max(latencies))
