"""Helpers of ``sealserve models push`` for uploads that become jobs.

Turns the command's flags into the options object, follows a job to its end
with a progress bar, and prints its evaluation report as tables. Shared by
the remote mode (the job runs in the server) and the operator mode (the job
runs in a child process of the command itself).
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, BinaryIO, cast

from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import httpx
    from rich.console import Console

POLL_SECONDS = 0.5
FINAL_STATES = ("ready", "failed")


class FlagError(ValueError):
    """The flags do not make a valid options object."""


@dataclass
class Upload:
    """What one push sends: the files by form part, and the options object."""

    files: dict[str, Path]
    options: dict[str, Any]

    @property
    def is_job(self) -> bool:
        """A bare .tflite with nothing else keeps the synchronous path (201, no job)."""
        bare = set(self.files) == {"model"} and self.files["model"].suffix.lower() == ".tflite"
        return bool(self.options) or not bare


class _Counted:
    """A file httpx streams into the form, advancing the progress bar as it is read."""

    def __init__(self, handle: BinaryIO, progress: Progress, task: Any) -> None:
        self._handle = handle
        self._progress = progress
        self._task = task

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        self._progress.update(self._task, advance=len(chunk))
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()

    def fileno(self) -> int:
        return self._handle.fileno()


def _counted(handle: BinaryIO, progress: Progress, task: Any) -> IO[bytes]:
    # httpx only reads, seeks, tells and stats what it is given: _Counted does those.
    return cast("IO[bytes]", _Counted(handle, progress, task))


def post_form(
    client: httpx.Client, name: str, upload: Upload, *, progress: Progress
) -> httpx.Response:
    """Stream the upload as a multipart form, the bar following the bytes sent."""
    total = sum(path.stat().st_size for path in upload.files.values())
    task = progress.add_task("uploading", total=total)
    with ExitStack() as stack:
        files = {
            part: (path.name, _counted(stack.enter_context(path.open("rb")), progress, task))
            for part, path in upload.files.items()
        }
        data = {"options": json.dumps(upload.options)} if upload.options else None
        return client.post(f"/admin/v1/models/{name}/versions", files=files, data=data)


def _base_options(options_json: str | None) -> dict[str, Any]:
    try:
        options = json.loads(options_json) if options_json else {}
    except ValueError as exc:
        msg = f"--options-json is not valid JSON: {exc}"
        raise FlagError(msg) from None
    if not isinstance(options, dict):
        msg = "--options-json must be a JSON object"
        raise FlagError(msg)
    return options


def build_options(
    *,
    options_json: str | None,
    quantize: str | None,
    prune: float | None,
    clip: float | None,
    cut: int | None,
    distill: str | None,
    student_uploaded: bool,
    max_accuracy_drop: float | None,
) -> dict[str, Any]:
    """The options object: ``--options-json`` first, then each flag given on top of it."""
    options = _base_options(options_json)

    def merge(key: str, **values: Any) -> None:
        current = options.get(key) or {}
        if not isinstance(current, dict):
            msg = f"options.{key} must be an object"
            raise FlagError(msg)
        options[key] = {**current, **values}

    if quantize is not None:
        options["quantization"] = quantize
    if prune is not None:
        # 0.8 and 80 both mean 80%.
        merge("prune", sparsity=prune / 100 if prune >= 1 else prune)
    if clip is not None:
        merge("clip", percentile=clip)
    if cut is not None:
        merge("cut", max_layers=cut)
    if distill is not None:
        merge("distill", student="uploaded" if student_uploaded else distill)
    if max_accuracy_drop is not None:
        options["max_accuracy_drop"] = max_accuracy_drop
    return options


def follow(fetch: Callable[[], dict[str, Any]], *, console: Console) -> dict[str, Any]:
    """Poll a job until it is ready or failed, with a progress bar; return its last state."""
    columns = (
        SpinnerColumn(),
        "[progress.description]{task.description}",
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("queued", total=1.0)
        while True:
            job = fetch()
            progress.update(task, completed=job["progress"], description=job["stage"])
            if job["state"] in FINAL_STATES:
                return job
            time.sleep(POLL_SECONDS)


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}%"


def _number(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"  # noqa: PLR2004
    return f"{value:,}" if isinstance(value, int) else str(value)


def _compact(values: dict[str, Any]) -> str:
    return ", ".join(f"{key}={_number(value)}" for key, value in values.items())


def report_tables(job: dict[str, Any]) -> list[Table]:
    """The report of a finished job as tables: figures before and after, then the steps."""
    result = job.get("result") or {}
    report = result.get("report")
    if not report:
        return []
    original, after = report["original"], report["result"]
    figures = Table("", "original", "result", title=f"{job['model']} version {job['version']}")
    figures.add_row("accuracy", _percent(original["accuracy"]), _percent(after["accuracy"]))
    if original.get("mse") is not None:
        figures.add_row("mse", _number(original["mse"]), _number(after["mse"]))
    figures.add_row(
        "TFLite bytes", _number(original["tflite_bytes"]), _number(after["tflite_bytes"])
    )
    figures.add_row("zstd bytes", _number(original["zstd_bytes"]), _number(after["zstd_bytes"]))
    figures.add_row("sealed bytes", "", _number(result.get("size_stored")))
    figures.add_row("parameters", _number(original["parameters"]), _number(after["parameters"]))
    figures.add_row("sparsity", _percent(original["sparsity"]), _percent(after["sparsity"]))
    figures.add_row(
        "latency (batch 1)", f"{original['latency_us']:.1f} us", f"{after['latency_us']:.1f} us"
    )
    figures.add_row("size ratio", "", f"{report['size_ratio']:.2f}x")
    if report.get("accuracy_drop_points") is not None:
        figures.add_row("accuracy drop", "", f"{report['accuracy_drop_points']:.2f} points")
    if report.get("agreement") is not None:
        figures.add_row("agreement", "", _percent(report["agreement"]))
    figures.add_row(
        "passed", "", "yes" if report["passed"] else "no: " + "; ".join(report["reasons"])
    )
    steps = Table("step", "settings", "outcome", title="steps")
    for step in report.get("steps") or []:
        steps.add_row(step["name"], _compact(step["settings"]), _compact(step["outcome"]))
    return [figures, steps] if report.get("steps") else [figures]
