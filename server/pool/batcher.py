"""Dynamic batching inside a worker: one queue per loaded model, drained into its interpreter.

Calls for a model wait in its queue while the worker's inference thread is
busy; when the thread is free the batcher takes what waits (up to
``max_batch`` rows) and hands it over in one step, which ``LoadedModel.run_many``
stacks into a single invocation where the model has a batch dimension. So
batching costs nothing at low load (a lone call runs at once) and grows with
the load, which is when it pays. ``max_delay`` optionally holds a short batch
back to let it fill; the default (0) never waits on purpose. A model that is
not batchable (no variable batch dimension, or outputs that turned out not
to follow the rows) gets batches of one call and is never held back,
whatever the limits say.

Invocations run on the worker's inference thread, so a long one never
delays ``Ping`` or ``Status``; but a small model runs in microseconds, less
than the two thread hand-overs cost, so a model whose recent invocations
took under ``INLINE_SECONDS`` of CPU is run on the event loop itself (which
then waits about that long).

The queue is bounded (``max_queue`` calls): past it a call is refused at once
as ``OVERLOADED`` rather than left to wait out its deadline. A call whose
budget ran out while it waited is answered ``DEADLINE_EXCEEDED`` without
being run.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from server.pool.errors import DEADLINE_EXCEEDED, OVERLOADED, CallFailed

if TYPE_CHECKING:
    from collections.abc import Sequence
    from concurrent.futures import Executor

    from server.pool.runtime import LoadedModel
    from server.service.types import Tensor

INLINE_SECONDS = 0.0005
"""Below this recent invocation time a model runs on the event loop, not the inference thread."""
_RECENT_WEIGHT = 0.2
"""Weight of the newest invocation in the running average of invocation times."""
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""Upper bounds of the batch-size histogram a worker reports (rows per invocation)."""


@dataclass(slots=True)
class BatchStats:
    """What a model's batcher has run: calls, invocations and their sizes (rows)."""

    calls: int = 0
    batches: int = 0
    rows: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BATCH_BUCKETS) + 1))

    def record(self, calls: int, rows: int) -> None:
        """Count one invocation of ``calls`` calls totalling ``rows`` rows."""
        self.calls += calls
        self.batches += 1
        self.rows += rows
        for index, bound in enumerate(BATCH_BUCKETS):
            if rows <= bound:
                self.buckets[index] += 1
                return
        self.buckets[-1] += 1


@dataclass(slots=True)
class _Waiting:
    inputs: Sequence[Tensor]
    outputs: Sequence[str]
    rows: int
    deadline: float | None
    future: asyncio.Future[list[Tensor]]


