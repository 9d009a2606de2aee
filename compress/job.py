"""The stages of one compression job, on an already loaded and checked upload.

``Job`` holds what the stages share (the source, the prepared data, the
output kind, the check samples) and what they accumulate (step and
conversion records). ``compress.pipeline`` drives it; the order of the steps
and the reasons for it are documented there.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

from compress._train import FitSettings
from compress._weights import parameter_counts
from compress.clip import clip
from compress.convert import CheckSet, Conversion, convert_keras, convert_saved_model
from compress.cut import cut
from compress.distill import build_student, distill
from compress.errors import InvalidOptions
from compress.evaluate import agreement, infer_output_kind
from compress.measure import measure
from compress.options import CompressOptions, Quantization
from compress.prune import prune
from compress.report import CompressionReport, ConversionRecord, ModelFigures, StepRecord
from compress.signature import extract_signature
from compress.source import keras_predictor

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import numpy.typing as npt
    from pydantic import BaseModel

    from compress._tf import KerasModel
    from compress.data import Dataset
    from compress.report import JsonValue
    from compress.source import Source

    Predict = Callable[[npt.NDArray[Any]], npt.NDArray[np.float32]]

_CHECK_SAMPLES = 256
_RANDOM_SAMPLES = 64
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DYNAMIC_DIM = 8  # stands in for a dynamic non-batch dimension in random check inputs


def _first(datasets: list[Dataset | None]) -> Dataset | None:
    return next((dataset for dataset in datasets if dataset is not None), None)


def _check_inputs(source: Source, data: Dataset | None, *, seed: int) -> npt.NDArray[Any]:
    """Inputs to verify conversions on: the first rows of the data, or seeded random ones."""
    if data is not None:
        return data.x[:_CHECK_SAMPLES]
    rng = np.random.default_rng(seed)
    dims = (_DYNAMIC_DIM if dim == -1 else dim for dim in source.input_shape[1:])
    shape = (_RANDOM_SAMPLES, *dims)
    if source.float_input:
        return rng.random(shape, dtype=np.float32)
    return rng.integers(0, 2, size=shape).astype(np.int32)


def _verdict(
    options: CompressOptions, *, before: ModelFigures, after: ModelFigures
) -> tuple[float | None, float | None, list[str]]:
    """Accuracy drop (points), relative MSE increase, and why the result misses its bounds."""
    reasons = []
    drop = increase = None
    if before.accuracy is not None and after.accuracy is not None:
        drop = (before.accuracy - after.accuracy) * 100.0
        bound = options.max_accuracy_drop
        if bound is not None and drop > bound:
            reasons.append(f"accuracy dropped {drop:.2f} points, more than the allowed {bound:g}")
    if before.mse is not None and after.mse is not None:
        increase = (after.mse - before.mse) / max(before.mse, 1e-12)
        bound = options.max_mse_increase
        if bound is not None and increase > bound:
            reasons.append(f"MSE rose by {increase:.1%}, more than the allowed {bound:.1%}")
    return drop, increase, reasons


class Job:
    """One job's shared state; each public method is one stage, called in order."""

    def __init__(
        self,
        *,
        options: CompressOptions,
        workdir: Path,
        source: Source,
        data: dict[str, Dataset | None],
        progress: Callable[[str, float], None],
    ) -> None:
        self.options = options
        self.workdir = workdir
        self.source = source
        self.calibration = data.get("calibration")
        self.evaluation = data.get("evaluation")
        self.training = data.get("training")
        self.progress = progress
        sample = _first([self.evaluation, self.calibration, self.training])
        self.check_x = _check_inputs(source, sample, seed=options.seed)
        labelled = _first([self.evaluation, self.training])
        self.kind = infer_output_kind(
            requested=options.task,
            outputs=source.predict(self.check_x),
            labels=None if labelled is None else labelled.y,
        )
        self.fit = FitSettings(self.kind, options.batch_size, options.seed)
        self.steps: list[StepRecord] = []
        self.conversions: list[ConversionRecord] = []
        self.input_name: str | None = None

    def _check_set(self, predict: Predict) -> CheckSet:
        reference = predict(self.check_x)
        # Same task, but a student may output logits where the teacher gave probabilities.
        kind = infer_output_kind(requested=self.kind.task, outputs=reference, labels=None)
        return CheckSet(inputs=self.check_x, reference=reference, kind=kind)

    def _saved_model(self) -> Path:
        directory = self.source.saved_model
        if directory is None:  # pragma: no cover - check_compatible refuses re-converting .tflite
            raise InvalidOptions("a .tflite model cannot be converted again")
        return directory

    def _convert(
        self,
        model: KerasModel | None,
        *,
        mode: Quantization,
        calibration: npt.NDArray[Any] | None = None,
    ) -> Conversion:
        """Convert ``model``, or the uploaded SavedModel when ``model`` is None."""
        int8_io = self.options.int8_io and mode is Quantization.INT8
        if model is not None:
            check = self._check_set(keras_predictor(model))
            return convert_keras(
                model,
                workdir=self.workdir,
                mode=mode,
                check=check,
                int8_io=int8_io,
                calibration=calibration,
            )
        check = self._check_set(self.source.predict)
        return convert_saved_model(
            self._saved_model(),
            workdir=self.workdir,
            mode=mode,
            check=check,
            int8_io=int8_io,
            calibration=calibration,
        )

    def _record(self, conversion: Conversion, *, model: str, mode: Quantization) -> None:
        record = ConversionRecord(
            model=model,
            quantization=mode.value,
            converter=conversion.converter,
            agreement=conversion.agreement,
            samples=conversion.samples,
        )
        self.conversions.append(record)

    def _step(self, name: str, *, settings: BaseModel, outcome: dict[str, JsonValue]) -> None:
        self.steps.append(
            StepRecord(name=name, settings=settings.model_dump(mode="json"), outcome=outcome)
        )

    def original(self) -> bytes:
        """The uploaded model as float32 TFLite: the baseline of every comparison."""
        self.progress("converting", 0.1)
        if self.source.tflite is not None:
            content = self.source.tflite
        else:
            conversion = self._convert(self.source.keras, mode=Quantization.NONE)
            self._record(conversion, model="original", mode=Quantization.NONE)
            content = conversion.content
        name = extract_signature(content)["inputs"][0]["name"]
        self.input_name = name if _IDENTIFIER.fullmatch(name) else None
        return content

    def _student(self, student_file: Path | None, load: Callable[[Path], KerasModel]) -> KerasModel:
        if student_file is not None:
            return load(student_file)
        name = self.options.distill.student if self.options.distill else ""
        return build_student(
            name,
            input_shape=self.source.input_shape[1:],
            outputs=int(np.prod(self.source.predict(self.check_x[:1]).shape[1:])),
            probabilities=self.kind.probabilities,
            input_name=self.input_name,
        )

    def transform(
        self, *, student_file: Path | None, load: Callable[[Path], KerasModel]
    ) -> KerasModel | None:
        """Distill, cut, prune, clip (each if asked); return the Keras model to convert.

        ``None`` means there is no Keras model: the upload is a SavedModel or a
        ``.tflite`` and no student replaced it.
        """
        options, model = self.options, self.source.keras
        if options.distill is not None:
            self.progress("distilling", 0.2)
            model, outcome = distill(
                teacher=self.source.predict,
                teacher_parameters=self.source.parameters,
                student=self._student(student_file, load),
                options=options.distill,
                training=self.training,
                evaluation=self.evaluation,
                settings=self.fit,
            )
            self._step("distill", settings=options.distill, outcome=outcome)
        if options.cut is not None:
            self.progress("cutting", 0.4)
            model, outcome = cut(
                model,
                options=options.cut,
                evaluation=self.evaluation,
                training=self.training,
                settings=self.fit,
            )
            self._step("cut", settings=options.cut, outcome=outcome)
        if options.prune is not None:
            self.progress("pruning", 0.5)
            outcome = prune(model, options=options.prune, training=self.training, settings=self.fit)
            self._step("prune", settings=options.prune, outcome=outcome)
        if options.clip is not None:
            self.progress("clipping", 0.6)
            outcome = clip(model, options=options.clip)
            self._step("clip", settings=options.clip, outcome=outcome)
        return model

    def result(self, model: KerasModel | None, original: bytes) -> bytes:
        """Convert the transformed (or uploaded) model with the chosen quantization."""
        options = self.options
        mode = options.quantization
        if mode is Quantization.NONE and not options.modifies_weights:
            return original
        self.progress("converting", 0.7)
        calibration = None
        if mode is Quantization.INT8:
            data = _first([self.calibration, self.evaluation, self.training])
            if data is not None:
                count = min(options.calibration_samples, len(data))
                # A seeded random sample: data files are often sorted by class.
                rows = np.random.default_rng(options.seed).choice(len(data), count, replace=False)
                calibration = data.x[np.sort(rows)]
        conversion = self._convert(model, mode=mode, calibration=calibration)
        self._record(conversion, model="result", mode=mode)
        if mode is not Quantization.NONE:
            used = 0 if calibration is None else len(calibration)
            self.steps.append(
                StepRecord(
                    name="quantize",
                    settings={"mode": mode.value, "int8_io": options.int8_io},
                    outcome={"converter": conversion.converter, "calibration_samples": used},
                )
            )
        return conversion.content

    def report(
        self, original: bytes, *, result: bytes, model: KerasModel | None
    ) -> CompressionReport:
        """Measure original and result on the evaluation data and judge them against the bounds."""
        self.progress("evaluating", 0.8)
        source = self.source
        source_counts = (source.parameters, source.zero_parameters)
        result_counts = source_counts if model is None else parameter_counts(model.weights)
        before = measure(
            original,
            parameters=source_counts,
            evaluation=self.evaluation,
            kind=self.kind,
            latency_input=self.check_x[0],
        )
        after = measure(
            result,
            parameters=result_counts,
            evaluation=self.evaluation,
            kind=self.kind,
            latency_input=self.check_x[0],
        )
        agreed = None
        if before.outputs is not None and after.outputs is not None:
            agreed = agreement(before.outputs, after.outputs, kind=self.kind)
        drop, increase, reasons = _verdict(self.options, before=before.figures, after=after.figures)
        return CompressionReport(
            source_kind=source.kind.value,
            task=self.kind.task.value,
            evaluation_samples=0 if self.evaluation is None else len(self.evaluation),
            original=before.figures,
            result=after.figures,
            agreement=agreed,
            accuracy_drop_points=drop,
            mse_increase=increase,
            size_ratio=before.figures.tflite_bytes / after.figures.tflite_bytes,
            zstd_ratio=before.figures.zstd_bytes / after.figures.zstd_bytes,
            steps=tuple(self.steps),
            conversions=tuple(self.conversions),
            passed=not reasons,
            reasons=tuple(reasons),
        )
