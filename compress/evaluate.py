"""What a model's outputs mean, and how to score and compare them.

One ``OutputKind`` is worked out per job from the original model's outputs on
sample data (and the labels, when given), then used everywhere: for the
metric (accuracy or MSE), for the fine-tuning loss, for the distillation
targets and for comparing two models. Classification outputs are compared by
predicted class (the answer a client acts on); regression outputs by
closeness, relative to the spread of the reference outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from compress.errors import InvalidData
from compress.options import Task

if TYPE_CHECKING:
    from compress.data import FloatArray

_PROBABILITY_SLACK = 1e-3
# Regression outputs agree when within this share of the reference's standard deviation.
_REGRESSION_TOLERANCE = 0.1


@dataclass(frozen=True)
class OutputKind:
    """The task and the form of the outputs.

    ``probabilities`` tells softmax/sigmoid outputs from logits (it changes the
    loss and how outputs are softened); ``binary`` marks a single-unit
    classifier, whose class is a threshold rather than an argmax.
    """

    task: Task
    probabilities: bool = False
    binary: bool = False


@dataclass(frozen=True)
class Score:
    """A model's metric on labelled data: accuracy (0..1) or mean squared error."""

    accuracy: float | None = None
    mse: float | None = None


def _integral(values: npt.NDArray[Any]) -> bool:
    return values.dtype.kind in "biu" or bool(np.all(np.equal(np.mod(values, 1), 0)))


def class_labels(y: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """Integer class labels from ``y`` given as indices or one-hot rows."""
    if y.ndim == 2 and y.shape[1] > 1:  # noqa: PLR2004 - a 2-D array of one-hot rows
        return np.asarray(np.argmax(y, axis=1), dtype=np.int64)
    return y.reshape(len(y)).astype(np.int64)


def _are_probabilities(outputs: FloatArray, *, binary: bool) -> bool:
    if outputs.min() < -_PROBABILITY_SLACK or outputs.max() > 1 + _PROBABILITY_SLACK:
        return False
    return binary or bool(np.allclose(outputs.sum(axis=-1), 1.0, atol=_PROBABILITY_SLACK))


def infer_output_kind(
    *, requested: Task, outputs: FloatArray, labels: npt.NDArray[Any] | None
) -> OutputKind:
    """Decide the task from the options, the model's outputs and the labels.

    ``auto`` means classification when the labels are class indices (or
    one-hot rows) that fit the output width, or, without labels, when the
    model has more than one output unit; regression otherwise.
    """
    width = outputs.shape[-1] if outputs.ndim > 1 else 1
    task = requested
    if task is Task.AUTO:
        if labels is None:
            task = Task.CLASSIFICATION if width > 1 else Task.REGRESSION
        else:
            classes = class_labels(labels) if _integral(labels) else None
            fits = classes is not None and classes.min() >= 0 and classes.max() < max(width, 2)
            task = Task.CLASSIFICATION if fits else Task.REGRESSION
    if task is Task.REGRESSION:
        return OutputKind(Task.REGRESSION)
    binary = width == 1
    return OutputKind(Task.CLASSIFICATION, _are_probabilities(outputs, binary=binary), binary)


def predicted_classes(outputs: FloatArray, kind: OutputKind) -> npt.NDArray[np.int64]:
    """The class each row predicts: argmax, or a threshold for a single-unit classifier."""
    if kind.binary:
        threshold = 0.5 if kind.probabilities else 0.0
        return (outputs.reshape(len(outputs)) > threshold).astype(np.int64)
    return np.asarray(np.argmax(outputs.reshape(len(outputs), -1), axis=1), dtype=np.int64)


def score(outputs: FloatArray, targets: npt.NDArray[Any], *, kind: OutputKind) -> Score:
    """Accuracy (classification) or MSE (regression) of ``outputs`` against ``targets``."""
    if kind.task is Task.CLASSIFICATION:
        labels = class_labels(targets)
        return Score(accuracy=float(np.mean(predicted_classes(outputs, kind) == labels)))
    flat_targets = targets.reshape(len(targets), -1).astype(np.float32)
    flat_outputs = outputs.reshape(len(outputs), -1)
    if flat_targets.shape != flat_outputs.shape:
        raise InvalidData("the targets y do not have the shape of the model's outputs")
    return Score(mse=float(np.mean((flat_outputs - flat_targets) ** 2)))


def agreement(reference: FloatArray, candidate: FloatArray, *, kind: OutputKind) -> float:
    """Share of samples on which ``candidate`` gives the answer ``reference`` gives.

    Classification: the same predicted class. Regression: every output within
    a tenth of the reference outputs' standard deviation.
    """
    if kind.task is Task.CLASSIFICATION:
        same = predicted_classes(reference, kind) == predicted_classes(candidate, kind)
        return float(np.mean(same))
    ref = reference.reshape(len(reference), -1)
    cand = candidate.reshape(len(candidate), -1)
    tolerance = _REGRESSION_TOLERANCE * float(np.std(ref)) + 1e-6
    return float(np.mean(np.all(np.abs(ref - cand) <= tolerance, axis=1)))
