"""Supervision of the pool's workers: started, restarted when dead, killed when hung.

``Supervisor`` owns the life of every slot's worker and leaves the calls to
``WorkerPool``. Three background tasks keep the workers healthy without a
gateway restart: the watcher notices exited processes within
``WATCH_INTERVAL`` and restarts them with exponential backoff (so a worker
that crashes at start-up cannot spin), or for a slot's first crash in a
while hands its slot to a started spare at once (``server.pool.spares``);
the liveness task pings every worker and kills one that stops answering (a
hung worker looks alive to ``poll()``);
and each ``STATUS_INTERVAL`` every worker is asked for its ``Status``: what it
reports holding (it may have evicted models) steers the balancer, and the
snapshot feeds ``/metrics`` without an RPC on the scrape. A restarted worker
holds no models; they are loaded again on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from protos import worker_pb2
from server.errors import StartupError
from server.pool.dispatcher import WorkerGone, answered
from server.pool.process import WorkerProcess, WorkerStartError
from server.pool.remote import RemoteWorker
from server.pool.spares import SpareWorkers
from server.pool.status import WorkerState, WorkerStatus, status_from_reply

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from server.pool.dispatcher import Coalescer
    from server.service.types import ModelKey

log = structlog.get_logger(__name__)

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
SPARE_PING_TIMEOUT = 0.5
"""How long a spare has to answer before it takes a dead worker's slot."""
STOP_TIMEOUT = 5.0
"""How long a worker gets to exit after SIGTERM before it is killed."""
REMOTE_READY_TIMEOUT = 10.0
"""How long a (re)connect to a remote worker waits for its ``Ping`` before backing off."""


