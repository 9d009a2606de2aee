"""The inference worker process: a ``Worker`` gRPC service over LiteRT.

``sealserve serve`` spawns one per CPU on Unix sockets (``server.pool.pool``);
``sealserve worker`` runs the same code on another host, on TCP with mutual
TLS (``server.pool.remote``). The worker reads
sealed models from the registry itself, so plaintext model bytes never cross
a socket.

Signals: SIGINT is ignored, because a Ctrl-C in a terminal reaches the whole
process group and only the parent decides when workers stop. SIGTERM drains:
new RPCs are refused (``UNAVAILABLE``, which the pool retries elsewhere),
running calls get ``shutdown_grace_seconds``, then the process exits. A
worker started by the pool (``--settings-json -``) also exits when its parent
does, whichever way the parent ends.

Inference runs on one thread per process (the interpreters use one thread
each, and the pool starts one worker per CPU), never on the event loop, so a
long invocation or a model being loaded does not delay ``Ping`` or ``Status``.
Calls reach that thread through one ``Batcher`` per model, which stacks
concurrent calls into one invocation (``server.pool.batcher``). Its limits are
the version's own batching settings where it has them (read when the model
is loaded), the operator's otherwise; batching is off for a version set
``enabled=false`` and for any model without a variable batch dimension.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import resource
import signal
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import structlog
import uvloop

from protos import worker_pb2, worker_pb2_grpc
from server.pool.batcher import Batcher, BatchStats
from server.pool.cache import ModelCache
from server.pool.errors import (
    DEADLINE_EXCEEDED,
    INTERNAL,
    INTERNAL_MESSAGE,
    INVALID_INPUT,
    STATUS_OF_CODE,
    CallFailed,
)
from server.pool.frames import FrameServer, frames_path
from server.pool.messages import key_from_pb, key_to_pb, tensor_from_pb, tensor_to_pb
from server.service.errors import InvalidRequest

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from server.pool.remote import TlsMaterial
    from server.pool.runtime import LoadedModel
    from server.service.types import ModelKey, Tensor
    from server.settings import Settings
    from storage import BatchSettings

log = structlog.get_logger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest Infer request or response; the gateway enforces its own, smaller, limits first."""

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]

_PR_SET_PDEATHSIG = 1


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
        """``infer`` over gRPC."""
        del context
        return await self.infer(request)

    async def infer(self, request: worker_pb2.InferRequest) -> worker_pb2.InferResponse:
        """Run every call on its own; one bad call never fails its neighbours.

        Reached over gRPC (``Infer``) or, from the local gateway, over the
        framed inference socket (``server.pool.frames``).
        """
        answered = self.answer_now(request)
        if answered is not None:
            return answered
        return await self.infer_queued(request)

    async def infer_queued(self, request: worker_pb2.InferRequest) -> worker_pb2.InferResponse:
        """Every call through its model's queue: ``infer`` once ``answer_now`` declined.

        The frame server tries ``answer_now`` itself and hands what it declines
        here, so a frame is never looked over twice.
        """
        received = time.monotonic()
        if len(request.calls) == 1:
            results = [await self._call(request.calls[0], received)]
        else:
            results = await asyncio.gather(*(self._call(call, received) for call in request.calls))
        return worker_pb2.InferResponse(results=results)

    def answer_now(self, request: worker_pb2.InferRequest) -> worker_pb2.InferResponse | None:
        """The answer, run at once, if every call's model is loaded and ready now.

        The common case under load (a warm, quick model) without a task or
        future per call; ``None`` (nothing run) means: answer it with ``infer``,
        through the queues.
        """
        calls = request.calls
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
                    work.append(([tensor_from_pb(t) for t in call.inputs], list(call.outputs)))
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

    async def _call(self, call: worker_pb2.InferCall, received: float) -> worker_pb2.InferResult:
        deadline = received + call.timeout_ms / 1000 if call.timeout_ms else None
        self._in_flight += 1
        try:
            try:
                key = key_from_pb(call.model)
                inputs = [tensor_from_pb(tensor) for tensor in call.inputs]
            except InvalidRequest as exc:
                raise CallFailed(INVALID_INPUT, exc.message) from None
            model = await self._model(key, deadline)
            self._cache.hold(model)
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
        """The loaded model, within the call's budget (a load that outlives it carries on)."""
        loaded = self._cache.loaded(key)
        if loaded is not None:
            return loaded
        budget = None if deadline is None else deadline - time.monotonic()
        if budget is not None and budget <= 0:
            raise CallFailed(DEADLINE_EXCEEDED, "the call's time ran out before it ran")
        try:
            model, _ = await asyncio.wait_for(self._cache.get(key), budget)
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


