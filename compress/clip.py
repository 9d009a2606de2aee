"""Weight clipping: clamp each kernel to a percentile of its magnitudes, before quantization.

A quantizer spreads 256 levels over a tensor's range, so a few outlier weights
waste most of them. Clamping each kernel to, say, its 99.9th percentile of
|w| gives the bulk of the weights finer steps for a negligible change in the
model. It runs last before conversion: any fine-tuning after it would let the
outliers grow back. Zeros stay zeros, so it composes with pruning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from compress._weights import kernels

if TYPE_CHECKING:
    from compress._tf import KerasModel
    from compress.options import ClipOptions
    from compress.report import JsonValue


def clip(model: KerasModel, *, options: ClipOptions) -> dict[str, JsonValue]:
    """Clamp every kernel of ``model`` in place; return the share of weights that moved."""
    total = changed = 0
    for variable in kernels(model):
        values = np.asarray(variable.numpy())
        bound = float(np.percentile(np.abs(values), options.percentile))
        clipped = np.clip(values, -bound, bound)
        changed += int(np.count_nonzero(clipped != values))
        total += values.size
        variable.assign(clipped)
    return {"clipped_share": changed / total if total else 0.0}
