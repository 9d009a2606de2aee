"""Compression figures: each option's size, stored size, accuracy and batch-1 LiteRT latency.

Usage, from the repository root::

    .venv/bin/python bench/compress.py                 # both models, table into docs/benchmarks.md
    .venv/bin/python bench/compress.py --only digits   # one model
    .venv/bin/python bench/compress.py --print-only    # leave the docs alone

Two models: the digits CNN of the intake tests (Conv-Conv-Dense, 56k
parameters, trained with the same seeds on scikit-learn's digits) and the
224x224x3 CNN of the load benchmark (Conv32-Pool-Conv64-Pool-Conv128-Pool-
Dense512-Dense10, random weights, about 51M parameters). Every row is one
``compress_model`` run, the code path an upload's job takes, so the figures
are the ones its report would show: TFLite bytes, batch-1 ``invoke()`` median
in LiteRT on one thread, and accuracy on the digits test split. "stored" is
the model after the registry's own zstd (what ``size_stored`` counts, less a
few bytes of AES-GCM tags). The random-weight CNN has no accuracy and no
training data: its pruning runs without fine-tuning.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the digits builders live with the tests

from compress import (  # noqa: E402
    CompressionReport,
    ConversionFailed,
    ModelKind,
    compress_model,
    parse_options,
)
from storage.streams import HashingReader, plaintext_chunks  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
HEADING = "## Compression (`bench/compress.py`)"

DIGITS_RUNS: dict[str, dict[str, Any]] = {
    "float32 (no options)": {},
    "dynamic": {"quantization": "dynamic"},
    "float16": {"quantization": "float16"},
    "int8": {"quantization": "int8"},
    "clip 99.9 + int8": {"clip": {"percentile": 99.9}, "quantization": "int8"},
    "prune 80% (15 epochs)": {"prune": {"sparsity": 0.8, "epochs": 15}},
    "prune 80% + int8": {"prune": {"sparsity": 0.8, "epochs": 15}, "quantization": "int8"},
    "distill cnn-tiny": {"distill": {"student": "cnn-tiny", "temperature": 8, "epochs": 100}},
    "distill cnn-tiny + int8": {
        "distill": {"student": "cnn-tiny", "temperature": 8, "epochs": 100},
        "quantization": "int8",
    },
}
CNN_RUNS: dict[str, dict[str, Any]] = {
    "float32 (no options)": {},
    "dynamic": {"quantization": "dynamic"},
    "float16": {"quantization": "float16"},
    "int8": {"quantization": "int8"},
    "prune 80% (no fine-tuning)": {"prune": {"sparsity": 0.8, "epochs": 0}},
    "prune 80% + dynamic": {"prune": {"sparsity": 0.8, "epochs": 0}, "quantization": "dynamic"},
}


@dataclass(frozen=True)
class Row:
    """One run's figures (from its report, or from a direct conversion when the job refused)."""

    model: str
    run: str
    tflite_bytes: int
    size_ratio: float
    stored: int
    original_stored: int
    parameters: int
    sparsity: float
    latency_us: float
    accuracy: float | None = None
    drop: float | None = None
    note: str = ""
    steps: tuple[Any, ...] = ()


def _from_report(model: str, run: str, report: CompressionReport, stored: int, base: int) -> Row:
    result = report.result
    return Row(
        model=model,
        run=run,
        tflite_bytes=result.tflite_bytes,
        size_ratio=report.size_ratio,
        stored=stored,
        original_stored=base,
        parameters=result.parameters,
        sparsity=result.sparsity,
        latency_us=result.latency_us,
        accuracy=result.accuracy,
        drop=report.accuracy_drop_points,
        steps=report.steps,
    )


