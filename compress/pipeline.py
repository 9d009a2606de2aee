"""One entry point: an upload and its data files in, a model to serve and its report out.

Order of the steps, and why:

1. **distill**: the student replaces the teacher, so every later step works
   on the model that will be served; distilling after pruning would only
   have pruned a teacher that is then thrown away.
2. **cut**: a structural change, before pruning, because pruning masks would
   have to be recomputed for the new layers and cutting's fine-tuning would
   regrow pruned weights.
3. **prune**: zeroes weights and fine-tunes with the masks held.
4. **clip**: the last change to the weights, just before the quantization it
   prepares for; fine-tuning after it would undo it. Clipping keeps zeros at
   zero, so it composes with pruning.
5. **quantize**: part of the conversion to TFLite.

Before anything loads, the options are checked against the upload's format
and the data files given; then the data files and the upload pass their
checks (sizes, archives, allow-lists) before any model code runs. Everything
the job writes goes in a fresh directory under ``staging`` (unpacked
archives, exported SavedModels), removed when the job ends, whatever the outcome.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from compress.data import Dataset, load_npz
from compress.job import Job
from compress.limits import IntakeLimits
from compress.options import check_compatible
from compress.report import CompressionResult
from compress.signature import extract_signature
from compress.source import Source, load_keras, load_source

if TYPE_CHECKING:
    from collections.abc import Callable

    from compress.formats import ModelKind
    from compress.options import CompressOptions


def _load_data(files: dict[str, Path | None], *, limits: IntakeLimits) -> dict[str, Dataset | None]:
    """Load and check the data files; labels are required except for calibration."""
    return {
        role: None
        if path is None
        else load_npz(path, role=role, limits=limits, require_labels=role != "calibration")
        for role, path in files.items()
    }


def _prepared(data: dict[str, Dataset | None], source: Source) -> dict[str, Dataset | None]:
    """The data with inputs checked against the model and cast to its input type."""
    return {
        role: None if dataset is None else Dataset(source.prepare(dataset.x, role=role), dataset.y)
        for role, dataset in data.items()
    }


def _no_progress(stage: str, fraction: float) -> None:
    """The default progress callback: progress goes nowhere."""


def compress_model(
    *,
    source: Path,
    kind: ModelKind,
    staging: Path,
    options: CompressOptions,
    calibration: Path | None = None,
    evaluation: Path | None = None,
    training: Path | None = None,
    student: Path | None = None,
    limits: IntakeLimits | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> CompressionResult:
    """Check, compress, convert and evaluate one uploaded model.

    ``source`` is the upload, in format ``kind`` (see ``kind_from_filename``).
    ``calibration``, ``evaluation`` and ``training`` are optional ``.npz``
    files with arrays ``x`` and ``y`` (``y`` optional for calibration).
    ``student`` is the ``.keras`` student when ``options.distill.student`` is
    ``"uploaded"``. ``staging`` is an existing directory private to the job;
    ``limits`` are the operator's (defaults: ``IntakeLimits()``);
    ``progress(stage, fraction)`` is called as the job moves on.

    Raises a ``CompressionError`` subclass, with a message fit for the tenant,
    when the upload, the data or the options are refused, or when a
    conversion cannot be verified. A result that misses the options' accuracy
    bounds is not an error: its report says ``passed: false`` and why.
    """
    if not staging.is_dir():
        msg = "staging must be an existing directory"
        raise ValueError(msg)
    limits = limits or IntakeLimits()
    report = progress or _no_progress
    check_compatible(
        options,
        kind=kind,
        calibration=calibration,
        evaluation=evaluation,
        training=training,
        student=student,
    )
    workdir = Path(tempfile.mkdtemp(prefix="job-", dir=staging))
    try:
        report("loading", 0.0)
        files = {"calibration": calibration, "evaluation": evaluation, "training": training}
        data = _load_data(files, limits=limits)
        loaded = load_source(source, kind=kind, workdir=workdir, limits=limits)
        job = Job(
            options=options,
            workdir=workdir,
            source=loaded,
            data=_prepared(data, loaded),
            progress=report,
        )
        original = job.original()
        model = job.transform(
            student_file=student,
            load=lambda path: load_keras(path, workdir=workdir / "student", limits=limits),
        )
        result = job.result(model, original)
        evaluation_report = job.report(original, result=result, model=model)
        signature = extract_signature(result)
        report("done", 1.0)
        return CompressionResult(tflite=result, report=evaluation_report, signature=signature)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
