"""Knowledge distillation: train a small student on the teacher's softened outputs.

The teacher is the uploaded model, whatever its format: only its predictions
are needed. Classification students learn from
``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels, student)``
where ``_T`` means softmax at temperature ``T`` (Hinton et al., 2015; the
``T^2`` keeps the soft term's gradients on the scale of the hard one).
Probability outputs are softened through their logarithm, which equals the
logits up to a constant, so softmax and logit models are handled alike.
Regression students learn from ``alpha * MSE(teacher) + (1 - alpha) * MSE(labels)``.

The same student is also trained on the hard labels alone, from the same
initial weights and for the same epochs, and both scores go in the report:
distillation costs a second training run, and the tenant should see whether
it paid for itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from compress import _tf
from compress._train import FitSettings, fine_tune
from compress.errors import InvalidData, InvalidOptions
from compress.evaluate import class_labels, infer_output_kind, score
from compress.options import Task
from compress.source import keras_predictor

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy.typing as npt

    from compress._tf import KerasModel
    from compress.data import Dataset
    from compress.evaluate import OutputKind
    from compress.options import DistillOptions
    from compress.report import JsonValue

_EPSILON = 1e-7


def _hidden_mlp(width: int) -> Callable[[Any, Any], Any]:
    def build(keras: Any, inputs: Any) -> Any:
        flat = keras.layers.Flatten()(inputs)
        return keras.layers.Dense(width, activation="relu")(flat)

    return build


def _hidden_cnn_tiny(keras: Any, inputs: Any) -> Any:
    if len(inputs.shape) != 4:  # noqa: PLR2004 - batch, height, width, channels
        raise InvalidOptions("the cnn-tiny student needs image inputs (height, width, channels)")
    features = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    features = keras.layers.MaxPooling2D(2)(features)
    return keras.layers.Flatten()(features)


# The names are ``options.STUDENT_ARCHITECTURES``; a test keeps the two in step.
STUDENTS: dict[str, Callable[[Any, Any], Any]] = {
    "mlp-small": _hidden_mlp(16),
    "mlp-medium": _hidden_mlp(64),
    "cnn-tiny": _hidden_cnn_tiny,
}


def build_student(
    name: str,
    *,
    input_shape: tuple[int, ...],
    outputs: int,
    probabilities: bool,
    input_name: str | None = None,
) -> KerasModel:
    """A fresh student: the named body, then ``outputs`` units (softmax if ``probabilities``).

    ``input_name`` names the input tensor, so the served student keeps the
    signature name clients already use for the teacher.
    """
    keras = _tf.keras()
    inputs = keras.Input(
        shape=tuple(None if dim == -1 else dim for dim in input_shape), name=input_name
    )
    head = keras.layers.Dense(outputs)(STUDENTS[name](keras, inputs))
    if probabilities:
        head = keras.layers.Softmax()(head)
    return keras.Model(inputs, head, name=f"student-{name}")


def _teacher_targets(
    values: npt.NDArray[Any], *, probabilities: bool, temperature: float
) -> npt.NDArray[np.float32]:
    """The teacher's outputs as a softmax at ``temperature``.

    Softmax ignores a constant shift, so ``log(p)`` stands in for the logits
    of a probability output.
    """
    logits = np.log(np.clip(values, _EPSILON, 1.0)) if probabilities else values
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    exp = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True), dtype=np.float32)


def _distillation_loss(*, kind: OutputKind, options: DistillOptions, width: int) -> Any:
    """The combined loss; ``y_true`` packs the hard targets then the teacher's targets."""
    ops = _tf.keras().ops
    temperature, alpha = options.temperature, options.alpha

    def regression(y_true: Any, y_pred: Any) -> Any:
        hard, soft = y_true[:, :width], y_true[:, width:]
        return alpha * ops.mean((y_pred - soft) ** 2, axis=-1) + (1 - alpha) * ops.mean(
            (y_pred - hard) ** 2, axis=-1
        )

    def classification(y_true: Any, y_pred: Any) -> Any:
        hard, soft = y_true[:, :width], y_true[:, width:]
        if kind.probabilities:
            log_student = ops.log(ops.clip(y_pred, _EPSILON, 1.0))
        else:
            log_student = ops.log_softmax(y_pred, axis=-1)
        soft_student = ops.log_softmax(log_student / temperature, axis=-1)
        divergence = ops.sum(
            soft * (ops.log(ops.clip(soft, _EPSILON, 1.0)) - soft_student), axis=-1
        )
        cross_entropy = -ops.sum(hard * log_student, axis=-1)
        return alpha * temperature**2 * divergence + (1 - alpha) * cross_entropy

    return regression if kind.task is Task.REGRESSION else classification


