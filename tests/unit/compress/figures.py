"""Print the compression figures of the digits models, option by option.

Usage, from the repository root::

    .venv/bin/python -m tests.unit.compress.figures

Trains the same seeded models as the test fixtures (about ten seconds), runs
``compress_model`` once per option set, and prints one row per run: sizes,
zstd sizes, parameters, sparsity, accuracy, drop in points, agreement and
batch-1 LiteRT latency. The tests assert the targets; this shows the numbers.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from compress import CompressionReport, ModelKind, compress_model, parse_options
from tests.unit.compress.conftest import (
    load_digits_split,
    train_cnn,
    train_mlp_chain,
    write_data_files,
)

CNN_RUNS = {
    "float32 (no options)": {},
    "dynamic": {"quantization": "dynamic"},
    "float16": {"quantization": "float16"},
    "int8": {"quantization": "int8"},
    "int8, int8 I/O": {"quantization": "int8", "int8_io": True},
    "clip 99.9 + int8": {"clip": {"percentile": 99.9}, "quantization": "int8"},
    "prune 80% (15 ep)": {"prune": {"sparsity": 0.8, "epochs": 15}},
    "prune 80% + int8": {"prune": {"sparsity": 0.8, "epochs": 15}, "quantization": "int8"},
    "distill cnn-tiny T=8": {"distill": {"student": "cnn-tiny", "temperature": 8, "epochs": 100}},
    "distill mlp-small + int8": {
        "distill": {"student": "mlp-small", "epochs": 60},
        "quantization": "int8",
    },
}
MLP_RUNS = {"cut 2 layers (MLP)": {"cut": {"max_layers": 2}}}

_HEADER = (
    f"{'run':<26}{'bytes':>9}{'x':>7}{'zstd':>9}{'x':>7}{'params':>8}{'sparse':>8}"
    f"{'acc %':>8}{'drop':>7}{'agree':>7}{'us':>7}"
)


def _row(name: str, report: CompressionReport) -> str:
    original, result = report.original, report.result
    return (
        f"{name:<26}{result.tflite_bytes:>9}{report.size_ratio:>7.2f}"
        f"{result.zstd_bytes:>9}{report.zstd_ratio:>7.2f}{result.parameters:>8}"
        f"{result.sparsity:>8.2f}{100 * result.accuracy:>8.2f}"
        f"{report.accuracy_drop_points:>7.2f}{report.agreement:>7.3f}"
        f"{result.latency_us:>7.1f}   (original {original.tflite_bytes} B, "
        f"{original.zstd_bytes} B zstd, {100 * original.accuracy:.2f}%, {original.latency_us:.1f} us)"
    )


def main() -> int:
    """Train, compress and print; returns the exit status."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        digits = load_digits_split()
        files = write_data_files(digits, root)
        models = {
            "cnn": train_cnn(digits, root / "cnn.keras"),
            "mlp": train_mlp_chain(digits, root / "mlp.keras"),
        }
        sys.stdout.write(_HEADER + "\n")
        for model, runs in (("cnn", CNN_RUNS), ("mlp", MLP_RUNS)):
            for name, options in runs.items():
                staging = Path(tempfile.mkdtemp(dir=root))
                result = compress_model(
                    source=models[model].path,
                    kind=ModelKind.KERAS,
                    staging=staging,
                    options=parse_options(options),
                    calibration=files.calibration,
                    evaluation=files.evaluation,
                    training=files.training,
                )
                sys.stdout.write(_row(name, result.report) + "\n")
                for step in result.report.steps:
                    if step.name == "distill":
                        sys.stdout.write(f"{'':<26}distill outcome: {step.outcome}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
