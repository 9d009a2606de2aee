"""Coalescing in the gateway: concurrent calls to one worker share one ``Infer`` RPC.

A gRPC round trip over the Unix socket costs far more than a small model's
invocation (hundreds of microseconds against a few), so sending every call
as its own RPC makes the hop the bottleneck. Each worker gets a
``Coalescer``: at most ``max_rpcs`` RPCs in flight; a call that arrives
while they are all busy waits, and when one returns every waiting call (up
to ``max_calls``) leaves in the next RPC. At low load a call is sent at once
(nothing waits, nothing is added); under load the calls per RPC grow with
the load, which is what the worker's batcher then stacks into one invocation.

Calls that do not arrive in the same turn of the loop (gRPC hands each
call over on its own) would still leave one per RPC while RPCs are free, so
when traffic is dense (the last RPC left less than ``DENSE_WINDOW`` delays
ago) a call waits up to ``max_delay`` for company, like Nagle's algorithm:
at low load nothing waits. A call that came in a turn of its own (gRPC)
finds no company that way, so while the gateway's event loop is busy nearly
all the time (``server.pool.loopload``), when calls queue anyway and each
trip costs time the loop lacks, such a call waits ``busy_delay`` instead.
(REST calls parsed in one turn go together already; making them wait as
well cost REST 13-20% of its throughput.)

A trip also carries at most ``max_bytes`` of input (a larger call goes
alone): concurrent large calls would otherwise share one message past the
worker's frame and gRPC limits (64 MiB), and every one of them would fail.
Answers can outgrow their calls, so the worker also keeps each answer under
those limits (``server.pool.worker_service.fitted``): a call whose outputs
did not fit comes back ``ANSWER_TOO_LARGE`` and is sent again, alone.

The waiting list is bounded (``max_pending``): past it a call is refused as
``Overloaded``. When the worker dies, waiting calls fail with ``WorkerGone``
and the pool retries them elsewhere, like calls of a failed RPC.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from protos import worker_pb2
from server.pool.errors import ANSWER_TOO_LARGE, INTERNAL_MESSAGE
from server.service.errors import DeadlineExceeded, Overloaded, WorkerCrashed

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from server.pool.loopload import LoopLoad
    from server.pool.messages import CallMessage

T = TypeVar("T")

DENSE_WINDOW = 5
"""Traffic is dense when the last RPC left less than this many ``max_delay`` ago."""
RPC_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
"""Upper bounds of the calls-per-RPC histogram."""
MAX_RPC_BYTES = 32 * 1024 * 1024
"""Input bytes one RPC carries at most: half the worker's message limit, for the rest."""


class WorkerGone(Exception):  # noqa: N818 - an outcome, retried by the pool like UNAVAILABLE
    """The worker went away before the call was sent, or its channel was closed under it."""


async def answered(call: Awaitable[T]) -> T:
    """Await an RPC to a worker; its channel closed under it (worker declared dead): ``WorkerGone``.

    ``grpc.aio`` ends the calls of a closed channel with ``CancelledError``
    although no task was cancelled; left alone that would end the caller's
    task (the pool's background loops, a batch's send) without a word.
    """
    try:
        return await call
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        raise WorkerGone from None


@dataclass(slots=True)
class _Waiting:
    call: CallMessage
    deadline: float
    future: asyncio.Future[worker_pb2.InferResult]
    alone: bool = False
    """Goes in a trip of its own: its answer did not fit beside the others'."""


class RpcStats:
    """Infer RPCs sent and how many calls each carried (a histogram over ``RPC_SIZE_BUCKETS``)."""

    def __init__(self) -> None:
        self.rpcs = 0
        self.calls = 0
        self.buckets = [0] * (len(RPC_SIZE_BUCKETS) + 1)

    def record(self, calls: int) -> None:
        """Count one RPC carrying ``calls`` calls."""
        self.rpcs += 1
        self.calls += calls
        for index, bound in enumerate(RPC_SIZE_BUCKETS):
            if calls <= bound:
                self.buckets[index] += 1
                return
        self.buckets[-1] += 1


