"""Spare workers (``server.pool.spares``): a dead worker's slot is live again at once.

Each test runs a one-worker pool with one spare, on the module's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING, Any

import pytest

from server.pool import supervision
from server.pool.pool import WorkerPool
from server.pool.status import WorkerState, WorkerStatus
from tests.servers import children

from .test_pool import eventually, gone, predict

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from .conftest import Digits, Reference, Sealed


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    """One event loop for the module."""
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture
def socket_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short directory for one pool's sockets (Unix socket paths are limited)."""
    return tmp_path_factory.mktemp("s") / "pool"


def spare_pids() -> set[int]:
    """Live workers this process started as spares (their socket is ``spare-N.sock``).

    A spare that was handed a slot keeps its socket, so it is still among them.
    """
    return set(children(os.getpid(), b"/spare-"))


@contextlib.asynccontextmanager
async def pool_with_spare(sealed: Sealed, socket_dir: Path) -> AsyncIterator[WorkerPool]:
    """One worker and one spare, the spare started; stopped at the end whatever happens."""
    settings = sealed.settings.model_copy(update={"spare_workers": 1})
    pool = WorkerPool(settings, workers=1, socket_dir=socket_dir)
    await pool.start()
    try:
        await eventually(lambda: _true(pool.spares_ready == 1))
        yield pool
    finally:
        await pool.stop(5)


async def _true(value: Any) -> Any:
    return value


async def live_other_than(pool: WorkerPool, pid: int | None) -> WorkerStatus | None:
    """The slot's status once it is live on a process other than ``pid``."""
    (status,) = await pool.status()
    return status if status.state is WorkerState.LIVE and status.pid != pid else None


def test_a_spare_takes_the_slot_of_a_killed_worker_and_is_replaced(
    runner: asyncio.Runner, sealed: Sealed, socket_dir: Path, digits: Digits, reference: Reference
) -> None:
    """SIGKILL the worker: the spare serves in its place well before a new process could start."""
    x = digits.x_test[:2]

    async def scenario() -> dict[str, Any]:
        async with pool_with_spare(sealed, socket_dir) as pool:
            (before,) = await pool.status()
            (spare,) = spare_pids()
            os.kill(before.pid or 0, signal.SIGKILL)
            after = await eventually(lambda: live_other_than(pool, before.pid))
            answer = await predict(pool, sealed.key, x)
            await eventually(lambda: _true(pool.spares_ready == 1))
            return {
                "before": before,
                "spare": spare,
                "after": after,
                "answer": answer,
                "new_spares": spare_pids(),
            }

    got = runner.run(scenario())
    assert got["after"].pid == got["spare"]  # the started spare, not a new process
    assert got["after"].restarts == 1
    assert got["after"].index == got["before"].index
    assert (got["answer"] == reference(digits.x_test[:2])).all()
    assert len(got["new_spares"] - {got["spare"]}) == 1  # and a new spare behind it
    assert gone(got["before"].pid)


def test_a_worker_that_crashes_again_soon_waits_out_the_backoff(
    runner: asyncio.Runner, sealed: Sealed, socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a slot's first crash in a while takes a spare: a crash loop still backs off."""
    monkeypatch.setattr(supervision, "RESTART_BACKOFF", (0.5, 10.0))

    async def scenario() -> tuple[WorkerStatus, WorkerStatus, set[int], float]:
        async with pool_with_spare(sealed, socket_dir) as pool:
            (first,) = await pool.status()
            os.kill(first.pid or 0, signal.SIGKILL)
            second = await eventually(lambda: live_other_than(pool, first.pid))
            await eventually(lambda: _true(pool.spares_ready == 1))
            spares = spare_pids()
            os.kill(second.pid or 0, signal.SIGKILL)
            killed = time.monotonic()
            third = await eventually(lambda: live_other_than(pool, second.pid))
            return second, third, spares, time.monotonic() - killed

    second, third, spares, waited = runner.run(scenario())
    assert second.pid in spares  # the first crash took the spare
    assert third.pid not in spares  # a process started after the backoff, not the spare
    assert third.restarts == 2
    assert waited >= 2 * 0.5  # the second crash's delay: 0.5 s doubled


def test_a_hung_spare_is_not_handed_a_slot(
    runner: asyncio.Runner, sealed: Sealed, socket_dir: Path
) -> None:
    """A spare that stopped answering (SIGSTOP) is killed; the slot gets a new process."""

    async def scenario() -> tuple[int, WorkerStatus, WorkerStatus]:
        async with pool_with_spare(sealed, socket_dir) as pool:
            (before,) = await pool.status()
            (spare,) = spare_pids()
            os.kill(spare, signal.SIGSTOP)
            os.kill(before.pid or 0, signal.SIGKILL)
            after = await eventually(lambda: live_other_than(pool, before.pid))
            return spare, before, after

    spare, before, after = runner.run(scenario())
    assert after.pid not in (spare, before.pid)
    assert after.restarts == 1
    assert gone(spare)


def test_a_spare_that_dies_is_started_again(
    runner: asyncio.Runner, sealed: Sealed, socket_dir: Path
) -> None:
    """A spare is watched too: kill it and another is started, the worker untouched."""

    async def scenario() -> tuple[int, set[int], WorkerStatus, WorkerStatus]:
        async with pool_with_spare(sealed, socket_dir) as pool:
            (before,) = await pool.status()
            (spare,) = spare_pids()
            os.kill(spare, signal.SIGKILL)
            await eventually(lambda: _true(spare_pids() - {spare}))
            await eventually(lambda: _true(pool.spares_ready == 1))
            (after,) = await pool.status()
            return spare, spare_pids(), before, after

    spare, spares, before, after = runner.run(scenario())
    assert spare not in spares
    assert len(spares) == 1
    assert (after.pid, after.restarts) == (before.pid, 0)


def test_stop_ends_the_spares_and_removes_their_sockets(
    runner: asyncio.Runner, sealed: Sealed, socket_dir: Path
) -> None:
    """stop() reaps the spare as it does the workers; no socket is left behind."""

    async def scenario() -> set[int]:
        async with pool_with_spare(sealed, socket_dir):
            return spare_pids()

    spares = runner.run(scenario())
    assert len(spares) == 1
    assert all(gone(pid) for pid in spares)
    assert not list(socket_dir.iterdir())  # neither socket of any worker or spare
