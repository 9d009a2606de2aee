"""One local worker process as the gateway sees it: spawn, channel, readiness, end.

Workers are started as ``python -P -m server.pool.worker --settings-json -``
(the same entry point a remote ``sealserve worker`` will use), not through
``multiprocessing``: nothing is pickled, no start method is set globally, and
the child imports only what a worker needs.

The settings go to the child on stdin, never on the command line (``ps``
shows argv to every user, and the settings may hold the master key). The
parent then keeps stdin open as the child's lifeline: when the parent ends,
however it ends, the pipe closes and the worker exits; on Linux the child also
asks the kernel for SIGKILL on parent death (``PR_SET_PDEATHSIG``). That
signal fires when the *thread* that spawned the child ends, so spawn only
from the event loop's thread, which lives as long as the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import time
from typing import TYPE_CHECKING

import grpc

from protos import worker_pb2, worker_pb2_grpc
from server.pool.frames import FrameChannel, frames_path
from server.pool.worker import GRPC_OPTIONS
from server.spawn import module_command

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from server.settings import Settings

MAX_SOCKET_PATH = 100
"""Unix socket paths must fit ``sun_path`` (108 bytes on Linux, 104 on macOS)."""

CHANNEL_OPTIONS = [
    *GRPC_OPTIONS,
    # Notice a starting worker as soon as it listens. Connecting to a Unix
    # socket that is not there yet costs microseconds, so retry every 50-100 ms:
    # gRPC's default (1 s doubling to 120 s), or even a 1 s cap, left a worker
    # that was up idle for up to a second, at every start and every restart.
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 100),
]


class WorkerStartError(Exception):
    """A worker process exited or stayed silent instead of answering ``Ping``."""


async def ping_until_ready(
    stub: worker_pb2_grpc.WorkerStub,
    *,
    timeout: float,
    attempt: float,
    what: str,
    gone: Callable[[], str | None] = lambda: None,
) -> str:
    """Ping until the worker answers (its instance id) or ``timeout`` passes.

    ``gone`` says why waiting is pointless (a local process that exited);
    ``WorkerStartError`` names ``what`` and the last failure.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        problem = gone()
        if problem is not None:
            msg = f"{what} {problem}"
            raise WorkerStartError(msg)
        left = deadline - time.monotonic()
        if left <= 0:
            msg = f"{what} did not answer within {timeout:g} s ({last})"
            raise WorkerStartError(msg)
        try:
            reply = await stub.Ping(
                worker_pb2.PingRequest(), timeout=min(left, attempt), wait_for_ready=True
            )
        except grpc.aio.AioRpcError as exc:
            last = exc.details() or exc.code().name
            continue
        return str(reply.instance_id)


def settings_for_worker(settings: Settings) -> bytes:
    """The settings as one JSON line a worker rebuilds them from, secrets included.

    ``model_dump_json`` masks ``SecretStr`` fields, which would hand the
    worker ``**********`` as its master key; the secret is put back here, and
    the line only ever travels over the child's stdin pipe.
    """
    data = settings.model_dump(mode="json")
    if settings.master_key is not None:
        data["master_key"] = settings.master_key.get_secret_value()
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


class WorkerProcess:
    """A spawned worker: its process, its socket, and the one channel to it."""

    def __init__(self, *, index: int, socket_path: Path) -> None:
        longest = len(str(frames_path(socket_path)))
        if longest > MAX_SOCKET_PATH:
            msg = f"socket path too long for a Unix socket ({longest} bytes)"
            raise ValueError(msg)
        self.index = index
        """The slot's index (-1 for a spare not yet handed a slot: ``server.pool.spares``)."""
        self.socket_path = socket_path
        self.process: subprocess.Popen[bytes] | None = None
        self.channel: grpc.aio.Channel | None = None
        self.stub: worker_pb2_grpc.WorkerStub | None = None
        self.frames: FrameChannel | None = None
        """The inference connection (``server.pool.frames``), used once the worker is ready."""
        self.instance_id: str | None = None
        self.started_at = 0.0

    address = None
    """Local workers are known by index alone (a remote one by ``host:port``)."""
    gone = "exited"
    """Why the pool marks it dead when ``exited()``."""

    @property
    def inference(self) -> FrameChannel | None:
        """What calls go through: the framed connection."""
        return self.frames

    @property
    def pid(self) -> int | None:
        """The process id while a process exists."""
        return None if self.process is None else self.process.pid

    def spawn(self, settings_line: bytes) -> None:
        """Start the process and open a channel to its socket (not yet ready)."""
        self.socket_path.unlink(missing_ok=True)
        self.process = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            [
                *module_command("server.pool.worker"),
                "--socket",
                str(self.socket_path),
                "--settings-json",
                "-",
            ],
            stdin=subprocess.PIPE,
        )
        self.started_at = time.monotonic()
        stdin = self.process.stdin
        if stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                stdin.write(settings_line)
                stdin.flush()
        self.channel = grpc.aio.insecure_channel(f"unix:{self.socket_path}", CHANNEL_OPTIONS)
        self.stub = worker_pb2_grpc.WorkerStub(self.channel)
        self.frames = FrameChannel(frames_path(self.socket_path))

    async def wait_ready(self, timeout: float) -> str:
        """Wait until the worker answers ``Ping``; returns its instance id."""
        if self.stub is None or self.process is None:
            msg = f"worker {self.index} was not spawned"
            raise WorkerStartError(msg)
        process = self.process

        def gone() -> str | None:
            code = process.poll()
            return None if code is None else f"exited with code {code} while starting"

        what = f"worker {self.index}" if self.index >= 0 else "spare worker"
        self.instance_id = await ping_until_ready(
            self.stub, timeout=timeout, attempt=0.5, what=what, gone=gone
        )
        return self.instance_id

    def exited(self) -> bool:
        """True when the process has ended (it is reaped here)."""
        return self.process is None or self.process.poll() is not None

    def terminate(self) -> None:
        """SIGTERM: the worker drains and exits."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: for a worker that is hung or would not stop."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    async def wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the process to end; True if it did."""
        deadline = time.monotonic() + timeout
        while not self.exited():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def close(self) -> None:
        """Close the channel, the lifeline and the sockets; the process must be gone or going."""
        channel, self.channel, self.stub = self.channel, None, None
        frames, self.frames = self.frames, None
        if frames is not None:
            frames.close()
        if channel is not None:
            await channel.close()
        if self.process is not None and self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        self.socket_path.unlink(missing_ok=True)
        frames_path(self.socket_path).unlink(missing_ok=True)
