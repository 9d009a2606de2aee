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

Two background tasks keep the pool healthy without a gateway restart: the
watcher notices exited processes within ``WATCH_INTERVAL`` and restarts them
with exponential backoff (so a worker that crashes at start-up cannot spin),
and the liveness task pings every worker and kills one that stops answering
(a hung worker looks alive to ``poll()``). A restarted worker holds no models;
they are loaded again on first use. A third task asks every worker for its
``Status`` each ``STATUS_INTERVAL``: what it reports holding (it may have
evicted models) steers the balancer, and the snapshot feeds ``/metrics``
without an RPC on the scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from typing import TYPE_CHECKING, Any, TypeVar

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
from server.pool.messages import key_to_pb, tensor_from_pb, tensor_to_pb
from server.pool.process import WorkerProcess, WorkerStartError, settings_for_worker
from server.pool.remote import RemoteWorker
from server.pool.status import WorkerState, WorkerStatus, status_from_reply
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

    from server.pool.remote import TlsMaterial
    from server.service.types import ModelKey, Tensor
    from server.settings import Settings

log = structlog.get_logger(__name__)

R = TypeVar("R")

WATCH_INTERVAL = 0.1
"""How often the watcher looks for exited workers (seconds)."""
RESTART_BACKOFF = (0.25, 10.0)
"""First and longest delay before restarting a worker that keeps crashing."""
STABLE_AFTER = 30.0
"""A worker up this long has its crash count (and so its backoff) reset."""
PING_INTERVAL, PING_TIMEOUT, PING_FAILURES = 1.0, 2.0, 3
"""Liveness: a worker that misses this many pings in a row is killed and restarted."""
STATUS_INTERVAL = 1.0
"""How often each worker's ``Status`` is read (placement and metrics)."""
STOP_TIMEOUT = 5.0
"""How long a worker gets to exit after SIGTERM before it is killed."""
REMOTE_READY_TIMEOUT = 10.0
"""How long a (re)connect to a remote worker waits for its ``Ping`` before backing off."""


class _Slot:
    """A worker process plus what the pool tracks to dispatch to it."""

    def __init__(
        self, process: WorkerProcess | RemoteWorker, coalescer: Callable[[_Slot], Coalescer]
    ) -> None:
        self.process = process
        self.state = WorkerState.STARTING
        self.in_flight = 0
        self.models: set[ModelKey] = set()
        self.recent: set[ModelKey] = set()
        """Models sent to this worker since its last ``Status`` (it may be loading them)."""
        self.coalescer = coalescer(self)
        self.restarts = 0
        self.crashes = 0
        self.live_since = 0.0
        self.restart_at = 0.0
        self.ping_failures = 0
        self.task: asyncio.Task[None] | None = None

    def holds(self, key: ModelKey) -> bool:
        return key in self.models

    @property
    def stub(self) -> Any:
        return self.process.stub


