"""``WorkerPool``: the gateway's inference workers, supervised and dispatched to.

Local workers are spawned here, one process per slot
(``server.pool.process``); remote ones (``server.pool.remote``) run on other
hosts and are only connected to. One reused ``grpc.aio`` channel to each
for control, and for a local worker one framed connection for inference
(``server.pool.frames``; a remote one takes calls over gRPC). A call goes to
the worker the ``Balancer`` picks, through that worker's ``Coalescer``
(``server.pool.dispatcher``), which shares one
``Infer`` RPC among the calls that arrive together. If that worker dies
under it (the RPC fails ``UNAVAILABLE``, or the call was still waiting), the
call is sent once more to another worker (or to the restarted one, when
there is no other): inference is side-effect free, so a repeat is safe.

Keeping the workers running (restarts, liveness, ``Status``) is
``server.pool.supervision``'s part.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, TypeVar

import grpc
import structlog

from protos import worker_pb2
from server.errors import StartupError
from server.pool.balancer import Balancer
from server.pool.dispatcher import Coalescer, RpcStats, WorkerGone, answered
from server.pool.errors import (
    INTERNAL_MESSAGE,
    RETRYABLE_STATUSES,
    rpc_service_error,
    service_error,
)
from server.pool.loopload import LoopLoad
from server.pool.messages import call_to_pb, key_to_pb, tensor_from_pb
from server.pool.process import WorkerProcess, settings_for_worker
from server.pool.remote import RemoteWorker
from server.pool.status import WorkerState
from server.pool.supervision import Slot, Supervisor, private_directory
from server.service.errors import (
    DeadlineExceeded,
    InvalidRequest,
    ModelNotReady,
    Unavailable,
    WorkerCrashed,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from pathlib import Path

    from server.pool.remote import TlsFiles
    from server.pool.status import WorkerStatus
    from server.service.types import ModelKey, Tensor
    from server.settings import Settings

log = structlog.get_logger(__name__)

R = TypeVar("R")


class WorkerPool:
    """N local workers on Unix sockets in a private directory, plus any remote ones."""

    def __init__(
        self,
        settings: Settings,
        *,
        workers: int,
        socket_dir: Path,
        remote: Sequence[str] = (),
        tls: TlsFiles | None = None,
        balancer: Balancer | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        if workers + len(remote) < 1:
            msg = "a worker pool needs at least one worker"
            raise ValueError(msg)
        if remote and tls is None:
            msg = "remote workers need the gateway's TLS material"
            raise ValueError(msg)
        self._settings = settings
        self._socket_dir = socket_dir
        self._balancer = balancer or Balancer()
        self.rpc_stats = RpcStats()
        """Infer RPCs sent and calls per RPC, for ``/metrics``."""
        self.loop_load = LoopLoad()
        """How busy this gateway's event loop is: calls wait longer for company when it is."""

        def coalescer(slot: Slot) -> Coalescer:
            return Coalescer(
                lambda: slot.process.inference if slot.state is WorkerState.LIVE else None,
                max_rpcs=settings.pool_rpcs_per_worker,
                max_calls=settings.pool_coalesce_max_calls,
                max_delay=settings.pool_coalesce_delay_ms / 1000,
                busy_delay=settings.pool_coalesce_busy_delay_ms / 1000,
                load=self.loop_load,
                max_pending=settings.pool_max_pending,
                stats=self.rpc_stats,
            )

        self._slots = [
            Slot(WorkerProcess(index=i, socket_path=socket_dir / f"worker-{i}.sock"), coalescer)
            for i in range(workers)
        ]
        if tls is not None:
            self._slots += [
                Slot(RemoteWorker(index=workers + i, address=address, tls=tls), coalescer)
                for i, address in enumerate(remote)
            ]
        self._supervisor = Supervisor(
            self._slots,
            ready_timeout=ready_timeout,
            on_change=self._notify,
            spares=settings.spare_workers if workers else 0,
            socket_dir=socket_dir,
        )
        self._started = self._closing = False
        self._calls = 0
        self._idle = asyncio.Event()
        self._changed = asyncio.Event()

    @property
    def snapshot(self) -> list[WorkerStatus]:
        """Every worker's last ``Status``, refreshed each second and when one dies or comes back."""
        return self._supervisor.snapshot

    @property
    def spares_ready(self) -> int:
        """Started workers held ready to replace one that dies (``server.pool.spares``)."""
        spares = self._supervisor.spares
        return 0 if spares is None else spares.ready

    @property
    def on_snapshot(self) -> Callable[[], None] | None:
        """Called after each refresh of ``snapshot`` (to publish it to other gateways)."""
        return self._supervisor.on_snapshot

    @on_snapshot.setter
    def on_snapshot(self, callback: Callable[[], None] | None) -> None:
        self._supervisor.on_snapshot = callback

    # --- life cycle ----------------------------------------------------------
    async def start(self) -> None:
        """Start the workers (``Supervisor.start``) and take calls from then on."""
        private_directory(self._socket_dir)
        try:
            await self._supervisor.start(settings_for_worker(self._settings))
        except StartupError:
            self._closing = True  # the supervisor has stopped the workers that did start
            raise
        self._started = True
        self.loop_load.start()
        log.info("inference workers started", workers=len(self._slots))

    async def stop(self, grace: float) -> None:
        """Take no new calls, give running ones ``grace`` seconds, then end every worker."""
        if self._closing and not self._started:
            return
        self._closing = True
        self.loop_load.stop()
        self._notify()  # calls waiting for a worker to come up give up now
        if self._calls:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        await self._supervisor.stop()
        self._started = False
        log.info("inference workers stopped")

    # --- calls ---------------------------------------------------------------
    async def infer(
        self,
        key: ModelKey,
        inputs: Sequence[Tensor],
        outputs: Sequence[str],
        *,
        request_id: str | None,
        timeout: float,
        wait_for_company: bool = False,
    ) -> list[Tensor]:
        """Run one call on a worker; ``outputs`` empty means all of the model's outputs.

        ``wait_for_company``: see ``Coalescer.call``.

        Raises the service layer's errors (see ``server.pool.errors``);
        ``WorkerCrashed`` when the worker died and the one retry failed too.
        """
        call = call_to_pb(key, inputs, outputs, request_id or "")
        loop = asyncio.get_running_loop()

        async def send(slot: Slot, left: float) -> worker_pb2.InferResult:
            return await slot.coalescer.call(
                call, loop.time() + left, wait_for_company=wait_for_company
            )

        slot, result = await self._dispatch(key, timeout, send, request_id=request_id)
        if result.HasField("error"):
            error = service_error(result.error.code, result.error.message)
            if isinstance(error, ModelNotReady):
                slot.models.discard(key)
            raise error
        try:
            return [tensor_from_pb(tensor) for tensor in result.outputs]
        except InvalidRequest as exc:
            raise WorkerCrashed(INTERNAL_MESSAGE, detail=f"bad output: {exc.message}") from None

    async def load(self, key: ModelKey, *, timeout: float = 60.0) -> None:
        """Load a model on the worker that would serve it, ahead of the first call."""

        async def send(slot: Slot, left: float) -> worker_pb2.LoadResponse:
            reply: worker_pb2.LoadResponse = await answered(
                slot.stub.Load(worker_pb2.LoadRequest(model=key_to_pb(key)), timeout=left)
            )
            return reply

        await self._dispatch(key, timeout, send, request_id=None)

    async def _dispatch(
        self,
        key: ModelKey,
        timeout: float,
        send: Callable[[Slot, float], Awaitable[R]],
        *,
        request_id: str | None,
    ) -> tuple[Slot, R]:
        """Send to the balancer's pick; once more elsewhere if that worker dies meanwhile."""
        if self._closing or not self._started:
            raise Unavailable("the inference workers are not running")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        failed: set[str | None] = set()
        self._calls += 1
        try:
            while True:
                slot = await self._choose(key, failed, deadline)
                left = deadline - loop.time()
                if left <= 0:
                    raise DeadlineExceeded("the inference call ran out of time")
                slot.in_flight += 1
                if key not in slot.models:  # it will load the model: steer followers to it
                    slot.models.add(key)
                    slot.recent.add(key)
                try:
                    return slot, await send(slot, left)
                except (grpc.aio.AioRpcError, WorkerGone) as exc:
                    self._failed(slot, key, exc, failed, request_id=request_id)
                finally:
                    slot.in_flight -= 1
        finally:
            self._calls -= 1
            if self._calls == 0:
                self._idle.set()

    def _failed(
        self,
        slot: Slot,
        key: ModelKey,
        exc: grpc.aio.AioRpcError | WorkerGone,
        failed: set[str | None],
        *,
        request_id: str | None,
    ) -> None:
        """Raise the service error for a failed send, or return to have it retried elsewhere."""
        code, details = _rpc_failure(exc)
        if self._closing:
            raise Unavailable("the server is shutting down") from None
        if code not in RETRYABLE_STATUSES:
            error = rpc_service_error(code, details)
            if isinstance(error, ModelNotReady):
                slot.models.discard(key)
            raise error from None
        failed.add(slot.process.instance_id)
        self._supervisor.suspect(slot)
        if len(failed) > 1:
            raise WorkerCrashed(
                "the inference worker stopped while running the call", detail=details
            ) from None
        log.warning(
            "worker failed a call; retrying on another",
            worker=slot.process.index,
            request_id=request_id,
            status=code.name,
        )

    async def _choose(self, key: ModelKey, failed: set[str | None], deadline: float) -> Slot:
        """The balancer's pick among live workers not in ``failed``; waits for one to come up."""
        loop = asyncio.get_running_loop()
        while True:
            changed = self._changed
            live = [
                slot
                for slot in self._slots
                if slot.state is WorkerState.LIVE and slot.process.instance_id not in failed
            ]
            slot = self._balancer.pick(live, key)
            if slot is not None:
                return slot
            if self._closing:
                raise Unavailable("the inference workers are not running")
            left = deadline - loop.time()
            try:
                await asyncio.wait_for(changed.wait(), max(left, 0))
            except TimeoutError:
                raise Unavailable("no inference worker is available") from None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def status(self) -> list[WorkerStatus]:
        """Every slot, with what its worker holds (asked over ``Status``) when it is live."""
        return await self._supervisor.status()


def _rpc_failure(exc: grpc.aio.AioRpcError | WorkerGone) -> tuple[grpc.StatusCode, str]:
    """The status and text of a failed send (a worker gone before sending is UNAVAILABLE)."""
    if isinstance(exc, WorkerGone):
        return grpc.StatusCode.UNAVAILABLE, "the worker went away before answering"
    return exc.code(), exc.details() or ""
