"""The job process: ``python -m server.jobs.worker JOB_DIR``, one upload, then exit.

This is the only process that imports TensorFlow (through ``compress``), and
the upload it works on is untrusted, so it is given nothing worth stealing:
no database, no key, no secret in its environment (the supervisor builds that
environment from scratch). It reads ``JOB_DIR/job.json``, runs
``compress_model`` on the files under ``JOB_DIR/input``, writes the TFLite
model and a JSON report under ``JOB_DIR/output``, and reports progress as JSON
lines on its standard output::

    {"event": "progress", "stage": "pruning", "fraction": 0.5}
    {"event": "error", "message": "<safe for the tenant>", "kind": "UnsafeModel", "detail": ...}
    {"event": "done"}

Everything else it prints (TensorFlow's and Keras's chatter) goes to stderr,
which the supervisor keeps for the operator's log. Limits are applied here,
before the upload is opened: no core dumps, no file larger than the job's
budget, a Landlock sandbox where the kernel has one (``server.jobs.sandbox``:
only its own directory writable, no TCP), and the process ends itself if the
gateway that started it dies.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import IO, Any

from compress import CompressionError, IntakeLimits, ModelKind, compress_model, parse_options
from server.jobs.layout import JobDirectory
from server.jobs.sandbox import confine, default_read_paths

EXIT_REFUSED = 2
EXIT_CRASHED = 3
EXIT_ORPHANED = 4
_PARENT_POLL_SECONDS = 1.0


class _Events:
    """The event stream: a private copy of stdout, one JSON object per line."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def emit(self, event: str, **fields: Any) -> None:
        self._stream.write(json.dumps({"event": event, **fields}) + "\n")
        self._stream.flush()


def _take_stdout() -> _Events:
    # Keep fd 1 for events and point it (and so every stray print, Python's
    # or C++'s) at stderr, so nothing else can forge or corrupt an event.
    events = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    return _Events(events)


def _limit_resources(max_file_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))


def _watch_parent() -> None:
    """End this process when its gateway dies: nobody would read the result."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(_PARENT_POLL_SECONDS)
            if os.getppid() != parent:
                os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _inside(directory: JobDirectory, relative: str) -> Path:
    path = (directory.root / relative).resolve()
    if not path.is_relative_to(directory.input.resolve()):
        msg = f"input {relative!r} is outside the job's input directory"
        raise ValueError(msg)
    return path


def run(directory: JobDirectory, spec: dict[str, Any], events: _Events) -> int:
    """Run the job ``spec`` describes on ``directory``'s files; returns the exit status."""
    files = {role: _inside(directory, relative) for role, relative in spec["files"].items()}
    try:
        result = compress_model(
            source=files["model"],
            kind=ModelKind(spec["kind"]),
            staging=directory.work,
            options=parse_options(spec["options"]),
            calibration=files.get("calibration"),
            evaluation=files.get("evaluation"),
            training=files.get("training"),
            student=files.get("student"),
            limits=IntakeLimits(**spec["limits"]),
            progress=lambda stage, fraction: events.emit(
                "progress", stage=stage, fraction=fraction
            ),
        )
    except CompressionError as exc:
        events.emit("error", message=exc.message, kind=type(exc).__name__, detail=exc.detail)
        return EXIT_REFUSED
    directory.result_model.write_bytes(result.tflite)
    answer = {"report": result.report.to_dict(), "signature": result.signature}
    directory.result_json.write_text(json.dumps(answer), encoding="utf-8")
    events.emit("done")
    return 0


def main(argv: list[str]) -> int:
    """Entry point; ``argv`` is ``[program, JOB_DIR]``."""
    events = _take_stdout()
    _watch_parent()
    directory = JobDirectory(Path(argv[1]).resolve())
    try:
        spec = json.loads(directory.spec.read_text(encoding="utf-8"))
        _limit_resources(int(spec["max_file_bytes"]))
        if spec.get("sandbox", True):
            abi = confine(writable=directory.root, readable=default_read_paths())
            events.emit("sandbox", landlock=abi)
        return run(directory, spec, events)
    except Exception as exc:  # noqa: BLE001 - the one place a crash becomes a clean refusal
        traceback.print_exc()
        events.emit(
            "error",
            message="the job failed unexpectedly",
            kind="internal",
            detail=f"{type(exc).__name__}: {exc}"[:2000],
        )
        return EXIT_CRASHED


if __name__ == "__main__":
    sys.exit(main(sys.argv))