class Coalescer:
    """The calls on their way to one worker."""

    def __init__(
        self,
        stub: Callable[[], Any],
        *,
        max_rpcs: int,
        max_calls: int,
        max_pending: int,
        stats: RpcStats,
        max_delay: float = 0.0,
        busy_delay: float = 0.0,
        load: LoopLoad | None = None,
        max_bytes: int = MAX_RPC_BYTES,
    ) -> None:
        self._stub = stub
        self._max_bytes = max_bytes
        self._max_delay = max_delay
        self._busy_delay = busy_delay
        self._load = load
        self._last_sent = float("-inf")
        self._max_rpcs = max_rpcs
        self._max_calls = max_calls
        self._max_pending = max_pending
        self._stats = stats
        self._waiting: deque[_Waiting] = deque()
        self._rpcs = 0
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        """Calls held in the gateway for this worker (not yet sent)."""
        return len(self._waiting)

    async def call(
        self, call: CallMessage, deadline: float, *, wait_for_company: bool = False
    ) -> worker_pb2.InferResult:
        """Send ``call`` (alone or with others) and return its result.

        ``wait_for_company``: the call arrived in a turn of its own; while the loop
        is busy it waits up to ``busy_delay`` for others to share its trip.

        Raises ``grpc.aio.AioRpcError`` when the RPC failed, ``WorkerGone``
        when the worker died first, ``Overloaded`` when too many calls wait.
        """
        if len(self._waiting) >= self._max_pending:
            raise Overloaded("too many calls are waiting for the inference workers")
        loop = asyncio.get_running_loop()
        waiting = _Waiting(call, deadline, loop.create_future())
        self._waiting.append(waiting)
        if self._rpcs < self._max_rpcs and not self._scheduled:
            # On the next turn of the loop, so calls parsed in this one go together;
            # a little later when calls are dense, so those of the next turns do too.
            self._scheduled = True
            load = self._load
            busy = wait_for_company and load is not None and load.busy
            delay = self._busy_delay if busy else self._max_delay
            if delay > 0 and loop.time() - self._last_sent < DENSE_WINDOW * delay:
                loop.call_later(delay, self._flush)
            else:
                loop.call_soon(self._flush)
        return await waiting.future

    def fail_waiting(self) -> None:
        """The worker died: every call not yet sent fails as retryable."""
        while self._waiting:
            waiting = self._waiting.popleft()
            if not waiting.future.done():
                waiting.future.set_exception(WorkerGone())

    def _flush(self) -> None:
        self._scheduled = False
        loop = asyncio.get_running_loop()
        while self._waiting and self._rpcs < self._max_rpcs:
            now = loop.time()
            batch: list[_Waiting] = []
            size = 0
            while self._waiting and len(batch) < self._max_calls:
                waiting = self._waiting[0]
                if batch and (waiting.alone or size + waiting.call.size > self._max_bytes):
                    break  # it leads the next trip
                self._waiting.popleft()
                if waiting.future.done():
                    continue
                left = waiting.deadline - now
                if left <= 0:
                    waiting.future.set_exception(
                        DeadlineExceeded("the inference call ran out of time")
                    )
                    continue
                waiting.call.message.timeout_ms = max(1, min(int(left * 1000), 2**32 - 1))
                batch.append(waiting)
                size += waiting.call.size
                if waiting.alone:
                    break
            if not batch:
                continue
            stub = self._stub()
            if stub is None:
                for waiting in batch:
                    waiting.future.set_exception(WorkerGone())
                continue
            self._rpcs += 1
            self._last_sent = now
            task = loop.create_task(self._send(stub, batch, max(w.deadline for w in batch) - now))
            self._sending.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self._sending.discard)

    async def _send(self, stub: Any, batch: list[_Waiting], timeout: float) -> None:
        try:
            self._stats.record(len(batch))
            request = worker_pb2.InferRequest(calls=[waiting.call.message for waiting in batch])
            detached = [waiting.call.detached for waiting in batch]
            try:
                reply = await answered(stub.Infer(request, timeout=timeout, detached=detached))
            except asyncio.CancelledError:
                _settle_all(batch, WorkerGone())  # shutting down: no answer will come
                raise
            except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch (RPC errors too)
                _settle_all(batch, exc)
                return
            if len(reply.results) != len(batch):
                _settle_all(
                    batch,
                    WorkerCrashed(
                        INTERNAL_MESSAGE,
                        detail=f"{len(reply.results)} results for {len(batch)} calls",
                    ),
                )
                return
            again: list[_Waiting] = []
            for waiting, result in zip(batch, reply.results, strict=True):
                if len(batch) > 1 and result.error.code == ANSWER_TOO_LARGE:
                    waiting.alone = True
                    again.append(waiting)
                else:
                    _settle(waiting.future, result)
            # Ahead of the calls that came after them; the finally below sends them.
            self._waiting.extendleft(reversed(again))
        finally:
            self._rpcs -= 1
            if self._waiting and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)


def _settle_all(batch: list[_Waiting], outcome: BaseException) -> None:
    for waiting in batch:
        _settle(waiting.future, outcome)


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