def _packed_targets(
    y: npt.NDArray[Any], teacher: npt.NDArray[Any], *, kind: OutputKind, options: DistillOptions
) -> npt.NDArray[np.float32]:
    width = teacher.shape[-1]
    if kind.task is Task.REGRESSION:
        hard = y.reshape(len(y), -1).astype(np.float32)
        return np.concatenate([hard, teacher.reshape(len(teacher), -1)], axis=1)
    hard = np.eye(width, dtype=np.float32)[class_labels(y)]
    soft = _teacher_targets(
        teacher, probabilities=kind.probabilities, temperature=options.temperature
    )
    return np.concatenate([hard, soft], axis=1)


def _student_kind(student: KerasModel, x: npt.NDArray[Any], *, task: Task) -> OutputKind:
    return infer_output_kind(requested=task, outputs=keras_predictor(student)(x[:32]), labels=None)


def _metric(
    outputs: npt.NDArray[np.float32], labels: npt.NDArray[Any], *, kind: OutputKind
) -> float | None:
    result = score(outputs, labels, kind=kind)
    return result.accuracy if kind.task is Task.CLASSIFICATION else result.mse


def distill(
    *,
    teacher: Callable[[npt.NDArray[Any]], npt.NDArray[np.float32]],
    teacher_parameters: int,
    student: KerasModel,
    options: DistillOptions,
    training: Dataset | None,
    evaluation: Dataset | None,
    settings: FitSettings,
) -> tuple[KerasModel, dict[str, JsonValue]]:
    """Train ``student`` (fresh weights) from ``teacher``; return it and the step outcome.

    ``student`` is only an architecture: its weights are re-initialised
    (``clone_model``) for both the distilled and the hard-label run.
    """
    if training is None or training.y is None:
        raise InvalidData("distillation needs training data with labels")
    kind, seed = settings.kind, settings.seed
    if kind.binary:
        raise InvalidOptions("distillation supports multi-class classification and regression")
    keras = _tf.keras()
    teacher_outputs = teacher(training.x)
    keras.utils.set_random_seed(seed)
    distilled = keras.models.clone_model(student)
    baseline = keras.models.clone_model(student)
    baseline.set_weights(distilled.get_weights())
    student_kind = _student_kind(distilled, training.x, task=kind.task)
    if keras_predictor(distilled)(training.x[:1]).shape[1:] != teacher_outputs.shape[1:]:
        raise InvalidOptions("the student's outputs do not have the teacher's shape")
    width = teacher_outputs.shape[-1]
    keras.utils.set_random_seed(seed)
    distilled.compile(
        optimizer=keras.optimizers.Adam(options.learning_rate),
        loss=_distillation_loss(kind=student_kind, options=options, width=width),
    )
    distilled.fit(
        training.x,
        _packed_targets(training.y, teacher_outputs, kind=kind, options=options),
        epochs=options.epochs,
        batch_size=settings.batch_size,
        shuffle=True,
        verbose=0,
    )
    outcome: dict[str, JsonValue] = {
        "teacher_parameters": teacher_parameters,
        "student_parameters": int(distilled.count_params()),
        "parameter_ratio": teacher_parameters / max(int(distilled.count_params()), 1),
    }
    if evaluation is not None and evaluation.y is not None:
        fine_tune(
            baseline,
            training=training,
            settings=FitSettings(student_kind, settings.batch_size, seed),
            epochs=options.epochs,
            learning_rate=options.learning_rate,
        )
        metric = "accuracy" if kind.task is Task.CLASSIFICATION else "mse"
        x, y = evaluation.x, evaluation.y
        outcome[f"teacher_{metric}"] = _metric(teacher(x), y, kind=kind)
        outcome[f"distilled_{metric}"] = _metric(keras_predictor(distilled)(x), y, kind=kind)
        outcome[f"hard_label_{metric}"] = _metric(keras_predictor(baseline)(x), y, kind=kind)
    return distilled, outcome
