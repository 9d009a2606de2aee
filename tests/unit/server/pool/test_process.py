"""A worker process is spawned with its settings on stdin, answers Ping, and ends cleanly."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from server.pool.process import WorkerProcess, WorkerStartError, settings_for_worker
from server.settings import Settings

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import Sealed


def test_settings_reach_the_worker_with_their_secrets(sealed: Sealed) -> None:
    """The line a worker reads rebuilds equal settings, master key included (not '**********')."""
    line = settings_for_worker(sealed.settings)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    rebuilt = Settings.model_validate_json(line)
    assert rebuilt.master_key is not None
    assert sealed.settings.master_key is not None
    assert rebuilt.master_key.get_secret_value() == sealed.settings.master_key.get_secret_value()
    assert rebuilt.resolved_database_url == sealed.settings.resolved_database_url


def test_socket_path_that_cannot_bind_is_refused_early(tmp_path: Path) -> None:
    """A path longer than a Unix socket allows fails at construction, not as a silent hang."""
    with pytest.raises(ValueError, match="socket path too long"):
        WorkerProcess(index=0, socket_path=tmp_path / ("x" * 120))


def test_spawned_worker_answers_ping_and_exits_on_sigterm(
    sealed: Sealed, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """spawn, wait_ready and terminate: an instance id, then exit code 0."""
    worker = WorkerProcess(index=0, socket_path=tmp_path_factory.mktemp("p") / "w.sock")

    async def scenario() -> tuple[str, int | None]:
        worker.spawn(settings_for_worker(sealed.settings))
        instance = await worker.wait_ready(30)
        worker.terminate()
        assert await worker.wait_exit(10)
        await worker.close()
        return instance, worker.process.returncode if worker.process else None

    instance, code = asyncio.run(scenario())
    assert len(instance) == 32
    assert code == 0


def test_worker_that_dies_at_start_is_reported(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A worker that cannot start (unreadable settings) is a WorkerStartError with its exit code."""
    worker = WorkerProcess(index=3, socket_path=tmp_path_factory.mktemp("p") / "w.sock")

    async def scenario() -> None:
        worker.spawn(b"{not json\n")
        try:
            with pytest.raises(WorkerStartError, match="worker 3 exited with code 1"):
                await worker.wait_ready(30)
        finally:
            await worker.close()

    asyncio.run(scenario())
