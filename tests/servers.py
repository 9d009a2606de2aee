"""Start real ``sealserve`` processes for functional tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import httpx
import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

SEALSERVE = str(Path(sys.executable).with_name("sealserve"))


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has exited)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def children(pid: int, marker: bytes) -> list[int]:
    """Live children of ``pid`` whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if (
            stat is not None
            and int(stat[1]) == pid
            and marker in cmdline
            and alive(int(entry.name))
        ):
            found.append(int(entry.name))
    return found


def argument(pid: int, flag: str) -> str:
    """The value after ``flag`` in the command line of ``pid``."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return args[args.index(flag) + 1]


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real ``sealserve`` command line."""
    return subprocess.run(  # noqa: S603 - our own console script
        [SEALSERVE, *args], env=env, capture_output=True, text=True, check=check, timeout=120
    )


def server_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """An environment for a server on ``data_dir`` (inherits PATH and the test DB URL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALSERVE_")}
    # One worker and no spare: each extra process costs a second of CPU at every start.
    # Tests of several workers or of spares ask for them.
    env.update(
        {
            "SEALSERVE_DATA_DIR": str(data_dir),
            "SEALSERVE_WORKERS": "1",
            "SEALSERVE_SPARE_WORKERS": "0",
        }
    )
    env.update(extra)
    return env


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout} s")
        time.sleep(interval)


@dataclass
class ServerProcess:
    """A running ``sealserve serve`` with its ports and output file."""

    process: subprocess.Popen[bytes]
    rest_port: int
    grpc_port: int
    log: Path

    @property
    def url(self) -> str:
        """Base URL of the REST port."""
        return f"http://127.0.0.1:{self.rest_port}"

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        """Everything the server has logged so far."""
        return self.log.read_text(errors="replace")


def start_server(
    env: dict[str, str],
    log: Path,
    *,
    timeout: float = 60,
    ports: tuple[str, str] | None = None,
    cwd: Path | None = None,
) -> ServerProcess:
    """Start ``sealserve serve`` (on free ports unless given, in ``cwd``) and wait until it is ready."""
    rest, grpc_port = (int(ports[0]), int(ports[1])) if ports else (free_port(), free_port())
    env = {**env, "SEALSERVE_REST_PORT": str(rest), "SEALSERVE_GRPC_PORT": str(grpc_port)}
    with log.open("wb") as handle:  # the child keeps its own descriptor
        process = subprocess.Popen(  # noqa: S603 - our own console script
            [SEALSERVE, "serve"], env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd
        )
    server = ServerProcess(process, rest, grpc_port, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            msg = f"server exited with {process.returncode}:\n{server.output()}"
            raise RuntimeError(msg)
        try:
            if httpx.get(f"{server.url}/v2/health/ready", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    msg = f"server not ready in {timeout}s:\n{server.output()}"
    raise RuntimeError(msg)