class WorkerPool:
    """N local workers on Unix sockets in a private directory, plus any remote ones."""

    def __init__(
        self,
        settings: Settings,
        *,
        workers: int,
        socket_dir: Path,
        remote: Sequence[str] = (),
        tls: TlsMaterial | None = None,
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
        self._ready_timeout = ready_timeout
        self.rpc_stats = RpcStats()
        """Infer RPCs sent and calls per RPC, for ``/metrics``."""
        self.snapshot: list[WorkerStatus] = []
        """Every worker's last ``Status``, refreshed each ``STATUS_INTERVAL``."""
        self.on_snapshot: Callable[[], None] | None = None
        """Called after each refresh of ``snapshot`` (to publish it to other gateways)."""

        def coalescer(slot: _Slot) -> Coalescer:
            return Coalescer(
                lambda: slot.process.inference if slot.state is WorkerState.LIVE else None,
                max_rpcs=settings.pool_rpcs_per_worker,
                max_calls=settings.pool_coalesce_max_calls,
                max_delay=settings.pool_coalesce_delay_ms / 1000,
                max_pending=settings.pool_max_pending,
                stats=self.rpc_stats,
            )

        self._slots = [
            _Slot(WorkerProcess(index=i, socket_path=socket_dir / f"worker-{i}.sock"), coalescer)
            for i in range(workers)
        ]
        if tls is not None:
            self._slots += [
                _Slot(RemoteWorker(index=workers + i, address=address, tls=tls), coalescer)
                for i, address in enumerate(remote)
            ]
        self._settings_line = b""
        self._started = self._closing = False
        self._calls = 0
        self._idle = asyncio.Event()
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # --- life cycle ----------------------------------------------------------
    async def start(self) -> None:
        """Spawn every local worker and return once each answers ``Ping``.

        Raises ``StartupError`` (after stopping the others) if one does not.
        Remote workers are connected to in the background: one that cannot
        be reached does not hold up the gateway, and calls wait (within
        their timeout) for a worker to come up.
        """
        _private_directory(self._socket_dir)
        self._settings_line = settings_for_worker(self._settings)
        local = [slot for slot in self._slots if isinstance(slot.process, WorkerProcess)]
        for slot in local:
            slot.process.spawn(self._settings_line)
        results = await asyncio.gather(
            *(slot.process.wait_ready(self._ready_timeout) for slot in local),
            return_exceptions=True,
        )
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            self._closing = True
            await self._terminate_all()
            raise StartupError(f"inference workers did not start: {failures[0]}") from failures[0]
        now = asyncio.get_running_loop().time()
        for slot in self._slots:
            if slot in local:
                slot.state, slot.live_since = WorkerState.LIVE, now
            else:
                slot.task = asyncio.create_task(self._restart(slot, first=True))
        self._started = True
        self._tasks = [
            asyncio.create_task(self._watch()),
            asyncio.create_task(self._liveness()),
            asyncio.create_task(self._refresh_status()),
        ]
        log.info("inference workers started", workers=len(self._slots))

    async def stop(self, grace: float) -> None:
        """Take no new calls, give running ones ``grace`` seconds, then end every worker."""
        if self._closing and not self._started:
            return
        self._closing = True
        self._notify()  # calls waiting for a worker to come up give up now
        if self._calls:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        for task in self._tasks + [s.task for s in self._slots if s.task is not None]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._terminate_all()
        self._started = False
        log.info("inference workers stopped")

    async def _terminate_all(self) -> None:
        for slot in self._slots:
            slot.state = WorkerState.STOPPED
            slot.process.terminate()
        exited = await asyncio.gather(*(s.process.wait_exit(STOP_TIMEOUT) for s in self._slots))
        for slot, done in zip(self._slots, exited, strict=True):
            if not done:
                log.warning("worker did not stop in time; killing it", worker=slot.process.index)
                slot.process.kill()
                await slot.process.wait_exit(STOP_TIMEOUT)
            await slot.process.close()

    # --- calls ---------------------------------------------------------------
    async def infer(
        self,
        key: ModelKey,
        inputs: Sequence[Tensor],
        outputs: Sequence[str],
        *,
        request_id: str | None,
        timeout: float,
    ) -> list[Tensor]:
        """Run one call on a worker; ``outputs`` empty means all of the model's outputs.

        Raises the service layer's errors (see ``server.pool.errors``);
        ``WorkerCrashed`` when the worker died and the one retry failed too.
        """
        call = worker_pb2.InferCall(
            model=key_to_pb(key),
            inputs=[tensor_to_pb(tensor) for tensor in inputs],
            outputs=outputs,
            request_id=request_id or "",
        )
        loop = asyncio.get_running_loop()

        async def send(slot: _Slot, left: float) -> worker_pb2.InferResult:
            return await slot.coalescer.call(call, loop.time() + left)

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

        async def send(slot: _Slot, left: float) -> worker_pb2.LoadResponse:
            reply: worker_pb2.LoadResponse = await answered(
                slot.stub.Load(worker_pb2.LoadRequest(model=key_to_pb(key)), timeout=left)
            )
            return reply

        await self._dispatch(key, timeout, send, request_id=None)

    async def _dispatch(
        self,
        key: ModelKey,
        timeout: float,
        send: Callable[[_Slot, float], Awaitable[R]],
        *,
        request_id: str | None,
    ) -> tuple[_Slot, R]:
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
        slot: _Slot,
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
        self._suspect(slot)
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

    async def _choose(self, key: ModelKey, failed: set[str | None], deadline: float) -> _Slot:
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

    # --- supervision ---------------------------------------------------------
    def _suspect(self, slot: _Slot) -> None:
        """A call failed as if the worker died: if it did, act now rather than at the next poll."""
        if slot.state is WorkerState.LIVE and slot.process.exited():
            self._mark_dead(slot, slot.process.gone)

    def _mark_dead(self, slot: _Slot, reason: str) -> None:
        now = asyncio.get_running_loop().time()
        if slot.state is WorkerState.LIVE and now - slot.live_since >= STABLE_AFTER:
            slot.crashes = 0  # a restart that fails again keeps backing off
        slot.crashes += 1
        first, longest = RESTART_BACKOFF
        delay = min(first * 2 ** (slot.crashes - 1), longest)
        slot.state, slot.restart_at = WorkerState.DEAD, now + delay
        slot.models.clear()
        slot.coalescer.fail_waiting()
        code = None if slot.process.process is None else slot.process.process.returncode
        log.warning(
            "inference worker died",
            worker=slot.process.index,
            address=slot.process.address,
            reason=reason,
            exit_code=code,
            restart_in=round(delay, 2),
        )

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            for slot in self._slots:
                if slot.state is WorkerState.LIVE and slot.process.exited():
                    self._mark_dead(slot, slot.process.gone)
                if slot.state is WorkerState.DEAD and loop.time() >= slot.restart_at:
                    slot.state = WorkerState.STARTING
                    slot.task = asyncio.create_task(self._restart(slot))

    async def _restart(self, slot: _Slot, *, first: bool = False) -> None:
        """Start (or for a remote worker, connect) again; ``first``: the first connect."""
        process = slot.process
        process.kill()  # in case it was declared dead while still running (hung)
        await process.wait_exit(STOP_TIMEOUT)
        await process.close()
        try:
            process.spawn(self._settings_line)
            await process.wait_ready(self._ready_timeout_of(slot))
        except Exception as exc:  # noqa: BLE001 - the supervisor must outlive any failure
            process.kill()
            self._mark_dead(slot, str(exc) if isinstance(exc, WorkerStartError) else repr(exc))
            return
        slot.state, slot.live_since, slot.ping_failures = (
            WorkerState.LIVE,
            asyncio.get_running_loop().time(),
            0,
        )
        if first:
            log.info(
                "remote inference worker connected", worker=process.index, address=process.address
            )
            self._notify()
            return
        slot.restarts += 1
        log.info(
            "inference worker restarted",
            worker=process.index,
            pid=process.pid,
            address=process.address,
        )
        self._notify()

    def _ready_timeout_of(self, slot: _Slot) -> float:
        if isinstance(slot.process, RemoteWorker):
            return min(self._ready_timeout, REMOTE_READY_TIMEOUT)
        return self._ready_timeout

    async def _liveness(self) -> None:
        while True:
            await asyncio.sleep(PING_INTERVAL)
            live = [slot for slot in self._slots if slot.state is WorkerState.LIVE]
            results = await asyncio.gather(
                *(self._ping(slot) for slot in live), return_exceptions=True
            )
            for slot, result in zip(live, results, strict=True):
                if isinstance(result, Exception):
                    log.warning("worker ping failed", worker=slot.process.index, exc_info=result)

    async def _ping(self, slot: _Slot) -> None:
        if slot.stub is None:
            return
        try:
            reply = await answered(slot.stub.Ping(worker_pb2.PingRequest(), timeout=PING_TIMEOUT))
        except (grpc.aio.AioRpcError, WorkerGone):
            slot.ping_failures += 1
            if slot.ping_failures >= PING_FAILURES and slot.state is WorkerState.LIVE:
                self._mark_dead(slot, f"missed {slot.ping_failures} pings")
            return
        slot.ping_failures = 0
        if reply.instance_id != slot.process.instance_id:
            slot.models.clear()  # the worker restarted behind our back: it holds nothing
            slot.process.instance_id = reply.instance_id
            self._notify()  # a call that failed on the old instance may use this one

    # --- status ----------------------------------------------------------------
    async def status(self) -> list[WorkerStatus]:
        """Every slot, with what its worker holds (asked over ``Status``) when it is live."""
        return list(await asyncio.gather(*(self._status(slot) for slot in self._slots)))

    async def _refresh_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            try:
                self.snapshot = await self.status()
            except Exception:
                log.warning("worker status refresh failed", exc_info=True)
                continue
            if self.on_snapshot is not None:
                try:
                    self.on_snapshot()
                except OSError:
                    log.warning("cannot publish the worker status", exc_info=True)
            for slot, status in zip(self._slots, self.snapshot, strict=True):
                if status.rss_bytes is None or slot.state is not WorkerState.LIVE:
                    continue
                # What the worker holds now (it evicts on its own), plus what was
                # just sent to it and may still be loading.
                slot.models = {model.key for model in status.models} | slot.recent
                slot.recent = set()

    async def _status(self, slot: _Slot) -> WorkerStatus:
        base = WorkerStatus(
            index=slot.process.index,
            address=slot.process.address,
            state=slot.state,
            pid=slot.process.pid if slot.state is not WorkerState.STOPPED else None,
            instance_id=slot.process.instance_id,
            restarts=slot.restarts,
            in_flight=slot.in_flight,
            waiting=slot.coalescer.waiting,
        )
        if slot.state is not WorkerState.LIVE:
            return base
        try:
            reply = await answered(
                slot.stub.Status(worker_pb2.StatusRequest(), timeout=PING_TIMEOUT)
            )
        except (grpc.aio.AioRpcError, WorkerGone):
            return base
        return status_from_reply(base, reply)


def _rpc_failure(exc: grpc.aio.AioRpcError | WorkerGone) -> tuple[grpc.StatusCode, str]:
    """The status and text of a failed send (a worker gone before sending is UNAVAILABLE)."""
    if isinstance(exc, WorkerGone):
        return grpc.StatusCode.UNAVAILABLE, "the worker went away before answering"
    return exc.code(), exc.details() or ""


def _private_directory(path: Path) -> None:
    """Create ``path`` (mode 0700) or check an existing one is ours, then make it 0700.

    Whoever can connect to a worker socket can run any tenant's model, so
    the directory is the access control for local workers.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        msg = f"worker socket directory {path} is not a directory owned by this user"
        raise StartupError(msg)
    path.chmod(0o700)
