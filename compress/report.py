"""The evaluation report of one compression job, and the job's result.

The report is what a tenant reads before deciding to serve the model and what
the server stores next to it, so it is plain data: frozen dataclasses whose
``to_dict()`` is JSON-serialisable (``json.dumps`` takes it as is). Figures
about a model are measured on the TFLite bytes (the original's float32
conversion, and the result), in LiteRT, because that is what is served.

Units are in the names: ``accuracy`` is a fraction in [0, 1];
``accuracy_drop_points`` is in percentage points (98.0% to 97.5% is 0.5);
``mse_increase`` is relative (0.1 is +10%); sizes are bytes; latency is
microseconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeAlias

JsonValue: TypeAlias = "str | int | float | bool | list[JsonValue] | dict[str, JsonValue] | None"


@dataclass(frozen=True, kw_only=True)
class ModelFigures:
    """Size, weights, speed and quality of one TFLite model.

    ``sparsity`` is the share of parameters that are exactly zero;
    ``latency_us`` the median batch-1 ``invoke()`` in LiteRT on one thread;
    ``accuracy``/``mse`` are ``None`` without evaluation data or for the
    other task.
    """

    tflite_bytes: int
    zstd_bytes: int
    parameters: int
    sparsity: float
    latency_us: float
    accuracy: float | None = None
    mse: float | None = None


@dataclass(frozen=True, kw_only=True)
class StepRecord:
    """One compression step that ran: its name, its settings and what it did."""

    name: str
    settings: dict[str, JsonValue]
    outcome: dict[str, JsonValue]


@dataclass(frozen=True, kw_only=True)
class ConversionRecord:
    """How a model was converted and how well it matched its source on the check samples."""

    model: str
    quantization: str
    converter: str
    agreement: float
    samples: int


@dataclass(frozen=True, kw_only=True)
class CompressionReport:
    """Original against result: what was done, what it cost, and whether it passed.

    ``original`` is the uploaded model as float32 TFLite (the upload itself
    for a ``.tflite``). ``agreement`` is the share of evaluation samples on
    which the result gives the original's answer. ``passed`` is false when a
    bound from the options (``max_accuracy_drop``, ``max_mse_increase``) was
    exceeded; ``reasons`` says which.
    """

    source_kind: str
    task: str
    evaluation_samples: int
    original: ModelFigures
    result: ModelFigures
    agreement: float | None
    accuracy_drop_points: float | None
    mse_increase: float | None
    size_ratio: float
    zstd_ratio: float
    steps: tuple[StepRecord, ...]
    conversions: tuple[ConversionRecord, ...]
    passed: bool
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class CompressionResult:
    """What a job hands back: the model to serve, its report and its signature.

    ``signature`` is ``compress.signature.extract_signature(tflite)``, computed
    once here so the server stores it without loading the model again.
    """

    tflite: bytes
    report: CompressionReport
    signature: dict[str, Any]
