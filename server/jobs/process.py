"""Run one job process and follow it: progress events in, a verdict out, limits enforced.

The process gets an environment built from scratch (no ``SEALSERVE_*``
variable, so no master key or database URL, whatever the gateway was given),
its own session (so the whole process group can be killed), and its job
directory as working directory, ``HOME`` and ``TMPDIR``. It is killed past
its time limit, and past its memory limit: its resident memory is read from
``/proc`` twice a second (an address-space rlimit would not do: TensorFlow
reserves far more address space than it ever touches).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from server import affinity
from server.spawn import module_command

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from server.jobs.layout import JobDirectory

log = structlog.get_logger(__name__)

# Variables the job process may inherit: enough to find Python and its libraries.
_INHERITED = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "LD_LIBRARY_PATH",
)
_EVENT_LINE_LIMIT = 64 * 1024
MEMORY_POLL_SECONDS = 0.5
_STDERR_TAIL = 4000
MESSAGE_LIMIT = 1000


@dataclass(frozen=True)
class Outcome:
    """How a job process ended: ``ok`` with its result written, or the reason it did not.

    ``error`` is safe to show the tenant; ``detail`` is for the operator's log only.
    """

    ok: bool
    error: str | None = None
    detail: str | None = None


def job_environment(directory: JobDirectory, *, threads: int) -> dict[str, str]:
    """The job process's whole environment."""
    env = {name: os.environ[name] for name in _INHERITED if name in os.environ}
    # An empty or relative PYTHONPATH entry would put the job's own directory
    # (its working directory, which holds the upload) back on sys.path.
    paths = [p for p in env.pop("PYTHONPATH", "").split(os.pathsep) if Path(p).is_absolute()]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    home = str(directory.home)
    env.update(
        {
            "HOME": home,
            "TMPDIR": home,
            "KERAS_HOME": str(directory.home / ".keras"),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "KERAS_BACKEND": "tensorflow",
        }
    )
    if threads > 0:
        for name in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
            env[name] = str(threads)
        env["TF_NUM_INTEROP_THREADS"] = "1"
    return env


def _kill(process: asyncio.subprocess.Process) -> None:
    # The job runs in its own session: its group id is its pid.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def resident_bytes(pid: int) -> int | None:
    """The resident memory of process ``pid`` (``None`` once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as handle:  # noqa: PTH123 - procfs
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return None


async def _over_memory(process: asyncio.subprocess.Process, limit: int) -> int:
    """Return the resident bytes seen once ``process`` holds more than ``limit``."""
    while True:
        await asyncio.sleep(MEMORY_POLL_SECONDS)
        resident = resident_bytes(process.pid)
        if resident is not None and resident > limit:
            return resident


def _kill_unless_cancelled(process: asyncio.subprocess.Process, watch: asyncio.Task[int]) -> None:
    if not watch.cancelled():
        _kill(process)


def _stderr_tail(directory: JobDirectory) -> str:
    try:
        with directory.stderr.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - _STDERR_TAIL))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


async def _follow(
    stream: asyncio.StreamReader,
    on_progress: Callable[[str, float], Awaitable[None]],
    directory: JobDirectory,
) -> dict[str, Any] | None:
    """Read events until the stream ends; return the last ``error`` or ``done`` event."""
    final = None
    while line := await stream.readline():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        if event.get("event") == "progress":
            fraction = event.get("fraction")
            stage = str(event.get("stage", ""))[:64]
            if isinstance(fraction, (int, float)) and 0.0 <= fraction <= 1.0:
                await on_progress(stage, float(fraction))
        elif event.get("event") in {"error", "done"}:
            final = event
        elif event.get("event") == "sandbox" and not event.get("landlock"):
            log.warning("job runs without a Landlock sandbox", job_id=directory.job_id)
    return final


def _verdict(final: dict[str, Any] | None, code: int, directory: JobDirectory) -> Outcome:
    if final is not None and final["event"] == "done" and code == 0:
        return Outcome(ok=True)
    if final is not None and final["event"] == "error":
        message = str(final.get("message") or "the job failed")[:MESSAGE_LIMIT]
        detail = f"{final.get('kind')}: {final.get('detail')}"
        return Outcome(ok=False, error=message, detail=detail)
    return Outcome(
        ok=False,
        error=f"the job process ended unexpectedly (exit status {code})",
        detail=_stderr_tail(directory),
    )


async def run_job_process(
    directory: JobDirectory,
    *,
    timeout: float,
    threads: int,
    on_progress: Callable[[str, float], Awaitable[None]],
    memory_limit: int = 0,
) -> Outcome:
    """Start ``python -P -m server.jobs.worker`` on ``directory`` and wait for its verdict.

    Past ``timeout`` seconds, past ``memory_limit`` resident bytes (0: no
    limit), or when the caller is cancelled (the gateway is stopping), the
    whole process group is killed.
    """
    with directory.stderr.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *module_command("server.jobs.worker"),
            str(directory.root),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            cwd=directory.root,
            env=job_environment(directory, threads=threads),
            start_new_session=True,
            limit=_EVENT_LINE_LIMIT,
        )
    affinity.release(process.pid)  # not on the gateway's own CPU, if it is pinned to one
    assert process.stdout is not None  # noqa: S101 - asked for a pipe above
    memory = asyncio.create_task(_over_memory(process, memory_limit)) if memory_limit else None
    if memory is not None:  # over the limit: kill at once, the reading loop below then ends
        memory.add_done_callback(partial(_kill_unless_cancelled, process))
    try:
        async with asyncio.timeout(timeout):
            final = await _follow(process.stdout, on_progress, directory)
            code = await process.wait()
    except TimeoutError:
        _kill(process)
        await process.wait()
        return Outcome(ok=False, error=f"the job ran longer than the limit of {timeout:g} seconds")
    except ValueError as exc:  # an event line over the limit: not our worker talking
        _kill(process)
        await process.wait()
        return Outcome(ok=False, error="the job process misbehaved", detail=repr(exc))
    except BaseException:
        _kill(process)
        with contextlib.suppress(Exception):
            await asyncio.shield(process.wait())
        raise
    finally:
        if memory is not None and not memory.done():
            memory.cancel()
    if memory is not None and memory.done() and not memory.cancelled():
        mib = memory_limit / (1024 * 1024)
        verdict = Outcome(
            ok=False,
            error=f"the job used more memory than its limit of {mib:g} MiB",
            detail=f"resident {memory.result()} bytes",
        )
    else:
        verdict = _verdict(final, code, directory)
    if not verdict.ok:
        log.info("job process failed", job_id=directory.job_id, code=code, detail=verdict.detail)
    return verdict
