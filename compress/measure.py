"""Measure a TFLite model for the report: size, size after zstd, latency, and its metric.

Measured on the bytes that will be served, in LiteRT. The zstd figure is what
storage pays after its own compression (compress, then encrypt), and what
pruning's zeros buy: a sparse model is hardly smaller raw, much smaller packed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zstandard

from compress.evaluate import score
from compress.report import ModelFigures
from compress.runtime import TFLiteRunner

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from compress.data import Dataset
    from compress.evaluate import OutputKind

# Level 19 is zstd's strongest regular level: models are written once and read
# many times, and the figure should show what sparsity can give.
ZSTD_LEVEL = 19


@dataclass(frozen=True)
class Measured:
    """A model's figures, with its outputs on the evaluation inputs (for agreement)."""

    figures: ModelFigures
    outputs: npt.NDArray[np.float32] | None


def zstd_size(content: bytes) -> int:
    """Bytes of ``content`` after zstd at ``ZSTD_LEVEL``."""
    return len(zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(content))


def measure(
    content: bytes,
    *,
    parameters: tuple[int, int],
    evaluation: Dataset | None,
    kind: OutputKind,
    latency_input: npt.NDArray[Any],
) -> Measured:
    """Figures of one TFLite model; ``parameters`` is (total, zeros) from its source model."""
    runner = TFLiteRunner(content)
    outputs = None
    accuracy = mse = None
    if evaluation is not None:
        outputs = runner.predict(evaluation.x)
        if evaluation.y is not None:
            result = score(outputs, evaluation.y, kind=kind)
            accuracy, mse = result.accuracy, result.mse
    total, zeros = parameters
    figures = ModelFigures(
        tflite_bytes=len(content),
        zstd_bytes=zstd_size(content),
        parameters=total,
        sparsity=zeros / total if total else 0.0,
        latency_us=runner.latency_us(latency_input),
        accuracy=accuracy,
        mse=mse,
    )
    return Measured(figures, outputs)
