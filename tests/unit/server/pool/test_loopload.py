"""The gateway's loop counts as busy while its thread runs nearly all the time, and only then."""

from __future__ import annotations

import asyncio
import time

from server.pool import loopload
from server.pool.loopload import LoopLoad, thread_times


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_thread_times_count_this_threads_work() -> None:
    """Time on a CPU (or waiting for one) grows by about the time spent spinning."""
    running, waiting = thread_times()
    _spin(0.1)
    later_running, later_waiting = thread_times()
    assert (later_running + later_waiting) - (running + waiting) >= 0.09
    assert later_running > running


def test_a_spinning_loop_is_busy_and_an_idle_one_is_not() -> None:
    """Callbacks that hog the loop make it busy; once it only waits, it is not busy any more."""

    async def scenario() -> tuple[bool, float, bool, float]:
        load = LoopLoad()
        load.start()
        try:
            loop = asyncio.get_running_loop()
            end = loop.time() + 6 * loopload.WINDOW
            while loop.time() < end:  # the loop never waits: every turn runs something
                _spin(0.005)
                await asyncio.sleep(0)
            spinning = (load.busy, load.share)
            await asyncio.sleep(4 * loopload.WINDOW)  # now it only waits for the timer
            return (*spinning, load.busy, load.share)
        finally:
            load.stop()

    busy, share, busy_after, share_after = asyncio.run(scenario())
    assert busy
    assert share >= loopload.BUSY_ENTER
    assert not busy_after
    assert share_after < loopload.BUSY_LEAVE
