"""One worker process's ``sealserve.worker.v1.Worker`` service over LiteRT.

Inference runs on one thread per process (the interpreters use one thread
each, and the pool starts one worker per CPU), never on the event loop, so a
long invocation or a model being loaded does not delay ``Ping`` or ``Status``.
Calls reach that thread through one ``Batcher`` per model, which stacks
concurrent calls into one invocation (``server.pool.batcher``). Its limits are
the version's own batching settings where it has them (read when the model
is loaded), the operator's otherwise; batching is off for a version set
``enabled=false`` and for any model without a variable batch dimension.

The process around it (sockets, signals, the parent lifeline) is
``server.pool.worker``.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from protos import worker_pb2, worker_pb2_grpc
from server.pool.batcher import Batcher, BatchStats
from server.pool.errors import (
    ANSWER_TOO_LARGE,
    DEADLINE_EXCEEDED,
    INTERNAL,
    INTERNAL_MESSAGE,
    INVALID_INPUT,
    STATUS_OF_CODE,
    CallFailed,
)
from server.pool.frames import MAX_FRAME_BYTES
from server.pool.messages import key_from_pb, key_to_pb, tensor_from_pb, tensor_to_pb
from server.service.errors import InvalidRequest

if TYPE_CHECKING:
    from collections.abc import Sequence

    from server.pool.cache import ModelCache
    from server.pool.messages import Attached
    from server.pool.runtime import LoadedModel
    from server.service.types import ModelKey, Tensor
    from server.settings import Settings
    from storage import BatchSettings

log = structlog.get_logger(__name__)

ANSWER_BYTES = MAX_FRAME_BYTES - 1024 * 1024
"""Outputs one answer carries at most: under the frame and gRPC message limits (64 MiB)."""


def rss_bytes() -> int:
    """Resident set size of this process (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:  # noqa: PTH123 - hot, tiny file
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How a worker groups calls per model (see ``server.pool.batcher``)."""

    max_batch: int = 32
    max_delay: float = 0.0
    max_queue: int = 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> BatchPolicy:
        """The policy the operator configured."""
        return cls(
            max_batch=settings.batch_max_size,
            max_delay=settings.batch_max_delay_ms / 1000,
            max_queue=settings.worker_max_queue,
        )

    def for_version(self, batching: BatchSettings | None, *, batchable: bool) -> BatchPolicy:
        """The policy for one model: its version's settings over these defaults.

        Off (batches of one call, never held back) when the version says so
        or when the model has no variable batch dimension; no setting turns
        batching on for such a model.
        """
        if not batchable or (batching is not None and batching.enabled is False):
            return BatchPolicy(max_batch=1, max_delay=0.0, max_queue=self.max_queue)
        if batching is None:
            return self
        return BatchPolicy(
            max_batch=batching.max_batch_size or self.max_batch,
            max_delay=(
                self.max_delay
                if batching.max_queue_delay_ms is None
                else batching.max_queue_delay_ms / 1000
            ),
            max_queue=self.max_queue,
        )


class WorkerService(worker_pb2_grpc.WorkerServicer):  # type: ignore[misc]  # generated, untyped
    """The ``sealserve.worker.v1.Worker`` service of one process."""

    def __init__(
        self,
        *,
        cache: ModelCache,
        instance_id: str | None = None,
        batching: BatchPolicy | None = None,
    ) -> None:
        self._cache = cache
        self.instance_id = instance_id or uuid.uuid4().hex
        self.draining = False
        self._in_flight = 0
        self._batching = batching or BatchPolicy()
        self._batchers: dict[ModelKey, Batcher] = {}
        self._stats: dict[ModelKey, BatchStats] = {}
        cache.on_evict = self.forget
        # One inference thread: see the module docstring.
        self._inference = ThreadPoolExecutor(1, thread_name_prefix="sealserve-infer")

    def forget(self, key: ModelKey) -> None:
        """Drop the batch queue of an evicted model (its waiting calls still finish)."""
        self._batchers.pop(key, None)

    def _batcher(self, key: ModelKey, model: LoadedModel) -> Batcher:
        batcher = self._batchers.get(key)
        if batcher is None or batcher.model is not model:
            stats = self._stats.setdefault(key, BatchStats())
            policy = self._batching.for_version(model.batching, batchable=model.batchable)
            batcher = Batcher(
                model,
                executor=self._inference,
                max_batch=policy.max_batch,
                max_delay=policy.max_delay,
                max_queue=policy.max_queue,
                stats=stats,
            )
            self._batchers[key] = batcher
        return batcher

    def close(self) -> None:
        """Release the threads (after the server stopped)."""
        self._inference.shutdown(wait=True)
        self._cache.close()

    async def Infer(  # noqa: N802 - gRPC method name
        self, request: worker_pb2.InferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> worker_pb2.InferResponse:
        """``infer`` over gRPC, its answer kept under the message limit (``fitted_response``).

        Sizing a message encodes it, so this costs a remote answer a second
        encoding; the local hop sizes the one it sends (``FrameServer``).
        """
        del context
        reply = await self.infer(request)
        return reply if reply.ByteSize() <= ANSWER_BYTES else fitted_response(reply)

    async def infer(self, request: worker_pb2.InferRequest) -> worker_pb2.InferResponse:
        """Run every call on its own; one bad call never fails its neighbours.

        Reached over gRPC (``Infer``) or, from the local gateway, over the
        framed inference socket (``server.pool.frames``).
        """
        answered = self.answer_now(request)
        if answered is not None:
            return answered
        return await self.infer_queued(request)

    async def infer_queued(
        self, request: worker_pb2.InferRequest, attached: Attached | None = None
    ) -> worker_pb2.InferResponse:
        """Every call through its model's queue: ``infer`` once ``answer_now`` declined.

        The frame server tries ``answer_now`` itself and hands what it declines
        here, so a frame is never looked over twice. ``attached``: inputs sent
        beside the message, by (call position, input position).
        """
        received = time.monotonic()
        attached = attached or {}
        calls = request.calls
        if len(calls) == 1:
            results = [await self._call(calls[0], received, 0, attached)]
        else:
            results = await asyncio.gather(
                *(self._call(call, received, at, attached) for at, call in enumerate(calls))
            )
        return worker_pb2.InferResponse(results=results)

    def answer_now(
        self, request: worker_pb2.InferRequest, attached: Attached | None = None
    ) -> worker_pb2.InferResponse | None:
        """The answer, run at once, if every call's model is loaded and ready now.

        The common case under load (a warm, quick model) without a task or
        future per call; ``None`` (nothing run) means: answer it with ``infer``,
        through the queues.
        """
        calls = request.calls
        attached = attached or {}
        results: dict[int, worker_pb2.InferResult] = {}
        groups = self._ready_now(calls, results)
        if groups is None:
            return None
        for batcher, positions in groups.values():
            runnable: list[int] = []
            work: list[tuple[list[Tensor], list[str]]] = []
            for position in positions:
                call = calls[position]
                try:
                    inputs = [
                        tensor_from_pb(t, attached.get((position, i)))
                        for i, t in enumerate(call.inputs)
                    ]
                    work.append((inputs, list(call.outputs)))
                except InvalidRequest as exc:
                    results[position] = _failed(CallFailed(INVALID_INPUT, exc.message))
                    continue
                runnable.append(position)
            if runnable:
                for position, outcome in zip(runnable, batcher.run_now(work), strict=True):
                    results[position] = self._result(outcome, calls[position].request_id)
        return worker_pb2.InferResponse(results=[results[p] for p in range(len(calls))])

    def _ready_now(
        self, calls: Sequence[worker_pb2.InferCall], refused: dict[int, worker_pb2.InferResult]
    ) -> dict[ModelKey, tuple[Batcher, list[int]]] | None:
        """Call positions by model when every model is loaded and ready now, else ``None``.

        Calls naming no valid model are answered into ``refused`` (call position -> result).
        """
        groups: dict[ModelKey, tuple[Batcher, list[int]]] = {}
        for position, call in enumerate(calls):
            try:
                key = key_from_pb(call.model)
            except InvalidRequest as exc:
                refused[position] = _failed(CallFailed(INVALID_INPUT, exc.message))
                continue
            group = groups.get(key)
            if group is None:
                model = self._cache.loaded(key)
                if model is None:
                    return None
                batcher = self._batcher(key, model)
                if not batcher.ready_now:
                    return None
                group = groups[key] = (batcher, [])
            group[1].append(position)
        return groups

    @staticmethod
    def _result(outcome: list[Tensor] | Exception, request_id: str) -> worker_pb2.InferResult:
        if isinstance(outcome, CallFailed):
            return _failed(outcome)
        if isinstance(outcome, Exception):
            log.error("inference call failed", request_id=request_id or None, exc_info=outcome)
            return _internal()
        return worker_pb2.InferResult(outputs=[tensor_to_pb(tensor) for tensor in outcome])

    async def _call(
        self,
        call: worker_pb2.InferCall,
        received: float,
        position: int,
        attached: Attached,
    ) -> worker_pb2.InferResult:
        deadline = received + call.timeout_ms / 1000 if call.timeout_ms else None
        self._in_flight += 1
        try:
            try:
                key = key_from_pb(call.model)
                inputs = [
                    tensor_from_pb(tensor, attached.get((position, i)))
                    for i, tensor in enumerate(call.inputs)
                ]
            except InvalidRequest as exc:
                raise CallFailed(INVALID_INPUT, exc.message) from None
            model = await self._model(key, deadline)  # held: released below
            try:
                outputs = await self._batcher(key, model).submit(
                    inputs, list(call.outputs), deadline=deadline
                )
            finally:
                self._cache.release(model)
            return worker_pb2.InferResult(outputs=[tensor_to_pb(tensor) for tensor in outputs])
        except CallFailed as exc:
            return _failed(exc)
        except Exception:  # whatever it was, the caller gets a generic answer; the log has it
            log.exception("inference call failed", request_id=call.request_id or None)
            return _internal()
        finally:
            self._in_flight -= 1

    async def _model(self, key: ModelKey, deadline: float | None) -> LoadedModel:
        """The loaded model, held for the call, within its budget; the caller releases it.

        A load that outlives the budget carries on for later calls.
        """
        loaded = self._cache.loaded(key)
        if loaded is not None:
            self._cache.hold(loaded)
            return loaded
        budget = None if deadline is None else deadline - time.monotonic()
        if budget is not None and budget <= 0:
            raise CallFailed(DEADLINE_EXCEEDED, "the call's time ran out before it ran")
        try:
            model = await asyncio.wait_for(self._cache.acquire(key), budget)
        except TimeoutError:
            msg = "the call's time ran out loading the model"
            raise CallFailed(DEADLINE_EXCEEDED, msg) from None
        return model

    async def Load(  # noqa: N802 - gRPC method name
        self, request: worker_pb2.LoadRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> worker_pb2.LoadResponse:
        """Load a model now; failures abort with the status ``errors.STATUS_OF_CODE`` names."""
        try:
            key = key_from_pb(request.model)
            model, newly = await self._cache.get(key)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        except CallFailed as exc:
            await context.abort(STATUS_OF_CODE[exc.code], exc.message)
        return worker_pb2.LoadResponse(model=_loaded_pb(key, model), newly_loaded=newly)

    async def Unload(  # noqa: N802 - gRPC method name
        self, request: worker_pb2.UnloadRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> worker_pb2.UnloadResponse:
        """Forget a model; idempotent."""
        try:
            key = key_from_pb(request.model)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        return worker_pb2.UnloadResponse(was_loaded=self._cache.unload(key))

    async def Status(  # noqa: N802 - gRPC method name
        self, request: worker_pb2.StatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> worker_pb2.StatusResponse:
        """What this worker holds and how busy it is."""
        del request, context
        return worker_pb2.StatusResponse(
            instance_id=self.instance_id,
            models=[
                _loaded_pb(key, model, self._batchers.get(key))
                for key, model in self._cache.items()
            ],
            in_flight=self._in_flight,
            memory=worker_pb2.Memory(
                rss_bytes=rss_bytes(),
                models_bytes=self._cache.bytes_used,
                budget_bytes=self._cache.budget_bytes,
            ),
            evictions=self._cache.evictions,
            batching=[
                worker_pb2.BatchStats(
                    model=key_to_pb(key),
                    calls=stats.calls,
                    batches=stats.batches,
                    rows=stats.rows,
                    size_buckets=stats.buckets,
                )
                for key, stats in self._stats.items()
            ],
        )

    async def Ping(  # noqa: N802 - gRPC method name
        self, request: worker_pb2.PingRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> worker_pb2.PingResponse:
        """Liveness; does nothing else."""
        del request, context
        return worker_pb2.PingResponse(instance_id=self.instance_id, draining=self.draining)


def fitted_response(reply: worker_pb2.InferResponse) -> worker_pb2.InferResponse:
    """``reply`` with the results past ``ANSWER_BYTES`` in all replaced (``fitted``)."""
    return worker_pb2.InferResponse(results=fitted(reply.results))


def fitted(
    results: Sequence[worker_pb2.InferResult], limit: int = ANSWER_BYTES
) -> list[worker_pb2.InferResult]:
    """``results`` with those past ``limit`` bytes in all replaced by ``ANSWER_TOO_LARGE``.

    A trip's inputs are capped in the gateway, but its answers come back
    together, and a model's outputs may be far larger than its inputs: past
    the frame limit the gateway would drop the connection and every call on
    it. The results that fit are kept in order; each one that does not
    becomes an error, which the gateway answers by sending that call again
    on its own, or, when it was alone already, passes on to the caller.
    """
    kept: list[worker_pb2.InferResult] = []
    total = 0
    for result in results:
        size = result.ByteSize()
        if total + size <= limit:
            kept.append(result)
            total += size
            continue
        if size > limit:
            message = (
                f"the call's outputs are {size} bytes, more than the {limit} bytes "
                "one answer carries; ask for fewer rows or outputs"
            )
        else:
            message = "the call's outputs did not fit beside the others in one answer"
        kept.append(_failed(CallFailed(ANSWER_TOO_LARGE, message)))
        total += kept[-1].ByteSize()
    return kept


def _failed(error: CallFailed) -> worker_pb2.InferResult:
    return worker_pb2.InferResult(error=error.to_pb())


def _internal() -> worker_pb2.InferResult:
    """A call that failed unexpectedly: a generic answer (the log has the details)."""
    return worker_pb2.InferResult(
        error=worker_pb2.CallError(code=INTERNAL, message=INTERNAL_MESSAGE)
    )


def _loaded_pb(
    key: ModelKey, model: LoadedModel, batcher: Batcher | None = None
) -> worker_pb2.LoadedModel:
    return worker_pb2.LoadedModel(
        model=key_to_pb(key),
        bytes_used=model.bytes_used,
        idle_ms=int(model.idle_seconds() * 1000),
        in_flight=model.in_flight,
        queued=0 if batcher is None or batcher.model is not model else batcher.queued,
    )
