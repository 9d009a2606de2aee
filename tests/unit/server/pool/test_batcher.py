"""Concurrent calls for one model are stacked into few invocations, each answered on its own."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from server.pool import batcher as batcher_module
from server.pool.batcher import Batcher, BatchStats
from server.pool.errors import DEADLINE_EXCEEDED, INVALID_INPUT, OVERLOADED, CallFailed
from server.pool.runtime import LoadedModel
from server.service.types import Tensor

from .conftest import DIGITS, Digits, Reference


def _input(x: np.ndarray, name: str = "input") -> Tensor:
    return Tensor(name=name, datatype="FP32", shape=tuple(x.shape), data=x)


@pytest.fixture
def model() -> LoadedModel:
    """A fresh demo model per test (batching may mark a model unbatchable)."""
    return LoadedModel.load(DIGITS.read_bytes())


def test_run_many_stacks_calls_and_splits_rows_back(
    model: LoadedModel, digits: Digits, reference: Reference
) -> None:
    """Calls of 1, 3 and 2 rows run as one batch of 6 and each gets exactly its own rows."""
    sizes = [1, 3, 2]
    starts = np.cumsum([0, *sizes])
    calls = [([_input(digits.x_test[a:b])], []) for a, b in itertools.pairwise(starts)]
    results = model.run_many(calls)
    for (a, b), result in zip(itertools.pairwise(starts), results, strict=True):
        assert not isinstance(result, Exception)
        (out,) = result
        assert out.shape == (b - a, 10)
        assert np.allclose(out.data, reference(digits.x_test[a:b]), atol=1e-6)
    assert model.batchable


def test_run_many_refills_the_interpreter_after_a_batch_of_another_size(
    model: LoadedModel, digits: Digits, reference: Reference
) -> None:
    """Batches of 450, then 150, then 450 rows: each one's rows land where its outputs say.

    The large batches' calls are copied straight into the interpreter's input
    buffer (115 KB, past ``DIRECT_BYTES``), which moves whenever a new batch
    size resizes it; the small one goes through ``np.concatenate``.
    """
    for sizes in ([300, 150], [100, 50], [200, 250]):
        starts = np.cumsum([0, *sizes])
        calls = [([_input(digits.x_test[a:b])], []) for a, b in itertools.pairwise(starts)]
        results = model.run_many(calls)
        for (a, b), result in zip(itertools.pairwise(starts), results, strict=True):
            assert not isinstance(result, Exception)
            assert np.allclose(result[0].data, reference(digits.x_test[a:b]), atol=1e-6)


def test_run_many_keeps_a_misfit_call_apart(model: LoadedModel, digits: Digits) -> None:
    """A call with a wrong input fails alone; its neighbours are answered."""
    good = ([_input(digits.x_test[:1])], [])
    bad = ([_input(digits.x_test[:1], name="nope")], [])
    results = model.run_many([good, bad, good])
    assert isinstance(results[1], CallFailed)
    assert results[1].code == INVALID_INPUT
    assert not isinstance(results[0], Exception)
    assert not isinstance(results[2], Exception)


def test_batcher_groups_waiting_calls(
    model: LoadedModel, digits: Digits, reference: Reference
) -> None:
    """Calls queued while the interpreter is busy go in one invocation, up to max_batch rows."""
    executor = ThreadPoolExecutor(1)
    gate = threading.Event()
    stats = BatchStats()

    async def scenario() -> list[list[Tensor]]:
        batcher = Batcher(
            model, executor=executor, max_batch=8, max_delay=0, max_queue=100, stats=stats
        )
        executor.submit(gate.wait, 5)  # the inference thread is busy
        calls = [
            asyncio.ensure_future(
                batcher.submit([_input(digits.x_test[i : i + 1])], [], deadline=None)
            )
            for i in range(12)
        ]
        await asyncio.sleep(0.05)
        assert batcher.queued == 4  # 8 went to the (busy) thread together
        gate.set()
        return await asyncio.gather(*calls)

    results = asyncio.run(scenario())
    executor.shutdown()
    for i, (out,) in enumerate(results):
        assert np.allclose(out.data, reference(digits.x_test[i : i + 1]), atol=1e-6)
    assert (stats.calls, stats.batches, stats.rows) == (12, 2, 12)


def test_full_queue_is_overloaded_and_expired_calls_are_not_run(
    model: LoadedModel, digits: Digits
) -> None:
    """Past max_queue a call is refused at once; a call out of time while queued is not run."""
    executor = ThreadPoolExecutor(1)
    gate = threading.Event()

    async def scenario() -> None:
        batcher = Batcher(model, executor=executor, max_batch=4, max_delay=0, max_queue=2)
        executor.submit(gate.wait, 5)
        loop = asyncio.get_running_loop()
        x = [_input(digits.x_test[:1])]
        expired = asyncio.ensure_future(batcher.submit(x, [], deadline=0.0))
        kept = asyncio.ensure_future(batcher.submit(x, [], deadline=None))
        await asyncio.sleep(0)
        with pytest.raises(CallFailed) as refused:
            await batcher.submit(x, [], deadline=None)
        assert refused.value.code == OVERLOADED
        gate.set()
        with pytest.raises(CallFailed) as late:
            await expired
        assert late.value.code == DEADLINE_EXCEEDED
        assert (await kept)[0].shape == (1, 10)
        del loop

    asyncio.run(scenario())
    executor.shutdown()


def test_max_delay_holds_a_lone_call_to_fill_a_batch(model: LoadedModel, digits: Digits) -> None:
    """With a queue delay, calls arriving within it share one invocation."""
    executor = ThreadPoolExecutor(1)
    stats = BatchStats()

    async def scenario() -> None:
        batcher = Batcher(
            model, executor=executor, max_batch=4, max_delay=0.05, max_queue=10, stats=stats
        )
        x = [_input(digits.x_test[:1])]
        first = asyncio.ensure_future(batcher.submit(x, [], deadline=None))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(batcher.submit(x, [], deadline=None))
        await asyncio.gather(first, second)

    asyncio.run(scenario())
    executor.shutdown()
    assert (stats.calls, stats.batches) == (2, 1)


def test_model_without_batch_dimension_runs_calls_one_by_one(digits: Digits) -> None:
    """A model whose outputs do not follow the rows is marked unbatchable and still answers."""
    model = LoadedModel.load(DIGITS.read_bytes())
    model.batchable = False
    calls = [([_input(digits.x_test[i : i + 1])], []) for i in range(3)]
    results = model.run_many(calls)
    assert all(not isinstance(r, Exception) and r[0].shape == (1, 10) for r in results)


class _Timed:
    """A real model behind a wrapper that records the thread of each invocation and can be slow."""

    def __init__(self, model: LoadedModel, *, extra_seconds: float) -> None:
        self._model = model
        self._extra = extra_seconds
        self.batchable = model.batchable
        self.threads: list[str] = []

    def run_many(self, calls):
        self.threads.append(threading.current_thread().name)
        if self._extra:  # a slow model computes: it does not sleep
            until = time.thread_time() + self._extra
            while time.thread_time() < until:
                pass
        return self._model.run_many(calls)


@pytest.mark.parametrize(("extra", "inline"), [(0.0, True), (0.002, False)])
def test_quick_models_run_on_the_loop_slow_ones_on_the_inference_thread(
    model: LoadedModel, digits: Digits, extra: float, *, inline: bool
) -> None:
    """A model whose invocations average under INLINE_SECONDS moves to the loop; a slower one never."""
    timed = _Timed(model, extra_seconds=extra)

    async def scenario() -> list[list[Tensor]]:
        with ThreadPoolExecutor(1, thread_name_prefix="inference") as pool:
            batcher = Batcher(timed, executor=pool, max_batch=8, max_delay=0, max_queue=64)  # type: ignore[arg-type]
            results = []
            for row in range(20):
                x = digits.x_test[row : row + 1]
                results.append(await batcher.submit([_input(x)], [], deadline=None))
            assert batcher.quick is inline
            return results

    results = asyncio.run(scenario())
    assert timed.threads[0].startswith("inference")  # the first time is never trusted
    settled = {name.startswith("inference") for name in timed.threads[10:]}
    assert settled == {not inline}
    assert all(out.shape == (1, 10) for (out,) in results)


def test_the_wait_for_the_inference_thread_is_not_counted_as_the_models_time(
    model: LoadedModel, digits: Digits, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quick model stays quick though its first call waited 50 ms for a busy thread.

    Counting that wait kept a quick model on the thread (and its calls off the
    fast path) for as long as the loop was busy. The threshold is raised to
    20 ms here: on a virtual machine the digits model's first call on a thread
    that just woke up was measured at 0.6-1.3 ms of that thread's CPU time,
    past the real 0.5 ms, while a counted wait would be 50 ms or more.
    """
    monkeypatch.setattr(batcher_module, "INLINE_SECONDS", 0.02)
    executor = ThreadPoolExecutor(1)

    async def scenario() -> Batcher:
        batcher = Batcher(model, executor=executor, max_batch=4, max_delay=0, max_queue=10)
        executor.submit(threading.Event().wait, 0.05)  # busy when the first call arrives
        await batcher.submit([_input(digits.x_test[:1])], [], deadline=None)
        return batcher

    batcher = asyncio.run(scenario())
    executor.shutdown()
    assert batcher.quick


