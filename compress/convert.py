"""Convert a Keras model or a SavedModel to TFLite, and check the result instead of trusting it.

Some converter paths succeed yet emit a model whose weights are uninitialised
variables (about 10% accuracy on digits): ``from_concrete_functions`` with a
Keras model as the trackable, and ``from_saved_model`` on a
``tf.saved_model.save`` directory of a Keras 3 model. The paths that work are
``model.export()`` followed by ``from_saved_model`` (used here for Keras: it
also writes only inside the job's directory, where ``from_keras_model`` uses
the system temp directory), and, for an uploaded SavedModel,
``from_concrete_functions`` with the loaded object as the trackable. Every
temporary file a converter makes goes under the job's directory
(``temporary_files_in``).

So every candidate's output is verified: builtin ops only, no variable ops,
loads in LiteRT, and gives the source model's answer on the check samples
(``MIN_AGREEMENT``). The first candidate that passes wins; if none does, the
job fails with each candidate's reason, agreement figures included.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress import _tf
from compress.errors import CompressionError, ConversionFailed, UnsupportedFormat
from compress.evaluate import agreement
from compress.quantize import MIN_AGREEMENT, configure
from compress.runtime import TFLiteRunner
from compress.tflite_model import TFLiteFacts, read_tflite

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    import numpy as np
    import numpy.typing as npt

    from compress._tf import KerasModel
    from compress.evaluate import OutputKind
    from compress.options import Quantization


@dataclass(frozen=True)
class Conversion:
    """A verified TFLite model and how it was obtained."""

    content: bytes
    converter: str
    agreement: float
    samples: int
    facts: TFLiteFacts


@dataclass(frozen=True, kw_only=True)
class CheckSet:
    """Inputs to verify a conversion on, the source's outputs on them, and how to compare."""

    inputs: npt.NDArray[Any]
    reference: npt.NDArray[np.float32]
    kind: OutputKind


_Candidate = tuple[str, "Callable[[], Any]"]


@dataclass(frozen=True)
class _Rejection:
    """Why one candidate path was rejected: public text, and converter output for the log."""

    reason: str
    detail: str = ""


@contextmanager
def temporary_files_in(directory: Path) -> Iterator[None]:
    """Send Python's ``tempfile`` to ``directory`` while converting, then restore it.

    The concrete-function converter path writes a temporary SavedModel to the
    system temp directory; a job must write only under its staging directory.
    ``tempfile.tempdir`` is process-wide, which is acceptable in a compress
    job: it runs in its own process and converts one model at a time.
    """
    previous = tempfile.tempdir
    tempfile.tempdir = str(directory)
    try:
        yield
    finally:
        tempfile.tempdir = previous


def _attempt(
    name: str,
    factory: Callable[[], Any],
    *,
    workdir: Path,
    mode: Quantization,
    int8_io: bool,
    calibration: npt.NDArray[Any] | None,
    check: CheckSet,
) -> Conversion | _Rejection:
    """Convert with one candidate path; return the verified model, or why it was rejected."""
    try:
        with temporary_files_in(workdir):
            converter = factory()
            configure(converter, mode=mode, int8_io=int8_io, calibration=calibration)
            content = bytes(converter.convert())
    except CompressionError:
        raise
    except Exception as exc:  # noqa: BLE001 - the converter raises anything; the reason is kept
        # The converter's own text may hold staging paths: it goes to the log only.
        return _Rejection(f"{name}: the converter failed ({type(exc).__name__})", str(exc)[:4000])
    try:
        facts = read_tflite(content)
        problems = facts.problems()
        if problems:
            return _Rejection(f"{name}: {problems[0]}")
        outputs = TFLiteRunner(content).predict(check.inputs)
    except UnsupportedFormat as exc:
        return _Rejection(f"{name}: {exc.message}", exc.detail or "")
    agreed = agreement(check.reference, outputs, kind=check.kind)
    if agreed < MIN_AGREEMENT[mode]:
        return _Rejection(
            f"{name}: the converted model agrees with the original on only {agreed:.1%} "
            f"of {len(check.inputs)} samples (needs {MIN_AGREEMENT[mode]:.0%})"
        )
    return Conversion(content, name, agreed, len(check.inputs), facts)


def _first_verified(
    candidates: Sequence[_Candidate],
    *,
    workdir: Path,
    mode: Quantization,
    int8_io: bool,
    calibration: npt.NDArray[Any] | None,
    check: CheckSet,
) -> Conversion:
    rejections = []
    for name, factory in candidates:
        outcome = _attempt(
            name,
            factory,
            workdir=workdir,
            mode=mode,
            int8_io=int8_io,
            calibration=calibration,
            check=check,
        )
        if isinstance(outcome, Conversion):
            return outcome
        rejections.append(outcome)
    raise ConversionFailed(
        f"TFLite conversion ({mode.value}) was refused: "
        + "; ".join(rejection.reason for rejection in rejections),
        detail="\n".join(rejection.detail for rejection in rejections if rejection.detail) or None,
    )


def convert_keras(
    model: KerasModel,
    *,
    workdir: Path,
    mode: Quantization,
    check: CheckSet,
    int8_io: bool = False,
    calibration: npt.NDArray[Any] | None = None,
) -> Conversion:
    """Convert a Keras model through ``model.export()`` and ``from_saved_model``, verified."""
    tf = _tf.tensorflow()

    def from_export() -> Any:
        directory = Path(tempfile.mkdtemp(prefix="export-", dir=workdir))
        model.export(str(directory / "model"), format="tf_saved_model", verbose=False)
        return tf.lite.TFLiteConverter.from_saved_model(str(directory / "model"))

    return _first_verified(
        [("keras-export", from_export)],
        workdir=workdir,
        mode=mode,
        int8_io=int8_io,
        calibration=calibration,
        check=check,
    )


def convert_saved_model(
    directory: Path,
    *,
    workdir: Path,
    mode: Quantization,
    check: CheckSet,
    int8_io: bool = False,
    calibration: npt.NDArray[Any] | None = None,
) -> Conversion:
    """Convert an uploaded (already screened) SavedModel, trying both known-good paths."""
    tf = _tf.tensorflow()

    def from_directory() -> Any:
        return tf.lite.TFLiteConverter.from_saved_model(str(directory), ["serving_default"])

    def from_signature() -> Any:
        loaded = tf.saved_model.load(str(directory))
        function = loaded.signatures["serving_default"]
        return tf.lite.TFLiteConverter.from_concrete_functions([function], loaded)

    return _first_verified(
        [("saved-model", from_directory), ("saved-model-signature", from_signature)],
        workdir=workdir,
        mode=mode,
        int8_io=int8_io,
        calibration=calibration,
        check=check,
    )
