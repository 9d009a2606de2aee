"""Magnitude pruning over Keras weights, in numpy.

``tensorflow-model-optimization`` does not work with Keras 3, and magnitude
pruning needs little: in each kernel, zero the given share of weights with the
smallest magnitude. Fine-tuning then recovers accuracy; the masks are
re-applied after every training batch (the optimizer would otherwise regrow
the zeros) and once more at the end, so the sparsity the report states is the
sparsity that is served. With training data the sparsity ramps up over the
first half of fine-tuning (``schedule``). Zeros compress: a sparse float32 model is much
smaller after zstd, and a quantized one smaller still.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from compress import _tf
from compress._train import FitSettings, fine_tune
from compress._weights import kernels

if TYPE_CHECKING:
    from compress._tf import KerasModel
    from compress.data import Dataset
    from compress.options import PruneOptions
    from compress.report import JsonValue

Mask = npt.NDArray[np.float32]


def magnitude_mask(values: npt.NDArray[Any], sparsity: float) -> Mask:
    """A 0/1 mask zeroing exactly ``round(sparsity * size)`` smallest-magnitude entries."""
    flat = np.abs(values).ravel()
    count = round(sparsity * flat.size)
    mask = np.ones(flat.size, dtype=np.float32)
    if count > 0:
        mask[np.argpartition(flat, count - 1)[:count]] = 0.0
    return mask.reshape(values.shape)


class _Pruner:
    """The pruned kernels and their current masks."""

    def __init__(self, variables: list[Any]) -> None:
        self._variables = variables
        self._masks: list[Any] = []

    def prune_to(self, sparsity: float) -> None:
        """Recompute every mask at ``sparsity`` from the current weights, and apply it."""
        ops = _tf.keras().ops
        self._masks = [
            ops.convert_to_tensor(
                magnitude_mask(np.asarray(variable.numpy()), sparsity), dtype=variable.dtype
            )
            for variable in self._variables
        ]
        self.apply()

    def apply(self) -> None:
        """Zero the masked weights again (after an optimizer step moved them)."""
        for variable, mask in zip(self._variables, self._masks, strict=True):
            variable.assign(variable * mask)

    def sparsity(self) -> float:
        """Share of the kernels' weights that are exactly zero."""
        total = sum(int(np.prod(variable.shape)) for variable in self._variables)
        zeros = sum(int(np.sum(np.asarray(variable.numpy()) == 0)) for variable in self._variables)
        return zeros / total if total else 0.0


def schedule(target: float, *, epoch: int, ramp: int) -> float:
    """Sparsity at the start of ``epoch``: a cubic ramp reaching ``target`` at ``ramp - 1``.

    Gradual pruning (Zhu and Gupta, 2017) removes most weights early, while
    the network can still adapt, and the last few gently; it loses less
    accuracy than pruning everything at once before fine-tuning.
    """
    if epoch >= ramp - 1:
        return target
    return target * (1.0 - (1.0 - (epoch + 1) / ramp) ** 3)


def _callback(pruner: _Pruner, *, target: float, ramp: int) -> Any:
    """A Keras callback: prune further at each ramp epoch, re-mask after every batch."""
    keras = _tf.keras()

    class Prune(keras.callbacks.Callback):  # type: ignore[misc,name-defined]
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:  # noqa: ARG002
            if epoch < ramp:
                pruner.prune_to(schedule(target, epoch=epoch, ramp=ramp))

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:  # noqa: ARG002
            pruner.apply()

    return Prune()


def prune(
    model: KerasModel,
    *,
    options: PruneOptions,
    training: Dataset | None,
    settings: FitSettings,
) -> dict[str, JsonValue]:
    """Prune every kernel of ``model`` in place to ``options.sparsity``.

    With labelled training data, sparsity ramps up over the first half of the
    fine-tuning epochs and holds for the rest; without, it is applied at once.
    Returns the step's outcome: the sparsity reached over the pruned kernels
    and the epochs of fine-tuning that ran.
    """
    pruner = _Pruner(kernels(model))
    ramp = max(1, (options.epochs + 1) // 2)
    epochs = fine_tune(
        model,
        training=training,
        settings=settings,
        epochs=options.epochs,
        learning_rate=options.learning_rate,
        callbacks=[_callback(pruner, target=options.sparsity, ramp=ramp)],
    )
    # Without fine-tuning this is the one-shot prune; after it, a final exact prune
    # (the ramp's last mask already holds, so this changes nothing but guarantees it).
    pruner.prune_to(options.sparsity)
    return {
        "pruned_tensors": len(kernels(model)),
        "achieved_sparsity": pruner.sparsity(),
        "fine_tune_epochs": epochs,
        "ramp_epochs": min(ramp, epochs),
    }
