"""Calls that arrive while a worker's RPCs are busy leave together in the next one."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from protos import worker_pb2
from server.pool.dispatcher import Coalescer, RpcStats, WorkerGone
from server.pool.errors import ANSWER_TOO_LARGE
from server.pool.loopload import LoopLoad
from server.pool.messages import CallMessage
from server.pool.worker_service import fitted
from server.service.errors import DeadlineExceeded, Overloaded

if TYPE_CHECKING:
    from collections.abc import Sequence

    from server.pool.messages import Detached


class Stub:
    """A worker stub whose Infer answers each call with its request id, when released."""

    def __init__(self) -> None:
        self.requests: list[list[str]] = []
        self.release = asyncio.Event()

    async def Infer(  # noqa: N802 - the gRPC method name
        self, request: worker_pb2.InferRequest, timeout: float, detached: Sequence[Detached]
    ) -> worker_pb2.InferResponse:
        """Record the calls, wait for the test, echo each request id as an output name."""
        assert timeout > 0
        assert len(detached) == len(request.calls)  # one list per call, in order
        self.requests.append([call.request_id for call in request.calls])
        await self.release.wait()
        return worker_pb2.InferResponse(
            results=[
                worker_pb2.InferResult(outputs=[worker_pb2.Tensor(name=call.request_id)])
                for call in request.calls
            ]
        )


def call(name: str, size: int = 0) -> CallMessage:
    """A call recognisable by its request id, with ``size`` bytes of input (none sent)."""
    return CallMessage(worker_pb2.InferCall(request_id=name), [], size)


def coalescer(stub: Stub | None, stats: RpcStats, **limits: Any) -> Coalescer:
    """A coalescer over ``stub`` with one RPC in flight unless told otherwise."""
    options = {"max_rpcs": 1, "max_calls": 64, "max_pending": 100} | limits
    return Coalescer(lambda: stub, stats=stats, **options)


def test_waiting_calls_share_the_next_rpc() -> None:
    """One call goes alone; the three that arrive meanwhile go in one RPC; each gets its own result."""
    stats = RpcStats()

    async def scenario() -> tuple[Stub, list[str]]:
        stub = Stub()
        sender = coalescer(stub, stats)
        deadline = asyncio.get_running_loop().time() + 5
        first = asyncio.ensure_future(sender.call(call("a"), deadline))
        await asyncio.sleep(0.01)
        rest = [asyncio.ensure_future(sender.call(call(n), deadline)) for n in "bcd"]
        await asyncio.sleep(0.01)
        assert sender.waiting == 3
        stub.release.set()
        results = await asyncio.gather(first, *rest)
        return stub, [result.outputs[0].name for result in results]

    stub, names = asyncio.run(scenario())
    assert stub.requests == [["a"], ["b", "c", "d"]]
    assert names == ["a", "b", "c", "d"]
    assert (stats.rpcs, stats.calls) == (2, 4)


def test_max_calls_splits_a_long_queue() -> None:
    """No RPC carries more than max_calls calls."""

    async def scenario() -> Stub:
        stub = Stub()
        stub.release.set()
        sender = coalescer(stub, RpcStats(), max_calls=2)
        deadline = asyncio.get_running_loop().time() + 5
        await asyncio.gather(*(sender.call(call(n), deadline) for n in "abcde"))
        return stub

    assert [len(r) for r in asyncio.run(scenario()).requests] == [2, 2, 1]


def test_max_bytes_splits_large_calls_and_sends_an_oversized_one_alone() -> None:
    """No RPC carries more than max_bytes of input, unless one call alone is larger."""

    async def scenario() -> Stub:
        stub = Stub()
        stub.release.set()
        sender = coalescer(stub, RpcStats(), max_bytes=25)
        deadline = asyncio.get_running_loop().time() + 5
        sizes = {"a": 10, "b": 10, "c": 10, "d": 40, "e": 5, "f": 20}
        await asyncio.gather(*(sender.call(call(n, sizes[n]), deadline) for n in sizes))
        return stub

    assert asyncio.run(scenario()).requests == [["a", "b"], ["c"], ["d"], ["e", "f"]]


class WideningStub(Stub):
    """Answers each call with ``sizes[request id]`` bytes, fitted like a worker's answer."""

    def __init__(self, sizes: dict[str, int], limit: int) -> None:
        super().__init__()
        self.release.set()
        self.sizes, self.limit = sizes, limit

    async def Infer(  # noqa: N802 - the gRPC method name
        self, request: worker_pb2.InferRequest, timeout: float, detached: Sequence[Detached]
    ) -> worker_pb2.InferResponse:
        """Record the calls; answer them through the worker's own ``fitted``."""
        del timeout, detached
        self.requests.append([call.request_id for call in request.calls])
        results = [
            worker_pb2.InferResult(
                outputs=[
                    worker_pb2.Tensor(name=call.request_id, data=b"x" * self.sizes[call.request_id])
                ]
            )
            for call in request.calls
        ]
        return worker_pb2.InferResponse(results=fitted(results, self.limit))


