import numpy as np
import pytest

from compress import _tf
from compress.distill import STUDENTS, build_student
from compress.errors import InvalidOptions
from compress.formats import ModelKind
from compress.options import parse_options
from compress.pipeline import compress_model


def test_distilled_student_is_40x_smaller_and_within_2_points(cnn, data_files, staging):
    """cnn-tiny learns from the CNN: >= 40x fewer parameters, <= 2 points lost, baseline shown."""
    result = compress_model(
        source=cnn.path,
        kind=ModelKind.KERAS,
        staging=staging,
        options=parse_options(
            {"distill": {"student": "cnn-tiny", "temperature": 8, "epochs": 100}}
        ),
        training=data_files.training,
        evaluation=data_files.evaluation,
    )
    report = result.report
    (step,) = report.steps
    outcome = step.outcome
    assert step.name == "distill"
    assert outcome["parameter_ratio"] >= 40
    assert report.original.parameters / report.result.parameters >= 40
    assert report.accuracy_drop_points is not None
    assert report.accuracy_drop_points <= 2.0
    assert outcome["teacher_accuracy"] == pytest.approx(report.original.accuracy)
    assert outcome["distilled_accuracy"] == pytest.approx(report.result.accuracy, abs=0.005)
    # The same student trained on hard labels only, for comparison.
    assert 0.5 < outcome["hard_label_accuracy"] <= 1.0
    # The student keeps the teacher's input name, so clients need no change.
    unchanged = compress_model(
        source=cnn.path, kind=ModelKind.KERAS, staging=staging, options=parse_options({})
    )
    assert result.signature["inputs"] == unchanged.signature["inputs"]


def test_an_uploaded_student_supplies_the_architecture(cnn, data_files, staging, tmp_path):
    """An uploaded .keras student is screened, re-initialised and trained from the teacher."""
    keras = _tf.keras()
    student = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    student.save(tmp_path / "student.keras")
    result = compress_model(
        source=cnn.path,
        kind=ModelKind.KERAS,
        staging=staging,
        options=parse_options({"distill": {"student": "uploaded", "epochs": 10}}),
        training=data_files.training,
        evaluation=data_files.evaluation,
        student=tmp_path / "student.keras",
    )
    assert result.report.result.parameters == 650
    assert result.report.result.accuracy is not None
    assert result.report.result.accuracy > 0.85


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_every_named_student_builds_with_the_teacher_interface(name):
    """Each named student takes the teacher's input and gives its output width."""
    model = build_student(
        name, input_shape=(8, 8, 1), outputs=10, probabilities=True, input_name="pixels"
    )
    assert tuple(model.outputs[0].shape) == (None, 10)
    assert model.inputs[0].name == "pixels"
    assert model.layers[-1].__class__.__name__ == "Softmax"


def test_logit_teachers_get_logit_students():
    """Without probabilities the student ends on a linear layer."""
    model = build_student("mlp-small", input_shape=(4,), outputs=3, probabilities=False)
    assert model.layers[-1].__class__.__name__ == "Dense"


def test_cnn_student_needs_image_inputs():
    """cnn-tiny refuses inputs that are not (height, width, channels)."""
    with pytest.raises(InvalidOptions, match="image inputs"):
        build_student("cnn-tiny", input_shape=(64,), outputs=10, probabilities=True)


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    """A small regression teacher on synthetic data, with its .npz files."""
    keras = _tf.keras()
    directory = tmp_path_factory.mktemp("regression")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 6)).astype(np.float32)
    y = (x @ rng.normal(size=(6, 1)) + np.sin(x[:, :1])).astype(np.float32)
    keras.utils.set_random_seed(0)
    teacher = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(1)]
    )
    teacher.compile(optimizer="adam", loss="mse")
    teacher.fit(x[:450], y[:450], epochs=40, verbose=0)
    teacher.save(directory / "teacher.keras")
    np.savez(directory / "train.npz", x=x[:450], y=y[:450])
    np.savez(directory / "eval.npz", x=x[450:], y=y[450:])
    return directory


def test_regression_teachers_distill_with_mse(regression, staging):
    """A regression model distils on MSE targets and the report speaks MSE, not accuracy."""
    result = compress_model(
        source=regression / "teacher.keras",
        kind=ModelKind.KERAS,
        staging=staging,
        options=parse_options({"distill": {"student": "mlp-medium", "epochs": 30, "alpha": 0.5}}),
        training=regression / "train.npz",
        evaluation=regression / "eval.npz",
    )
    report = result.report
    assert report.task == "regression"
    assert report.original.accuracy is None
    assert report.original.mse is not None
    assert report.result.mse is not None
    assert report.mse_increase is not None
    outcome = report.steps[0].outcome
    assert {"teacher_mse", "distilled_mse", "hard_label_mse"} <= set(outcome)
    assert outcome["distilled_mse"] < 1.0


def test_binary_classifiers_are_refused(tmp_path, digits, data_files, staging):
    """A single-unit classifier cannot be distilled (yet): refused with the reason."""
    keras = _tf.keras()
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.save(tmp_path / "binary.keras")
    labels = (digits.y_train > 4).astype(np.int64)
    np.savez(tmp_path / "train.npz", x=digits.x_train, y=labels)
    with pytest.raises(InvalidOptions, match="multi-class classification and regression"):
        compress_model(
            source=tmp_path / "binary.keras",
            kind=ModelKind.KERAS,
            staging=staging,
            options=parse_options({"distill": {"student": "mlp-small", "epochs": 1}}),
            training=tmp_path / "train.npz",
        )