def test_run_now_answers_at_once_in_batches_of_max_batch_rows(
    model: LoadedModel, digits: Digits, reference: Reference
) -> None:
    """Only a quick model with nothing ahead may skip the queue; it still batches by rows."""
    executor = ThreadPoolExecutor(1)
    stats = BatchStats()

    warm = 0

    async def scenario() -> list[list[Tensor] | Exception]:
        nonlocal warm
        batcher = Batcher(
            model, executor=executor, max_batch=4, max_delay=0, max_queue=10, stats=stats
        )

        async def until_quick() -> None:
            # One single-row run makes it quick, unless a busy machine slowed that run.
            nonlocal warm
            for _ in range(50):
                await batcher.submit([_input(digits.x_test[:1])], [], deadline=None)
                warm += 1
                if batcher.ready_now:
                    return

        assert not batcher.ready_now  # never timed yet: not trusted to be quick
        await until_quick()
        assert batcher.ready_now
        queued = asyncio.ensure_future(
            batcher.submit([_input(digits.x_test[:1])], [], deadline=None)
        )
        await asyncio.sleep(0)  # it is queued; its drain has not run yet
        busy = batcher.ready_now  # a call waits ahead: later ones must queue behind it
        await queued
        assert not busy
        if not batcher.ready_now:
            await until_quick()
        assert batcher.ready_now
        calls = [
            ([_input(digits.x_test[0:3])], []),
            ([_input(digits.x_test[3:4], name="nope")], []),
            ([_input(digits.x_test[4:6])], []),
        ]
        return batcher.run_now(calls)

    first, misnamed, last = asyncio.run(scenario())
    executor.shutdown()
    assert isinstance(misnamed, CallFailed)
    assert misnamed.code == INVALID_INPUT
    assert not isinstance(first, Exception)
    assert not isinstance(last, Exception)
    assert np.allclose(first[0].data, reference(digits.x_test[0:3]), atol=1e-6)
    assert np.allclose(last[0].data, reference(digits.x_test[4:6]), atol=1e-6)
    # 3 + 1 rows fill the first invocation; the last 2 rows go in a second one.
    assert (stats.calls, stats.batches, stats.rows) == (warm + 1 + 3, warm + 1 + 2, warm + 1 + 6)
