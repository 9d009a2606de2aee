"""Small helpers over a model's weights, shared by pruning, clipping and the report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterable

    from compress._tf import KerasModel

_MATRIX = 2


def kernels(model: KerasModel) -> list[Any]:
    """The trainable weights with two or more dimensions: kernels and embeddings.

    These hold nearly all parameters and tolerate sparsity and clipping;
    biases and normalisation scales are few, and zeroing or clamping them
    shifts whole activations, so they are left alone.
    """
    return [weight for weight in model.trainable_weights if len(weight.shape) >= _MATRIX]


def parameter_counts(variables: Iterable[Any]) -> tuple[int, int]:
    """Total elements and elements exactly zero across ``variables`` (Keras or TF)."""
    total = zeros = 0
    for variable in variables:
        values = np.asarray(variable.numpy())
        total += values.size
        zeros += int(values.size - np.count_nonzero(values))
    return total, zeros
