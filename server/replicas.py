"""The other gateway processes, when ``settings.gateways`` is above one.

One Python process serves HTTP, gRPC and token checks on one core at most,
so a host with several cores runs several gateways on the same ports
(``SO_REUSEPORT``: the kernel spreads new connections over them). The first
gateway, the one ``sealserve serve`` started, binds the ports and then runs
``python -P -m server.replicas`` once per other gateway. Each replica is a
whole gateway (its own share of the workers, token cache, deny-list and
audit recorder) except for the intake job supervisor, which only the
primary runs. Settings reach a replica as one JSON line on its stdin, so
the master key never appears in a process listing; a replica dies with the
primary, whichever way the primary ends.

The primary restarts a replica that exits (with backoff) and, on shutdown,
stops them with the same grace as its own calls.

Each gateway leaves a marker in the shared directory once it takes
connections, and the group reports ready only when every gateway has: a
client that connected earlier would land on the primary alone and, with
keep-alive, stay there. A replica that dies later does not make the group
unready; the others serve while it restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from server import affinity
from server.pool.process import settings_for_worker
from server.spawn import module_command

if TYPE_CHECKING:
    from server.settings import Settings

log = structlog.get_logger(__name__)

WATCH_INTERVAL = 0.5
RESTART_BACKOFF = (0.5, 10.0)
"""First and longest delay before restarting a replica that keeps exiting."""
STOP_TIMEOUT = 5.0
"""How long past the grace a replica gets to exit before it is killed."""


def mark_listening(shared_dir: Path, index: int) -> None:
    """Gateway ``index`` takes connections now."""
    (shared_dir / f"listening-{index}").touch()


def all_listening(shared_dir: Path, gateways: int) -> bool:
    """Whether every gateway of the group has taken connections since the group started."""
    return all((shared_dir / f"listening-{index}").exists() for index in range(gateways))


class _Replica:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: subprocess.Popen[bytes] | None = None
        self.crashes = 0
        self.restart_at = 0.0


class Replicas:
    """Gateway processes 1..N-1, started, watched and stopped by gateway 0."""

    def __init__(
        self, settings: Settings, *, shared_dir: Path | None, cpus: list[int] | None = None
    ) -> None:
        self._settings = settings
        self._line = settings_for_worker(settings)
        self._shared_dir = shared_dir
        self._cpus = cpus
        """The CPUs the primary was started with, when the gateways are pinned to them."""
        self._replicas = [_Replica(index) for index in range(1, settings.gateways)]
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pids(self) -> list[int]:
        """Process ids of the running replicas."""
        return [r.process.pid for r in self._replicas if r.process and r.process.poll() is None]

    def start(self) -> None:
        """Start every replica and the task that restarts them."""
        for replica in self._replicas:
            self._spawn(replica)
        self._watcher = asyncio.create_task(self._watch())

    def _spawn(self, replica: _Replica) -> None:
        command = module_command("server.replicas", "--index", str(replica.index))
        if self._shared_dir is not None:
            command += ["--shared-dir", str(self._shared_dir)]
        if self._cpus:
            command += ["--cpus", ",".join(map(str, self._cpus))]
        replica.process = subprocess.Popen(command, stdin=subprocess.PIPE)  # noqa: S603 - ours
        if self._cpus:  # its start-up work too goes to its own CPUs, not to this gateway's
            affinity.place(
                replica.process.pid,
                affinity.cpus_for(self._cpus, replica.index, self._settings.gateways),
            )
        stdin = replica.process.stdin
        if stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                stdin.write(self._line)
                stdin.flush()

    async def _watch(self) -> None:
        started = {replica.index: time.monotonic() for replica in self._replicas}
        while not self._stopping:
            await asyncio.sleep(WATCH_INTERVAL)
            now = time.monotonic()
            for replica in self._replicas:
                process = replica.process
                if process is None or self._stopping:
                    continue
                code = process.poll()
                if code is None:
                    if now - started[replica.index] > 30:  # noqa: PLR2004 - stable: forgive
                        replica.crashes = 0
                    continue
                if replica.restart_at == 0.0:
                    replica.crashes += 1
                    first, longest = RESTART_BACKOFF
                    delay = min(first * 2 ** (replica.crashes - 1), longest)
                    replica.restart_at = now + delay
                    log.warning(
                        "gateway process exited; restarting it",
                        gateway=replica.index,
                        exit_code=code,
                        restart_in=delay,
                    )
                elif now >= replica.restart_at:
                    replica.restart_at = 0.0
                    self._close(replica)
                    self._spawn(replica)
                    started[replica.index] = now

    async def stop(self, grace: float) -> None:
        """SIGTERM every replica; kill those still running ``grace`` + 5 s later."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for replica in self._replicas:
            if replica.process is not None and replica.process.poll() is None:
                replica.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace + STOP_TIMEOUT
        for replica in self._replicas:
            process = replica.process
            while process is not None and process.poll() is None:
                if time.monotonic() >= deadline:
                    log.warning("gateway process did not stop in time; killing it")
                    process.kill()
                    break
                await asyncio.sleep(0.05)
            self._close(replica)

    @staticmethod
    def _close(replica: _Replica) -> None:
        process = replica.process
        if process is not None and process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(0)


def main(
    index: int, settings_json: str, shared_dir: Path | None, cpus: list[int] | None = None
) -> None:
    """Run gateway ``index`` with the primary's settings until SIGTERM or the primary ends."""
    import uvloop  # noqa: PLC0415 - the entry point's own imports

    from server.bootstrap import build_container, build_services  # noqa: PLC0415
    from server.logs import configure_logging  # noqa: PLC0415
    from server.pool.worker import die_with_parent  # noqa: PLC0415
    from server.runner import run_gateway  # noqa: PLC0415
    from server.settings import Settings  # noqa: PLC0415

    die_with_parent()
    settings = Settings.model_validate_json(settings_json)
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    structlog.contextvars.bind_contextvars(gateway=index, gateway_pid=os.getpid())
    container = build_container(settings)
    try:
        services = build_services(container)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(
                run_gateway(container, services, index=index, shared_dir=shared_dir, cpus=cpus)
            )
    finally:
        container.close()


def run(argv: list[str] | None = None) -> None:
    """Command-line entry point (the primary gateway runs it; not meant for people)."""
    parser = argparse.ArgumentParser(prog="python -m server.replicas")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--shared-dir", type=Path)
    parser.add_argument(
        "--cpus", type=lambda text: [int(cpu) for cpu in text.split(",")], default=None
    )
    args = parser.parse_args(argv)
    line = sys.stdin.buffer.readline()
    if not line:
        return  # the primary is already gone
    main(args.index, line.decode(), args.shared_dir, args.cpus)


if __name__ == "__main__":
    run()
