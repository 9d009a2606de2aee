"""Local workers started ahead of need, so that a dead one is replaced at once.

Starting a worker is a new Python process importing gRPC, NumPy, LiteRT and
the registry: about a second of CPU, and several seconds of wall time on a
host whose cores are busy, which is exactly when workers tend to die. A
gateway therefore keeps ``spare_workers`` of them started and answering
``Ping`` beside its pool (as php-fpm and Apache keep spare servers). The
supervisor hands a spare the slot of a worker that died, so the slot is
live again as soon as the death is noticed, and a new spare is started in
the background. A spare holds no model and takes no calls until it is
handed a slot; the same backoff as before applies to a worker that keeps
crashing, since a spare replaces only a slot's first crash in a while.

A spare listens on ``spare-N.sock`` in the pool's socket directory and keeps
that name once it serves a slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from typing import TYPE_CHECKING

import structlog

from server.pool.process import WorkerProcess, WorkerStartError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

log = structlog.get_logger(__name__)

CHECK_INTERVAL = 1.0
"""How often ready spares are looked at for one that exited (seconds)."""
RETRY_BACKOFF = (1.0, 30.0)
"""First and longest delay before starting a spare again after one failed to start
or exited soon after it started."""
STABLE_AFTER = 30.0
"""A spare up this long has the failure count (and so the backoff) reset."""
STOP_TIMEOUT = 5.0
"""How long a spare gets to exit after SIGTERM before it is killed."""


class SpareWorkers:
    """Keeps ``count`` started workers ready for ``take``."""

    def __init__(
        self,
        count: int,
        socket_dir: Path,
        *,
        ready_timeout: float,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._count = count
        self._socket_dir = socket_dir
        self._ready_timeout = ready_timeout
        self._on_change = on_change
        """Told when the number of ready spares changed (for ``/metrics``)."""
        self._serial = itertools.count()
        """Numbers spare sockets: a name is never reused, even after its worker is gone."""
        self._ready: deque[WorkerProcess] = deque()
        self._starting: WorkerProcess | None = None
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._settings_line = b""
        self._failures = 0
        """Spares in a row that did not start, or exited soon after they did."""
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def ready(self) -> int:
        """Spares started, answering and not yet handed out."""
        return len(self._ready)

    def start(self, settings_line: bytes) -> None:
        """Start keeping spares, in the background: the pool does not wait for them."""
        self._settings_line = settings_line
        self._task = asyncio.create_task(self._keep())

    def take(self) -> WorkerProcess | None:
        """A ready spare, now the caller's to run; ``None`` when there is none.

        The caller gives it its slot's ``index``. A new spare is started to
        take its place.
        """
        self._wanted.set()
        while self._ready:
            process = self._ready.popleft()
            if not process.exited():
                self._on_change()
                return process
            self._forget(process)
        return None

    async def stop(self) -> None:
        """Stop starting spares and end every one not handed out (SIGTERM, then SIGKILL)."""
        spares = list(self._ready)
        if self._starting is not None:  # before the task ends, which forgets it
            spares.append(self._starting)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._ready.clear()
        self._starting = None
        for process in spares:
            process.terminate()
        for process, done in zip(
            spares,
            await asyncio.gather(*(p.wait_exit(STOP_TIMEOUT) for p in spares)),
            strict=True,
        ):
            if not done:
                process.kill()
                await process.wait_exit(STOP_TIMEOUT)
            await process.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def _keep(self) -> None:
        while True:
            try:
                await self._keep_once()
            except Exception:  # keeping spares must outlive any failure
                log.warning("cannot keep a spare inference worker", exc_info=True)
                self._failures += 1
                await asyncio.sleep(self._backoff())

    async def _keep_once(self) -> None:
        """Drop exited spares, then start one if one is missing, or wait to be needed."""
        now = time.monotonic()
        for process in [p for p in self._ready if p.exited()]:
            log.warning("spare inference worker exited", pid=process.pid)
            self._ready.remove(process)
            self._forget(process)
            self._on_change()
            if now - process.started_at < STABLE_AFTER:
                self._failures += 1
        if any(now - p.started_at >= STABLE_AFTER for p in self._ready):
            self._failures = 0
        if len(self._ready) < self._count:
            if self._failures:
                await asyncio.sleep(self._backoff())
            await self._start_one()
            return
        self._wanted.clear()
        # Not ``wait_for``: on Python 3.11 it can swallow the cancellation of ``stop``.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CHECK_INTERVAL):
                await self._wanted.wait()

    def _backoff(self) -> float:
        first, longest = RETRY_BACKOFF
        return float(min(first * 2 ** (self._failures - 1), longest))

    async def _start_one(self) -> None:
        """Start one spare and wait until it answers (a failure is logged and counted)."""
        path = self._socket_dir / f"spare-{next(self._serial)}.sock"
        process = WorkerProcess(index=-1, socket_path=path)
        self._starting = process
        try:
            process.spawn(self._settings_line)
            await process.wait_ready(self._ready_timeout)
        except (WorkerStartError, OSError) as exc:
            log.warning("spare inference worker did not start", reason=str(exc))
            self._failures += 1
            process.kill()
            await process.wait_exit(STOP_TIMEOUT)
            await process.close()
            return
        finally:
            self._starting = None
        self._ready.append(process)
        self._on_change()

    def _forget(self, process: WorkerProcess) -> None:
        """Close an exited spare's channel and sockets in the background."""
        task = asyncio.get_running_loop().create_task(process.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
