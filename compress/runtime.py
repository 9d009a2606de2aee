"""Run a TFLite model in LiteRT the way a worker does: builtin ops, one sample at a time.

Every figure in a report about a served model (accuracy, agreement, latency)
is measured here, on the bytes that will be served, not on the Keras model
they came from. Models with int8 input/output are fed and read in float: the
runner quantizes inputs and dequantizes outputs with the tensors' own scale
and zero point, so int8-I/O and float-I/O models are compared on equal terms.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from compress import _tf
from compress.errors import UnsupportedFormat

if TYPE_CHECKING:
    from compress.data import FloatArray

_QUANTIZED = (np.int8, np.uint8, np.int16)


def _quantize(values: npt.NDArray[Any], detail: dict[str, Any]) -> npt.NDArray[Any]:
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = float(detail["quantization"][0]), int(detail["quantization"][1])
    if dtype.type in _QUANTIZED and scale > 0 and values.dtype.kind == "f":
        info = np.iinfo(dtype)
        scaled = np.round(values / scale + zero_point)
        return np.clip(scaled, info.min, info.max).astype(dtype)
    return values.astype(dtype, copy=False)


def _dequantize(values: npt.NDArray[Any], detail: dict[str, Any]) -> FloatArray:
    scale, zero_point = float(detail["quantization"][0]), int(detail["quantization"][1])
    if np.dtype(detail["dtype"]).type in _QUANTIZED and scale > 0:
        return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)
    return values.astype(np.float32)


class TFLiteRunner:
    """One LiteRT interpreter on one model, single-threaded, batch 1.

    Raises ``UnsupportedFormat`` if LiteRT cannot load the model or the model
    has other than one input and one output (the only shape the pipeline's
    data files, with their single ``x``, can feed).
    """

    def __init__(self, content: bytes) -> None:
        interpreter_class = _tf.litert_interpreter()
        try:
            self._interpreter = interpreter_class(model_content=content, num_threads=1)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise UnsupportedFormat(
                "the TFLite model does not load in LiteRT with builtin ops", detail=repr(exc)
            ) from exc
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise UnsupportedFormat("only models with one input and one output are supported")
        self._input: dict[str, Any] = inputs[0]
        self._output: dict[str, Any] = outputs[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The input's shape signature, -1 for dynamic dimensions (batch first)."""
        return tuple(int(dim) for dim in self._input["shape_signature"])

    @property
    def float_input(self) -> bool:
        """Whether the runner takes float inputs (float tensors, or quantized ones it scales)."""
        scale = float(self._input["quantization"][0])
        return np.dtype(self._input["dtype"]).kind == "f" or scale > 0

    def _set_input(self, row: npt.NDArray[Any]) -> None:
        batch = _quantize(row[None, ...], self._input)
        if tuple(batch.shape) != tuple(self._interpreter.get_input_details()[0]["shape"]):
            self._interpreter.resize_tensor_input(self._input["index"], list(batch.shape))
            self._interpreter.allocate_tensors()
        self._interpreter.set_tensor(self._input["index"], batch)

    def predict(self, x: npt.NDArray[Any]) -> FloatArray:
        """Outputs for every row of ``x``, in float32, one invocation per row."""
        rows = []
        for row in x:
            self._set_input(row)
            self._interpreter.invoke()
            rows.append(
                _dequantize(self._interpreter.get_tensor(self._output["index"])[0], self._output)
            )
        return np.stack(rows)

    def latency_us(self, row: npt.NDArray[Any], *, runs: int = 200, warmup: int = 20) -> float:
        """Median wall time of one batch-1 ``invoke()`` in microseconds.

        The median, not the mean: on a shared machine a few runs are stretched
        by other processes and would drag a mean with them.
        """
        self._set_input(row)
        for _ in range(warmup):
            self._interpreter.invoke()
        timings = []
        for _ in range(runs):
            start = time.perf_counter_ns()
            self._interpreter.invoke()
            timings.append(time.perf_counter_ns() - start)
        return statistics.median(timings) / 1000.0