class Slot:
    """A worker process plus what the pool tracks to dispatch to it."""

    def __init__(
        self, process: WorkerProcess | RemoteWorker, coalescer: Callable[[Slot], Coalescer]
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
        """Whether the worker holds ``key`` (or was just sent it), as far as the pool knows."""
        return key in self.models

    @property
    def stub(self) -> Any:
        """The worker's control stub (``Ping``, ``Status``, ``Load``)."""
        return self.process.stub


class Supervisor:
    """Starts the slots' workers and keeps them running until ``stop``."""

    def __init__(
        self,
        slots: Sequence[Slot],
        *,
        ready_timeout: float,
        on_change: Callable[[], None],
        spares: int = 0,
        socket_dir: Path | None = None,
    ) -> None:
        self._slots = slots
        self.spares = (
            SpareWorkers(
                spares, socket_dir, ready_timeout=ready_timeout, on_change=self._changed_now
            )
            if spares and socket_dir is not None
            else None
        )
        """Started workers that replace a dead local one at once (``server.pool.spares``)."""
        self._ready_timeout = ready_timeout
        self._on_change = on_change
        """Called when a worker comes (back) up: calls waiting for one look again."""
        self._settings_line = b""
        self._tasks: list[asyncio.Task[None]] = []
        self.snapshot: list[WorkerStatus] = []
        """Every worker's last ``Status``, refreshed each ``STATUS_INTERVAL`` and when one
        dies or comes back."""
        self._changed = asyncio.Event()
        """Set when a worker died or came back: the snapshot is refreshed at once."""
        self.on_snapshot: Callable[[], None] | None = None
        """Called after each refresh of ``snapshot`` (to publish it to other gateways)."""

    async def start(self, settings_line: bytes) -> None:
        """Spawn every local worker and return once each answers ``Ping``.

        Raises ``StartupError`` (after stopping the others) if one does not.
        Remote workers are connected to in the background: one that cannot
        be reached does not hold up the gateway, and calls wait (within
        their timeout) for a worker to come up.
        """
        self._settings_line = settings_line
        local = [slot for slot in self._slots if isinstance(slot.process, WorkerProcess)]
        for slot in local:
            slot.process.spawn(settings_line)
        results = await asyncio.gather(
            *(slot.process.wait_ready(self._ready_timeout) for slot in local),
            return_exceptions=True,
        )
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            await self._terminate_all()
            raise StartupError(f"inference workers did not start: {failures[0]}") from failures[0]
        now = asyncio.get_running_loop().time()
        for slot in self._slots:
            if slot in local:
                slot.state, slot.live_since = WorkerState.LIVE, now
            else:
                slot.task = asyncio.create_task(self._restart(slot, first=True))
        self._changed.set()  # the first snapshot now, not an interval later
        if self.spares is not None and local:
            self.spares.start(settings_line)  # after the slots: they go first at start-up
        self._tasks = [
            asyncio.create_task(self._watch()),
            asyncio.create_task(self._liveness()),
            asyncio.create_task(self._refresh_status()),
        ]

    async def stop(self) -> None:
        """End the background tasks, then every worker (SIGTERM, then SIGKILL)."""
        for task in self._tasks + [s.task for s in self._slots if s.task is not None]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        spares = self.spares.stop() if self.spares is not None else asyncio.sleep(0)
        spared, ended = await asyncio.gather(spares, self._terminate_all(), return_exceptions=True)
        if isinstance(spared, BaseException):  # the workers were stopped all the same
            log.warning("stopping the spare workers failed", exc_info=spared)
        if isinstance(ended, BaseException):
            raise ended

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

    def suspect(self, slot: Slot) -> None:
        """A call failed as if the worker died: if it did, act now rather than at the next poll."""
        if slot.state is WorkerState.LIVE and slot.process.exited():
            self._mark_dead(slot, slot.process.gone)

    def _mark_dead(self, slot: Slot, reason: str) -> None:
        now = asyncio.get_running_loop().time()
        if slot.state is WorkerState.LIVE and now - slot.live_since >= STABLE_AFTER:
            slot.crashes = 0  # a restart that fails again keeps backing off
        slot.crashes += 1
        first, longest = RESTART_BACKOFF
        delay = min(first * 2 ** (slot.crashes - 1), longest)
        if self._may_take_spare(slot) and self.spares is not None and self.spares.ready:
            delay = 0.0  # a started spare takes the slot (see _restart); nothing to wait for
        slot.state, slot.restart_at = WorkerState.DEAD, now + delay
        self._changed.set()
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

    async def _restart(self, slot: Slot, *, first: bool = False) -> None:
        """Start (or for a remote worker, connect) again; ``first``: the first connect."""
        process = slot.process
        process.kill()  # in case it was declared dead while still running (hung)
        await process.wait_exit(STOP_TIMEOUT)
        await process.close()
        spare = await self._spare_for(slot)
        if spare is not None:
            spare.index, slot.process, process = process.index, spare, spare
        else:
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
        self._changed.set()
        if first:
            log.info(
                "remote inference worker connected", worker=process.index, address=process.address
            )
            self._on_change()
            return
        slot.restarts += 1
        log.info(
            "inference worker restarted",
            worker=process.index,
            pid=process.pid,
            address=process.address,
            spare=spare is not None,
        )
        self._on_change()

    @staticmethod
    def _may_take_spare(slot: Slot) -> bool:
        """A local slot's first crash in a while: later ones back off with a new process."""
        return slot.crashes <= 1 and isinstance(slot.process, WorkerProcess)

    async def _spare_for(self, slot: Slot) -> WorkerProcess | None:
        """A started spare that still answers, for a slot that may take one."""
        if self.spares is None or not self._may_take_spare(slot):
            return None
        spare = self.spares.take()
        if spare is None or spare.stub is None:
            return None
        try:  # started a while ago: it may have hung since
            await answered(spare.stub.Ping(worker_pb2.PingRequest(), timeout=SPARE_PING_TIMEOUT))
        except (grpc.aio.AioRpcError, WorkerGone):
            log.warning("spare inference worker did not answer; starting a new one", pid=spare.pid)
            spare.kill()
            await spare.wait_exit(STOP_TIMEOUT)
            await spare.close()
            return None
        except asyncio.CancelledError:
            spare.kill()  # the pool is stopping, and the spare is no longer the spares' to end
            raise
        return spare

    def _changed_now(self) -> None:
        self._changed.set()

    def _ready_timeout_of(self, slot: Slot) -> float:
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

    async def _ping(self, slot: Slot) -> None:
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
            self._on_change()  # a call that failed on the old instance may use this one

    async def status(self) -> list[WorkerStatus]:
        """Every slot, with what its worker holds (asked over ``Status``) when it is live."""
        return list(await asyncio.gather(*(self._status(slot) for slot in self._slots)))

    async def _refresh_status(self) -> None:
        interval = STATUS_INTERVAL  # read once: each supervisor keeps the one it started with
        while True:
            # Not only on the interval: /metrics (and the other gateways) should show
            # a worker down or back up as it happens, not up to a second later.
            # Not ``wait_for``: on Python 3.11 it can swallow the cancellation of ``stop``.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._changed.wait()
            self._changed.clear()
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

    async def _status(self, slot: Slot) -> WorkerStatus:
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


def private_directory(path: Path) -> None:
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
