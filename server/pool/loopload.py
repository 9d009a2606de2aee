"""How busy the gateway's event loop is: the signal to coalesce calls harder.

Calls parsed in one turn of the loop share a trip to their worker anyway
(``server.pool.dispatcher``), but gRPC hands the gateway its calls one turn
at a time, so under gRPC load nearly every call made a trip of its own:
measured, 1.1 calls per trip at 64 concurrent calls against 17 for REST.
Holding calls back for company (a fixed delay) would fix that and ruin the
latency of a lone caller, who has no company coming. What tells the two
apart is whether the loop has time to spare: when it is busy nearly all the
time, calls are queueing anyway, and a short wait costs a call little while
fewer trips give the loop back the time they took.

``LoopLoad`` samples, every ``WINDOW``, the loop thread's own scheduler
statistics (``/proc/thread-self/schedstat``: time on a CPU and time runnable
but waiting for one). The rest of the window the thread was blocked: the
loop was idle, waiting for I/O or a timer. Busy starts when the idle share
falls under ``1 - BUSY_ENTER`` and ends when it rises over ``1 - BUSY_LEAVE``
(the gap keeps it from flapping as the coalescing it triggers frees time).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

WINDOW = 0.05
"""Seconds between samples."""
BUSY_ENTER = 0.9
"""Share of a window the loop thread ran or waited to run, from which it counts as busy."""
BUSY_LEAVE = 0.7
"""Share under which a busy loop counts as not busy any more."""
_SCHEDSTAT = Path("/proc/thread-self/schedstat")


def thread_times() -> tuple[float, float]:
    """The calling thread's seconds on a CPU and runnable waiting for one (0 if unknown)."""
    try:
        running, waiting, _ = _SCHEDSTAT.read_bytes().split()
    except (OSError, ValueError):  # not Linux, or no scheduler statistics
        return time.thread_time(), 0.0
    return int(running) / 1e9, int(waiting) / 1e9


class LoopLoad:
    """Whether the running event loop has been busy lately (``busy``), sampled in its thread."""

    def __init__(self) -> None:
        self.busy = False
        self.share = 0.0
        """The last window's share of time the loop thread ran or waited to run."""
        self._handle: asyncio.TimerHandle | None = None
        self._last = (0.0, 0.0)

    def start(self) -> None:
        """Start sampling on the running loop."""
        loop = asyncio.get_running_loop()
        running, waiting = thread_times()
        self._last = (loop.time(), running + waiting)
        self._handle = loop.call_later(WINDOW, self._sample)

    def stop(self) -> None:
        """Stop sampling; the loop counts as not busy."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.busy = False

    def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        running, waiting = thread_times()
        then, used = self._last
        self._last = (now, running + waiting)
        if now > then:
            self.share = min(1.0, (running + waiting - used) / (now - then))
            self.busy = self.share >= (BUSY_LEAVE if self.busy else BUSY_ENTER)
        self._handle = loop.call_later(WINDOW, self._sample)
