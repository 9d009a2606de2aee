"""Turn an upload into a loaded model, through every check, inside the job's staging directory.

The order is the point: size, then magic bytes, then safe unpacking, then
screening of the config or graph, and only then a loader. Keras loads the
unpacked directory (never the zip itself, so it extracts nothing on its own)
with ``safe_mode=True`` and ``compile=False``; a SavedModel is loaded only
after every op in it passed the allow-list; a ``.tflite`` only after its op
codes were read from the flatbuffer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from compress import _tf
from compress._weights import parameter_counts
from compress.archive import unpack_tar_gz, unpack_zip
from compress.errors import InvalidData, UnsafeModel, UnsupportedFormat
from compress.formats import ModelKind, check_magic
from compress.limits import check_file_size
from compress.runtime import TFLiteRunner
from compress.screening import screen_keras_directory, screen_saved_model
from compress.tflite_model import read_tflite

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from compress._tf import KerasModel
    from compress.data import FloatArray
    from compress.limits import IntakeLimits

_BATCH = 256


@dataclass(frozen=True, kw_only=True)
class Source:
    """A loaded upload: exactly one of ``keras``, ``saved_model``, ``tflite`` is set.

    ``predict`` runs the model as uploaded (Keras or TensorFlow or LiteRT) and
    is the reference every conversion of it is checked against.
    ``input_shape`` has -1 for dynamic dimensions, batch first.
    """

    kind: ModelKind
    predict: Callable[[npt.NDArray[Any]], FloatArray]
    input_shape: tuple[int, ...]
    float_input: bool
    parameters: int
    zero_parameters: int
    keras: KerasModel | None = None
    saved_model: Path | None = None
    tflite: bytes | None = None

    def prepare(self, x: npt.NDArray[Any], *, role: str) -> npt.NDArray[Any]:
        """Check ``x`` fits the model's input and cast it to the input's dtype family."""
        expected = self.input_shape[1:]
        actual = x.shape[1:]
        if len(actual) != len(expected) or any(
            want not in {-1, got} for want, got in zip(expected, actual, strict=True)
        ):
            shown = tuple(None if dim == -1 else dim for dim in expected)
            raise InvalidData(
                f"the {role} file's x has rows of shape {actual}; the model expects {shown}",
            )
        return x.astype(np.float32) if self.float_input else x


def _single(outputs: Any) -> Any:
    """The one output of a model that may return a tensor, a 1-list or a 1-dict."""
    if isinstance(outputs, dict):
        (outputs,) = outputs.values()
    elif isinstance(outputs, (list, tuple)):
        (outputs,) = outputs
    return outputs


def keras_predictor(model: KerasModel) -> Callable[[npt.NDArray[Any]], FloatArray]:
    """Batched inference through a Keras model, returning float32 numpy outputs."""
    keras = _tf.keras()

    def predict(x: npt.NDArray[Any]) -> FloatArray:
        parts = [
            keras.ops.convert_to_numpy(_single(model(x[start : start + _BATCH], training=False)))
            for start in range(0, len(x), _BATCH)
        ]
        return np.concatenate(parts).astype(np.float32)

    return predict


def load_keras(path: Path, *, workdir: Path, limits: IntakeLimits) -> KerasModel:
    """Unpack, screen and load a ``.keras`` file; refuse models that are not single-tensor."""
    check_file_size(path, limit=limits.max_source_bytes, what="model")
    check_magic(path, kind=ModelKind.KERAS)
    directory = unpack_zip(path, destination=workdir, limits=limits)
    screen_keras_directory(directory)
    keras = _tf.keras()
    try:
        model = keras.saving.load_model(str(directory), safe_mode=True, compile=False)
        inputs, outputs = model.inputs, model.outputs
    except Exception as exc:  # Keras raises ValueError, TypeError, KeyError, OSError...
        raise UnsupportedFormat("the .keras file could not be loaded", detail=repr(exc)) from exc
    if len(inputs) != 1 or len(outputs) != 1:
        raise UnsupportedFormat("only models with one input and one output are supported")
    return model


def _from_keras(path: Path, *, workdir: Path, limits: IntakeLimits) -> Source:
    model = load_keras(path, workdir=workdir / "keras", limits=limits)
    total, zeros = parameter_counts(model.weights)
    spec = model.inputs[0]
    return Source(
        kind=ModelKind.KERAS,
        predict=keras_predictor(model),
        input_shape=tuple(-1 if dim is None else int(dim) for dim in spec.shape),
        float_input=np.dtype(spec.dtype).kind == "f",
        parameters=total,
        zero_parameters=zeros,
        keras=model,
    )


def _saved_model_root(directory: Path) -> Path:
    if (directory / "saved_model.pb").is_file():
        return directory
    candidates = [child for child in directory.iterdir() if (child / "saved_model.pb").is_file()]
    if len(candidates) != 1:
        raise UnsupportedFormat("the archive holds no SavedModel (saved_model.pb) at its top level")
    return candidates[0]


class _SavedModelPredictor:
    """Batched inference through a SavedModel's ``serving_default`` signature.

    Holds the loaded object itself, not just the signature: the signature only
    references the variables weakly, and they vanish with the loaded object.
    """

    def __init__(self, root: Path) -> None:
        tf = _tf.tensorflow()
        self._tf = tf
        self._loaded = tf.saved_model.load(str(root))
        self.function = self._loaded.signatures["serving_default"]
        (self._input, self.spec), *more_inputs = self.function.structured_input_signature[1].items()
        (self._output, *more_outputs) = self.function.structured_outputs
        if more_inputs or more_outputs:
            raise UnsupportedFormat("only models with one input and one output are supported")

    def __call__(self, x: npt.NDArray[Any]) -> FloatArray:
        parts = [
            self.function(**{self._input: self._tf.constant(x[start : start + _BATCH])})[
                self._output
            ].numpy()
            for start in range(0, len(x), _BATCH)
        ]
        return np.concatenate(parts).astype(np.float32)


def _from_saved_model(
    path: Path, *, kind: ModelKind, workdir: Path, limits: IntakeLimits
) -> Source:
    check_file_size(path, limit=limits.max_source_bytes, what="model")
    check_magic(path, kind=kind)
    unpack = unpack_zip if kind is ModelKind.SAVED_MODEL_ZIP else unpack_tar_gz
    root = _saved_model_root(unpack(path, destination=workdir / "saved_model", limits=limits))
    screen_saved_model(root)
    try:
        predictor = _SavedModelPredictor(root)
    except UnsupportedFormat:
        raise
    except Exception as exc:  # TensorFlow raises many types for a bad SavedModel
        raise UnsupportedFormat(
            "the SavedModel could not be loaded or has no serving_default signature",
            detail=repr(exc),
        ) from exc
    spec = predictor.spec
    total, zeros = parameter_counts(predictor.function.variables)
    return Source(
        kind=kind,
        predict=predictor,
        input_shape=tuple(-1 if dim is None else int(dim) for dim in spec.shape),
        float_input=spec.dtype.is_floating,
        parameters=total,
        zero_parameters=zeros,
        saved_model=root,
    )


def _from_tflite(path: Path, *, limits: IntakeLimits) -> Source:
    check_file_size(path, limit=limits.max_source_bytes, what="model")
    check_magic(path, kind=ModelKind.TFLITE)
    content = path.read_bytes()
    facts = read_tflite(content)
    problems = facts.problems()
    if problems:
        raise UnsafeModel(f"the TFLite model cannot be served: {problems[0]}")
    runner = TFLiteRunner(content)
    return Source(
        kind=ModelKind.TFLITE,
        predict=runner.predict,
        input_shape=runner.input_shape,
        float_input=runner.float_input,
        parameters=facts.parameters,
        zero_parameters=facts.zero_parameters,
        tflite=content,
    )


def load_source(path: Path, *, kind: ModelKind, workdir: Path, limits: IntakeLimits) -> Source:
    """Check and load an upload of the given kind; ``workdir`` is private to this job."""
    if kind is ModelKind.KERAS:
        return _from_keras(path, workdir=workdir, limits=limits)
    if kind is ModelKind.TFLITE:
        return _from_tflite(path, limits=limits)
    return _from_saved_model(path, kind=kind, workdir=workdir, limits=limits)