class Batcher:
    """The queue in front of one loaded model."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        executor: Executor,
        max_batch: int,
        max_delay: float,
        max_queue: int,
        stats: BatchStats | None = None,
    ) -> None:
        self.model = model
        self._executor = executor
        self._max_batch = max_batch
        self._max_delay = max_delay
        self._max_queue = max_queue
        self._queue: deque[_Waiting] = deque()
        self._task: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()
        self.stats = stats or BatchStats()
        self._recent: float | None = None
        """Running average of this model's invocation times (seconds); None until one ran."""

    @property
    def _limit(self) -> int:
        """Rows per invocation now: ``max_batch``, or one call for a model that cannot stack."""
        return self._max_batch if self.model.batchable else 1

    @property
    def queued(self) -> int:
        """Calls waiting for the interpreter (not counting the batch running now)."""
        return len(self._queue)

    async def submit(
        self, inputs: Sequence[Tensor], outputs: Sequence[str], *, deadline: float | None
    ) -> list[Tensor]:
        """Queue one call and wait for its outputs; raises its ``CallFailed`` or error."""
        if len(self._queue) >= self._max_queue:
            raise CallFailed(OVERLOADED, "the model's queue on this worker is full")
        loop = asyncio.get_running_loop()
        rows = _rows(inputs) if self.model.batchable else 1
        waiting = _Waiting(inputs, outputs, rows, deadline, loop.create_future())
        self._queue.append(waiting)
        self._arrived.set()
        if self._task is None:
            self._task = loop.create_task(self._drain())
        return await waiting.future

    @property
    def ready_now(self) -> bool:
        """Whether calls may skip the queue and run at once on the event loop (``run_now``).

        True for a quick model with nothing queued or running ahead and no
        ``max_delay`` to wait out: queueing would add a task, a future per
        call and a loop turn to an invocation of microseconds.
        """
        return (
            not self._queue
            and self._task is None
            and self.quick
            and (self._max_delay <= 0 or self._limit == 1)
        )

    def run_now(
        self, calls: Sequence[tuple[Sequence[Tensor], Sequence[str]]]
    ) -> list[list[Tensor] | Exception]:
        """Run ``calls`` now (when ``ready_now``), in batches of at most ``max_batch`` rows."""
        limit = self._limit
        results: list[list[Tensor] | Exception] = []
        batch: list[tuple[Sequence[Tensor], Sequence[str]]] = []
        rows = 0
        for call in calls:
            count = _rows(call[0]) if limit > 1 else 1
            if batch and rows + count > limit:
                results += self._run_batch(batch, rows)
                batch, rows = [], 0
            batch.append(call)
            rows += count
        results += self._run_batch(batch, rows)
        return results

    def _run_batch(
        self, batch: list[tuple[Sequence[Tensor], Sequence[str]]], rows: int
    ) -> list[list[Tensor] | Exception]:
        try:
            results = self._run_many(batch)
        except Exception as exc:  # noqa: BLE001 - every call of the batch gets it
            return [exc] * len(batch)
        self.stats.record(len(batch), rows)
        return results

    def _run_many(
        self, calls: Sequence[tuple[Sequence[Tensor], Sequence[str]]]
    ) -> list[list[Tensor] | Exception]:
        """``run_many``, timed in the CPU time of the thread it runs on.

        The interpreter runs in the calling thread (``num_threads=1``), so that
        is the model's own time. A hand-over to the inference thread and back,
        a wait for the interpreter lock, or a moment the process lost its CPU
        to another is not: counting the hand-over kept a quick model off the
        event loop for good once the loop was busy, and counting the others
        moved it off whenever the machine was crowded.
        """
        started = time.thread_time()
        try:
            return self.model.run_many(calls)
        finally:
            self._timed(time.thread_time() - started)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                if self._max_delay > 0 and self.model.batchable:
                    await self._fill(self._queue[0], loop)
                batch = self._take()
                if not batch:
                    continue
                calls = [(waiting.inputs, waiting.outputs) for waiting in batch]
                try:
                    if self.quick:
                        results = self._run_many(calls)
                    else:
                        results = await loop.run_in_executor(self._executor, self._run_many, calls)
                except Exception as exc:  # noqa: BLE001 - every waiting call gets it
                    for waiting in batch:
                        _settle(waiting.future, exc)
                    continue
                self.stats.record(len(batch), sum(waiting.rows for waiting in batch))
                for waiting, result in zip(batch, results, strict=True):
                    _settle(waiting.future, result)
        finally:
            self._task = None

    @property
    def quick(self) -> bool:
        """Whether the model's recent invocations were quick enough to run on the loop."""
        return self._recent is not None and self._recent < INLINE_SECONDS

    def _timed(self, seconds: float) -> None:
        recent = self._recent
        self._recent = seconds if recent is None else recent + _RECENT_WEIGHT * (seconds - recent)

    async def _fill(self, first: _Waiting, loop: asyncio.AbstractEventLoop) -> None:
        """Hold a short batch back until it is full or ``max_delay`` passed since now."""
        until = loop.time() + self._max_delay
        while sum(w.rows for w in self._queue) < self._limit and self._queue[0] is first:
            left = until - loop.time()
            if left <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                return

    def _take(self) -> list[_Waiting]:
        """Calls for the next invocation: at least one, at most ``max_batch`` rows."""
        batch: list[_Waiting] = []
        rows = 0
        limit = self._limit
        clock = time.monotonic()
        while self._queue:
            waiting = self._queue[0]
            if batch and rows + waiting.rows > limit:
                break
            self._queue.popleft()
            if waiting.future.done():  # the caller went away
                continue
            if waiting.deadline is not None and clock >= waiting.deadline:
                waiting.future.set_exception(
                    CallFailed(DEADLINE_EXCEEDED, "the call's time ran out while it was queued")
                )
                continue
            batch.append(waiting)
            rows += waiting.rows
        return batch


def _rows(inputs: Sequence[Tensor]) -> int:
    shape = inputs[0].data.shape if inputs else ()
    return int(shape[0]) if shape else 1


def _settle(future: asyncio.Future[list[Tensor]], result: list[Tensor] | BaseException) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