def test_answers_past_the_limit_are_fetched_again_each_alone() -> None:
    """What did not fit beside the others comes back in a trip of its own, ahead of later calls.

    ``d`` does not fit even alone: it fails once, named, and is not sent again.
    """
    sizes = {"a": 40, "b": 40, "c": 40, "d": 150, "e": 10}

    async def scenario() -> tuple[WideningStub, list[worker_pb2.InferResult]]:
        stub = WideningStub(sizes, limit=100)
        sender = coalescer(stub, RpcStats())
        deadline = asyncio.get_running_loop().time() + 5
        first = asyncio.ensure_future(sender.call(call("a"), deadline))
        rest = [asyncio.ensure_future(sender.call(call(n), deadline)) for n in "bcd"]
        await asyncio.sleep(0)
        late = asyncio.ensure_future(sender.call(call("e"), deadline))
        return stub, await asyncio.gather(first, *rest, late)

    stub, results = asyncio.run(scenario())
    assert stub.requests == [["a", "b", "c", "d"], ["c"], ["d"], ["e"]]
    by_name = dict(zip("abcde", results, strict=True))
    for name in "abce":
        assert not by_name[name].HasField("error")
        assert len(by_name[name].outputs[0].data) == sizes[name]
    assert by_name["d"].error.code == ANSWER_TOO_LARGE
    assert "more than the 100 bytes one answer carries" in by_name["d"].error.message


def test_bounded_queue_and_dead_worker() -> None:
    """Past max_pending a call is Overloaded; waiting calls of a dead worker fail as WorkerGone."""

    async def scenario() -> None:
        stub = Stub()
        sender = coalescer(stub, RpcStats(), max_pending=2)
        deadline = asyncio.get_running_loop().time() + 5
        running = asyncio.ensure_future(sender.call(call("a"), deadline))
        await asyncio.sleep(0.01)
        waiting = [asyncio.ensure_future(sender.call(call(n), deadline)) for n in "bc"]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await sender.call(call("d"), deadline)
        sender.fail_waiting()
        for future in waiting:
            with pytest.raises(WorkerGone):
                await future
        stub.release.set()
        await running

    asyncio.run(scenario())


def test_no_stub_or_no_time_left() -> None:
    """A worker without a channel fails the call as WorkerGone; an expired call is DeadlineExceeded."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(WorkerGone):
            await coalescer(None, RpcStats()).call(call("a"), loop.time() + 5)
        with pytest.raises(DeadlineExceeded):
            await coalescer(Stub(), RpcStats()).call(call("a"), loop.time() - 1)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("delay", "expected"), [(0.05, [["a"], ["b", "c"]]), (0.0, [["a"], ["b"], ["c"]])]
)
def test_dense_calls_wait_briefly_to_share_a_trip(delay: float, expected: list[list[str]]) -> None:
    """Right after a trip, a call waits max_delay for company; with no delay each goes alone."""

    async def scenario() -> Stub:
        stub = Stub()
        stub.release.set()
        sender = coalescer(stub, RpcStats(), max_rpcs=2, max_delay=delay)
        deadline = asyncio.get_running_loop().time() + 5
        await sender.call(call("a"), deadline)  # nothing was sent before: it leaves at once
        second = asyncio.ensure_future(sender.call(call("b"), deadline))
        await asyncio.sleep(0.01)  # a later turn of the loop, well within the delay
        third = asyncio.ensure_future(sender.call(call("c"), deadline))
        await asyncio.gather(second, third)
        return stub

    assert asyncio.run(scenario()).requests == expected


def test_sparse_calls_do_not_wait() -> None:
    """A call long after the last trip leaves at once, whatever the delay."""

    async def scenario() -> tuple[Stub, float]:
        stub = Stub()
        stub.release.set()
        sender = coalescer(stub, RpcStats(), max_rpcs=2, max_delay=0.5)
        deadline = asyncio.get_running_loop().time() + 10
        await sender.call(call("a"), deadline)
        await asyncio.sleep(2.6)  # more than five delays later: traffic is not dense
        started = asyncio.get_running_loop().time()
        await sender.call(call("b"), deadline)
        return stub, asyncio.get_running_loop().time() - started

    stub, took = asyncio.run(scenario())
    assert stub.requests == [["a"], ["b"]]
    assert took < 0.25


@pytest.mark.parametrize(
    ("busy", "company", "expected"),
    [
        (True, True, [["a"], ["b", "c", "d"]]),  # a busy loop: one-per-turn calls wait together
        (False, True, [["a"], ["b"], ["c"], ["d"]]),  # an idle loop: nobody waits
        (True, False, [["a"], ["b"], ["c"], ["d"]]),  # calls that came in groups never wait
    ],
)
def test_a_busy_loop_makes_calls_that_come_one_per_turn_wait_for_company(
    busy: bool, company: bool, expected: list[list[str]]
) -> None:
    """busy_delay holds gRPC-like calls only while the gateway's loop is busy."""

    async def scenario() -> Stub:
        stub = Stub()
        stub.release.set()
        load = LoopLoad()
        load.busy = busy
        sender = coalescer(stub, RpcStats(), max_rpcs=2, busy_delay=0.2, load=load)
        deadline = asyncio.get_running_loop().time() + 5
        await sender.call(call("a"), deadline, wait_for_company=company)
        later = []
        for name in "bcd":  # each in a later turn of the loop, 10 ms apart
            later.append(
                asyncio.ensure_future(sender.call(call(name), deadline, wait_for_company=company))
            )
            await asyncio.sleep(0.01)
        await asyncio.gather(*later)
        return stub

    assert asyncio.run(scenario()).requests == expected