def _direct_int8(source: Path, calibration: Path, *, model: str, run: str, base: Row) -> Row:
    """Convert to int8 without the job's check, to show what the job refused."""
    from compress import Quantization, _tf  # noqa: PLC0415 - TensorFlow only here
    from compress.quantize import configure  # noqa: PLC0415
    from compress.runtime import TFLiteRunner  # noqa: PLC0415

    tf, keras = _tf.tensorflow(), _tf.keras()
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.models.load_model(source))
    with np.load(calibration) as data:
        configure(converter, mode=Quantization.INT8, calibration=data["x"])
    with contextlib.redirect_stdout(io.StringIO()):  # the converter's export chatter
        content = bytes(converter.convert())
    latency_input = np.random.default_rng(0).random((224, 224, 3), dtype=np.float32)
    stored = stored_size(content)
    return Row(
        model=model,
        run=run,
        tflite_bytes=len(content),
        size_ratio=base.tflite_bytes / len(content),
        stored=stored,
        original_stored=base.original_stored,
        parameters=base.parameters,
        sparsity=0.0,
        latency_us=TFLiteRunner(content).latency_us(latency_input),
        note="refused by the job",
    )


def stored_size(content: bytes) -> int:
    """Bytes after the registry's compression (as sealed, before the GCM tags)."""
    reader = HashingReader(io.BytesIO(content))
    return sum(len(chunk) for chunk in plaintext_chunks(reader, compression="zstd", size=1 << 20))


def build_224_cnn(path: Path) -> None:
    """The load benchmark's heavy CNN, random weights, saved as .keras."""
    from compress import _tf  # noqa: PLC0415 - TensorFlow only when building

    keras = _tf.keras()
    keras.utils.set_random_seed(0)
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((224, 224, 3), name="input"),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(128, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(512, activation="relu"),
            layers.Dense(10, activation="softmax", name="probabilities"),
        ],
        name="cnn_224",
    )
    model.save(path)


def _run(
    model: str, runs: dict[str, dict[str, Any]], source: Path, data: dict[str, Path], root: Path
) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    refusals: list[str] = []
    for name, options in runs.items():
        staging = Path(tempfile.mkdtemp(dir=root))
        started = time.perf_counter()
        try:
            result = compress_model(
                source=source,
                kind=ModelKind.KERAS,
                staging=staging,
                options=parse_options(options),
                **data,
            )
        except ConversionFailed as exc:
            # Conversion is checked, not trusted: say what was refused and why.
            refusals.append(f"{model}, {name}: {exc.message}")
            if options.get("quantization") == "int8" and not options.get("prune") and rows:
                rows.append(
                    _direct_int8(source, data["calibration"], model=model, run=name, base=rows[0])
                )
                print(_line(rows[-1], time.perf_counter() - started), flush=True)
            continue
        stored = stored_size(result.tflite)
        base = rows[0].original_stored if rows else stored  # the first run is the float32 one
        rows.append(_from_report(model, name, result.report, stored, base))
        print(_line(rows[-1], time.perf_counter() - started), flush=True)
    return rows, refusals


def digits_rows(root: Path) -> tuple[list[Row], list[str]]:
    """Train the digits CNN (the tests' builder) and run every digits option."""
    from tests.unit.compress.conftest import (  # noqa: PLC0415 - needs the repository root
        load_digits_split,
        train_cnn,
        write_data_files,
    )

    digits = load_digits_split()
    files = write_data_files(digits, root)
    model = train_cnn(digits, root / "digits.keras")
    data = {
        "calibration": files.calibration,
        "evaluation": files.evaluation,
        "training": files.training,
    }
    return _run("digits CNN", DIGITS_RUNS, model.path, data, root)


def cnn_rows(root: Path) -> tuple[list[Row], list[str]]:
    """Build the 224x224 CNN and run every option that needs no labels."""
    source = root / "cnn224.keras"
    build_224_cnn(source)
    calibration = root / "cnn224-calibration.npz"
    rng = np.random.default_rng(0)
    np.savez(calibration, x=rng.random((32, 224, 224, 3), dtype=np.float32))
    return _run("224x224 CNN", CNN_RUNS, source, {"calibration": calibration}, root)


def _line(row: Row, seconds: float) -> str:
    return f"{row.model:<12} {row.run:<28} {row.tflite_bytes:>11} B  {seconds:6.1f} s {row.note}"