def create_server(
    service: WorkerService, address: str, credentials: grpc.ServerCredentials | None = None
) -> grpc.aio.Server:
    """A ``grpc.aio`` server with ``service`` bound to ``address`` (``unix:PATH`` or host:port).

    With ``credentials`` the port speaks TLS; without, it must be a Unix socket.
    """
    server = grpc.aio.server(options=GRPC_OPTIONS)
    worker_pb2_grpc.add_WorkerServicer_to_server(service, server)
    if credentials is None and not address.startswith("unix:"):
        msg = f"a worker listens on TCP ({address}) only with TLS"
        raise ValueError(msg)
    port = (
        server.add_insecure_port(address)
        if credentials is None
        else server.add_secure_port(address, credentials)
    )
    if port == 0:
        msg = f"cannot listen on {address}"
        raise OSError(msg)
    return server


async def serve(
    address: str,
    settings: Settings,
    *,
    parent_lifeline: bool = False,
    tls: TlsMaterial | None = None,
    stop_on_interrupt: bool = False,
) -> None:
    """Serve until SIGTERM (or, with ``parent_lifeline``, until stdin closes).

    ``address`` is ``unix:PATH`` for a local worker (gRPC plus the framed
    connection beside it), or ``host:port`` with ``tls`` for a remote one
    (gRPC only, clients must present a certificate from ``tls.ca``).
    ``stop_on_interrupt``: SIGINT drains too (a worker run on its own, not by a pool).
    """
    from server.bootstrap import build_container  # noqa: PLC0415 - keeps `import` of this module light

    container = build_container(settings)
    registry = container.registry
    cache = ModelCache(
        open_model=lambda key: registry.open_version(key.tenant_id, key.version_id),
        read_batching=lambda key: registry.version_batching(key.tenant_id, key.version_id),
        budget_bytes=settings.worker_memory_budget_mb * 1024 * 1024,
    )
    service = WorkerService(cache=cache, batching=BatchPolicy.from_settings(settings))
    server = create_server(service, address, None if tls is None else tls.server_credentials())
    frames = (
        FrameServer(service.infer_queued, answer_now=service.answer_now) if tls is None else None
    )
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    grace = settings.shutdown_grace_seconds

    def stop(*, orphaned: bool = False) -> None:
        nonlocal grace
        if orphaned:
            grace = 0.0  # nobody is left to read the answers
        stopping.set()

    loop.add_signal_handler(signal.SIGTERM, stop)
    if parent_lifeline:
        await loop.connect_read_pipe(lambda: _Lifeline(lambda: stop(orphaned=True)), sys.stdin)
    if stop_on_interrupt:
        loop.add_signal_handler(signal.SIGINT, stop)
    if frames is not None:
        await frames.start(frames_path(address))  # before Ping answers: ready means both
    await server.start()
    log.info("worker listening", address=address, pid=os.getpid(), instance_id=service.instance_id)
    await stopping.wait()
    service.draining = True
    log.info("worker stopping", grace_seconds=grace)
    await asyncio.gather(
        server.stop(grace), frames.stop(grace) if frames is not None else asyncio.sleep(0)
    )
    service.close()
    container.close()


class _Lifeline(asyncio.Protocol):
    """Reads stdin, which only the parent can write: EOF means the parent is gone."""

    def __init__(self, on_eof: Callable[[], None]) -> None:
        self._on_eof = on_eof

    def data_received(self, data: bytes) -> None:
        del data  # the parent writes nothing after the settings line

    def connection_lost(self, exc: Exception | None) -> None:
        del exc
        self._on_eof()


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL us when the parent exits, even by SIGKILL.

    A parent that died before this call is caught by the stdin lifeline
    instead (its pipe is already closed, so the read returns EOF at once).
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("cannot set the parent-death signal", errno=ctypes.get_errno())


def main(socket_path: str, settings_json: str, *, parent_lifeline: bool = False) -> None:
    """Run one worker on ``unix:{socket_path}`` with settings as the parent resolved them."""
    from server.logs import configure_logging  # noqa: PLC0415 - see serve()
    from server.settings import Settings  # noqa: PLC0415 - see serve()

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent_lifeline:
        die_with_parent()
    settings = Settings.model_validate_json(settings_json)
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    structlog.contextvars.bind_contextvars(worker_pid=os.getpid())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(f"unix:{socket_path}", settings, parent_lifeline=parent_lifeline))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m server.pool.worker", description="Run one sealserve inference worker."
    )
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    parser.add_argument(
        "--settings-json",
        required=True,
        help="the server settings as JSON, or '-' to read one line from stdin and then "
        "exit when stdin closes (how the pool starts workers: secrets stay out of argv)",
    )
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    args = _parse(argv)
    if args.settings_json == "-":
        line = sys.stdin.buffer.readline()
        if not line:
            return  # the parent is already gone
        main(args.socket, line.decode(), parent_lifeline=True)
    else:
        main(args.socket, args.settings_json)


if __name__ == "__main__":
    run()
