"""Fine-tuning, shared by pruning, layer cutting and distillation.

The loss follows the model's ``OutputKind``: cross-entropy on probabilities or
on logits for classification, mean squared error for regression. Training is
seeded (``keras.utils.set_random_seed``), so one job's result is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from compress import _tf
from compress.evaluate import class_labels
from compress.options import Task

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy.typing as npt

    from compress._tf import KerasModel
    from compress.data import Dataset
    from compress.evaluate import OutputKind


@dataclass(frozen=True)
class FitSettings:
    """What every training run of a job shares: the output kind, batch size and seed."""

    kind: OutputKind
    batch_size: int
    seed: int


def loss_for(kind: OutputKind) -> Any:
    """The Keras loss that matches the model's outputs."""
    losses = _tf.keras().losses
    if kind.task is Task.REGRESSION:
        return losses.MeanSquaredError()
    if kind.binary:
        return losses.BinaryCrossentropy(from_logits=not kind.probabilities)
    return losses.SparseCategoricalCrossentropy(from_logits=not kind.probabilities)


def training_targets(y: npt.NDArray[Any], kind: OutputKind) -> npt.NDArray[Any]:
    """``y`` in the form ``loss_for(kind)`` expects."""
    if kind.task is Task.REGRESSION:
        return y.astype(np.float32)
    labels = class_labels(y)
    return labels.astype(np.float32).reshape(-1, 1) if kind.binary else labels


def fine_tune(
    model: KerasModel,
    *,
    training: Dataset | None,
    settings: FitSettings,
    epochs: int,
    learning_rate: float,
    callbacks: Sequence[Any] = (),
) -> int:
    """Train ``model`` in place on ``training`` (inputs prepared); return the epochs run.

    Nothing runs, and 0 is returned, without labelled training data.
    """
    if epochs == 0 or training is None or training.y is None:
        return 0
    keras = _tf.keras()
    keras.utils.set_random_seed(settings.seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss_for(settings.kind))
    model.fit(
        training.x,
        training_targets(training.y, settings.kind),
        epochs=epochs,
        batch_size=settings.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=list(callbacks),
    )
    return epochs