def table(rows: list[Row]) -> list[str]:
    """The rows as a markdown table."""
    lines = [
        (
            "| model | option | TFLite bytes | x smaller | stored bytes | x smaller | params "
            "| sparsity | accuracy % | drop (points) | latency us (batch 1) |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        accuracy = "" if row.accuracy is None else f"{100 * row.accuracy:.2f}"
        drop = "" if row.drop is None else f"{row.drop:.2f}"
        option = f"{row.run} ({row.note})" if row.note else row.run
        lines.append(
            f"| {row.model} | {option} | {row.tflite_bytes:,} | {row.size_ratio:.2f} | "
            f"{row.stored:,} | {row.original_stored / row.stored:.2f} | {row.parameters:,} | "
            f"{row.sparsity:.0%} | {accuracy} | {drop} | {row.latency_us:,.1f} |"
        )
    return lines


def distill_notes(rows: list[Row]) -> list[str]:
    """What distillation did against the same student on hard labels."""
    notes = []
    for row in rows:
        for step in row.steps:
            if step.name == "distill":
                outcome = step.outcome
                notes.append(
                    f"- {row.run}: {outcome['student_parameters']:,} parameters "
                    f"({float(outcome['parameter_ratio']):.1f}x fewer); distilled "
                    f"{100 * float(outcome['distilled_accuracy']):.2f}% against "
                    f"{100 * float(outcome['hard_label_accuracy']):.2f}% for the same student "
                    f"trained on the labels alone (teacher "
                    f"{100 * float(outcome['teacher_accuracy']):.2f}%)."
                )
    return notes


def section(rows: list[Row], refusals: list[str], *, when: str) -> str:
    """The whole ``## Compression`` section of docs/benchmarks.md."""
    lines = [
        HEADING,
        "",
        "```sh",
        ".venv/bin/python bench/compress.py   # about 10 minutes on 2 cores; rewrites this section",
        "```",
        "",
        "Each row is one `compress_model` run, the path an upload's job takes: the",
        'figures are those its report shows. "x smaller" compares with the float32',
        'TFLite conversion of the same model (first row); "stored" is after the',
        "registry's zstd, what `size_stored` counts. Latency is the median batch-1",
        "`invoke()` in LiteRT on one thread. Accuracy is on the digits test split (450",
        "images); the 224x224 CNN has random weights, so no accuracy, and no training",
        "data, so its pruning is not fine-tuned.",
        "",
        f"Run: {when}, {os.cpu_count()} CPUs, Python {platform.python_version()}.",
        "",
        *table(rows),
    ]
    notes = distill_notes(rows)
    if notes:
        lines += ["", "Distillation beside its hard-label baseline:", "", *notes]
    if refusals:
        lines += [
            "",
            "Refused by the job's conversion check (the row marked so was converted",
            "directly, unchecked, to show its size and speed):",
            "",
            *(f"- {refusal}" for refusal in refusals),
        ]
    return "\n".join(lines) + "\n"


def write_docs(text: str) -> None:
    """Replace the ``## Compression`` section (heading to the next ``## `` or the end)."""
    current = DOCS.read_text(encoding="utf-8") if DOCS.exists() else "# Benchmarks\n"
    lines = current.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.startswith(HEADING)), None)
    if start is None:
        updated = current.rstrip("\n") + "\n\n" + text
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        tail = "".join(lines[end:])
        updated = "".join(lines[:start]) + text + ("\n" + tail if tail else "")
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(updated, encoding="utf-8")


def main() -> int:
    """Run the benchmark; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("digits", "cnn"), help="run one model only")
    parser.add_argument("--print-only", action="store_true", help="leave docs/benchmarks.md alone")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    rows: list[Row] = []
    refusals: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for wanted, build in (("digits", digits_rows), ("cnn", cnn_rows)):
            if args.only in (None, wanted):
                more, refused = build(root)
                rows += more
                refusals += refused
    text = section(rows, refusals, when=time.strftime("%Y-%m-%d %H:%M"))
    print()
    print(text)
    if not args.print_only:
        write_docs(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
