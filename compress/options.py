"""The tenant's compression options: one JSON object, validated before anything runs.

Every step is optional and any combination is allowed; the pipeline applies
them in a fixed order (distill, cut, prune, clip, then quantize on
conversion; ``compress.pipeline`` says why). Unknown keys are refused rather
than ignored, so a typo ("sparsty") is an error the tenant sees, not a step
that silently did not run. Bounds on epochs and sample counts keep one upload
from holding a compress worker for hours.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from compress.errors import InvalidData, InvalidOptions
from compress.formats import ModelKind

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

# Students the server can build itself; ``compress.distill`` builds each of them.
STUDENT_ARCHITECTURES = ("mlp-small", "mlp-medium", "cnn-tiny")
UPLOADED_STUDENT = "uploaded"


class Quantization(StrEnum):
    """How weights (and activations, for ``int8``) are stored in the TFLite model."""

    NONE = "none"
    DYNAMIC = "dynamic"
    FLOAT16 = "float16"
    INT8 = "int8"


class Task(StrEnum):
    """What the model predicts; decides the metric, the loss and how outputs are compared."""

    AUTO = "auto"
    CLASSIFICATION = "classification"
    REGRESSION = "regression"


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PruneOptions(_Options):
    """Magnitude pruning: zero the smallest weights of every kernel, then fine-tune."""

    sparsity: float = Field(gt=0.0, lt=1.0, description="share of each kernel set to zero")
    epochs: int = Field(default=10, ge=0, le=500, description="fine-tuning epochs")
    learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0)


class ClipOptions(_Options):
    """Clamp each kernel to a percentile of its magnitudes, narrowing quantization ranges."""

    percentile: float = Field(default=99.9, ge=50.0, le=100.0)


class CutOptions(_Options):
    """Remove up to ``max_layers`` shape-preserving layers that cost least, then fine-tune."""

    max_layers: int = Field(ge=1, le=100)
    epochs: int = Field(default=10, ge=0, le=500, description="fine-tuning epochs")
    learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0)


class DistillOptions(_Options):
    """Train a smaller student on the model's softened outputs.

    ``student`` names a built-in architecture (``STUDENT_ARCHITECTURES``) or is
    ``"uploaded"`` for a ``.keras`` student sent with the job. ``alpha`` weighs
    the teacher's soft targets against the hard labels.
    """

    student: str
    temperature: float = Field(default=4.0, gt=0.0, le=100.0)
    alpha: float = Field(default=0.9, ge=0.0, le=1.0)
    epochs: int = Field(default=60, ge=1, le=5000)
    learning_rate: float = Field(default=3e-3, gt=0.0, le=1.0)

    @field_validator("student")
    @classmethod
    def _known_student(cls, value: str) -> str:
        if value not in (*STUDENT_ARCHITECTURES, UPLOADED_STUDENT):
            names = ", ".join((*STUDENT_ARCHITECTURES, UPLOADED_STUDENT))
            msg = f"unknown student; choose one of {names}"
            raise ValueError(msg)
        return value


class CompressOptions(_Options):
    """Everything a tenant may ask of one compression job.

    ``max_accuracy_drop`` is in percentage points (``0.5`` allows 98.0% to
    become 97.5%); ``max_mse_increase`` is relative (``0.1`` allows +10%).
    When a bound is exceeded the job still finishes and its report says
    ``passed: false`` with the reason, so the tenant sees what was lost.
    """

    quantization: Quantization = Quantization.NONE
    int8_io: bool = Field(default=False, description="int8 input/output tensors (int8 only)")
    calibration_samples: int = Field(default=200, ge=1, le=10_000)
    prune: PruneOptions | None = None
    clip: ClipOptions | None = None
    cut: CutOptions | None = None
    distill: DistillOptions | None = None
    task: Task = Task.AUTO
    max_accuracy_drop: float | None = Field(default=None, ge=0.0, le=100.0)
    max_mse_increase: float | None = Field(default=None, ge=0.0)
    batch_size: int = Field(default=32, ge=1, le=4096)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _consistent(self) -> CompressOptions:
        if self.int8_io and self.quantization is not Quantization.INT8:
            msg = "int8_io needs quantization 'int8'"
            raise ValueError(msg)
        return self

    @property
    def modifies_weights(self) -> bool:
        """Whether any step changes the Keras model before conversion."""
        return any(step is not None for step in (self.distill, self.cut, self.prune, self.clip))


def _describe(error: ValidationError) -> str:
    # Location and rule only: pydantic's own text may echo the tenant's input.
    parts = []
    for item in error.errors(include_url=False)[:5]:
        location = ".".join(str(part) for part in item["loc"]) or "options"
        parts.append(f"{location}: {item['msg']}")
    return "invalid compression options: " + "; ".join(parts)


def parse_options(raw: str | bytes | Mapping[str, Any]) -> CompressOptions:
    """Validate the tenant's options (JSON text or an already-decoded object).

    Raises ``InvalidOptions`` naming each offending field, so a client can
    fix its request without reading server logs.
    """
    try:
        if isinstance(raw, (str, bytes)):
            return CompressOptions.model_validate_json(raw)
        return CompressOptions.model_validate(raw)
    except ValidationError as exc:
        raise InvalidOptions(_describe(exc), detail=str(exc)) from exc


def check_compatible(
    options: CompressOptions,
    *,
    kind: ModelKind,
    calibration: Path | None,
    evaluation: Path | None,
    training: Path | None,
    student: Path | None,
) -> None:
    """Refuse options that cannot work with this upload and these data files.

    Runs before anything is loaded, so a job that cannot succeed fails in
    seconds rather than after its training steps.
    """
    keras_work = kind is ModelKind.KERAS or options.distill is not None
    if not keras_work and (options.prune or options.clip or options.cut):
        raise InvalidOptions("pruning, clipping and layer cutting need a .keras model")
    if (
        kind is ModelKind.TFLITE
        and not keras_work
        and options.quantization is not Quantization.NONE
    ):
        raise InvalidOptions(
            "a .tflite model is already converted; quantize a .keras or SavedModel"
        )
    uploaded = options.distill is not None and options.distill.student == UPLOADED_STUDENT
    if uploaded and student is None:
        raise InvalidOptions("distillation with an uploaded student needs the student .keras file")
    if student is not None and not uploaded:
        raise InvalidOptions("a student file was sent but distill.student is not 'uploaded'")
    if options.distill and training is None:
        raise InvalidData("distillation needs training data")
    if options.cut and evaluation is None:
        raise InvalidData("layer cutting needs evaluation data")
    bounded = options.max_accuracy_drop is not None or options.max_mse_increase is not None
    if bounded and evaluation is None:
        raise InvalidOptions("max_accuracy_drop and max_mse_increase need evaluation data")
    if options.quantization is Quantization.INT8 and not (calibration or evaluation or training):
        raise InvalidOptions("int8 quantization needs calibration, evaluation or training data")
