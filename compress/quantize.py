"""Post-training quantization: how each mode configures the TFLite converter.

Every mode keeps the op set to TFLite builtins (``TFLITE_BUILTINS``, or
``TFLITE_BUILTINS_INT8`` for full integer), never ``SELECT_TF_OPS``: the
workers' LiteRT has no TensorFlow kernels, and we serve nothing they cannot run.

- ``dynamic``: int8 weights, float activations; no data needed.
- ``float16``: float16 weights, dequantized at load; about half the size.
- ``int8``: int8 weights and activations, with ranges calibrated on sample
  inputs. Float input/output by default: measured on this machine, the
  quantize/dequantize at the edges costs next to nothing, and clients keep
  sending the floats they already send. ``int8_io`` makes the edges int8 too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from compress import _tf
from compress.errors import InvalidOptions
from compress.options import Quantization

if TYPE_CHECKING:
    from collections.abc import Iterator

    import numpy.typing as npt

# Least share of check samples on which a converted model must give the
# original's answer. Float conversions should agree everywhere (0.98 leaves
# room for float rounding at decision boundaries); quantized ones lose a
# little by design. A broken conversion agrees on about 1/classes of samples.
MIN_AGREEMENT: dict[Quantization, float] = {
    Quantization.NONE: 0.98,
    Quantization.FLOAT16: 0.98,
    Quantization.DYNAMIC: 0.9,
    Quantization.INT8: 0.9,
}


def configure(
    converter: Any,
    *,
    mode: Quantization,
    int8_io: bool = False,
    calibration: npt.NDArray[Any] | None = None,
) -> None:
    """Set ``converter`` up for ``mode``; ``int8`` needs ``calibration`` inputs (one per row)."""
    tf = _tf.tensorflow()
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode is Quantization.NONE:
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode is Quantization.FLOAT16:
        converter.target_spec.supported_types = [tf.float16]
    elif mode is Quantization.INT8:
        if calibration is None or len(calibration) == 0:
            raise InvalidOptions("int8 quantization needs calibration, evaluation or training data")
        samples = calibration.astype(np.float32)

        def representative() -> Iterator[list[npt.NDArray[np.float32]]]:
            for row in samples:
                yield [row[None, ...]]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
