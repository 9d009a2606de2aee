"""Shared fixtures for the compress tests: the digits data and models trained once per session.

The digits CNN is the one the issue's targets are stated for: Conv-Conv-Dense,
about 56k parameters, about 99% test accuracy on scikit-learn's 8x8 digits
(reshaped to 8x8x1, scaled to [0, 1], split 75/25 with ``random_state=0``),
trained with fixed seeds. Everything heavy is session-scoped: the machine has
two busy cores.
"""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compress import _tf

SEED = 0


@dataclass(frozen=True)
class Digits:
    """The digits split, inputs shaped (n, 8, 8, 1) in [0, 1]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class DataFiles:
    """The digits split written as the .npz files a tenant uploads."""

    training: Path
    evaluation: Path
    calibration: Path


@dataclass(frozen=True)
class TrainedModel:
    """A trained Keras model, its .keras file, and its test accuracy."""

    model: Any
    path: Path
    accuracy: float


def contents(directory: Path) -> set[Path]:
    """Every path under ``directory``, relative to it."""
    return {path.relative_to(directory) for path in directory.rglob("*")}


def load_digits_split() -> Digits:
    """scikit-learn's digits, split with random_state=0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=SEED)
    return Digits(x_train, y_train, x_test, y_test)


def write_data_files(digits: Digits, directory: Path) -> DataFiles:
    """Write training.npz and evaluation.npz (x, y) and calibration.npz (x only)."""
    files = DataFiles(
        training=directory / "training.npz",
        evaluation=directory / "evaluation.npz",
        calibration=directory / "calibration.npz",
    )
    np.savez(files.training, x=digits.x_train, y=digits.y_train)
    np.savez(files.evaluation, x=digits.x_test, y=digits.y_test)
    np.savez(files.calibration, x=digits.x_train[:200])
    return files


def _train(model: Any, digits: Digits, *, epochs: int) -> float:
    keras = _tf.keras()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(digits.x_train, digits.y_train, epochs=epochs, batch_size=32, verbose=0)
    return float(model.evaluate(digits.x_test, digits.y_test, verbose=0)[1])


def train_cnn(digits: Digits, path: Path) -> TrainedModel:
    """The target model: Conv-Conv-Dense, 56,086 parameters, about 99% on the test split."""
    keras = _tf.keras()
    layers = keras.layers
    keras.utils.set_random_seed(SEED)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(36, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ],
        name="digits_cnn",
    )
    accuracy = _train(model, digits, epochs=30)
    model.save(path)
    return TrainedModel(model, path, accuracy)


def train_mlp_chain(digits: Digits, path: Path) -> TrainedModel:
    """A functional MLP with three same-width hidden layers: room for layer cutting."""
    keras = _tf.keras()
    layers = keras.layers
    keras.utils.set_random_seed(SEED)
    inputs = keras.Input((8, 8, 1))
    hidden = layers.Flatten()(inputs)
    hidden = layers.Dense(32, activation="relu")(hidden)
    for _ in range(3):
        hidden = layers.Dense(32, activation="relu")(hidden)
    outputs = layers.Dense(10, activation="softmax")(hidden)
    model = keras.Model(inputs, outputs, name="mlp_chain")
    accuracy = _train(model, digits, epochs=25)
    model.save(path)
    return TrainedModel(model, path, accuracy)


@pytest.fixture(scope="session")
def digits() -> Digits:
    """scikit-learn's digits, split with random_state=0."""
    return load_digits_split()


@pytest.fixture(scope="session")
def data_files(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> DataFiles:
    """The digits split as the .npz files a tenant uploads."""
    return write_data_files(digits, tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def cnn(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """The digits CNN, trained once per session."""
    return train_cnn(digits, tmp_path_factory.mktemp("cnn") / "cnn.keras")


@pytest.fixture(scope="session")
def mlp_chain(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """The cuttable MLP, trained once per session."""
    return train_mlp_chain(digits, tmp_path_factory.mktemp("mlp") / "mlp.keras")


def zip_directory(directory: Path, target: Path) -> Path:
    """Zip ``directory``'s contents (paths relative to it) into ``target``."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(directory).as_posix())
    return target


@pytest.fixture(scope="session")
def cnn_export(cnn: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CNN as a SavedModel directory written by ``model.export()``."""
    directory = tmp_path_factory.mktemp("export") / "saved_model"
    cnn.model.export(str(directory), format="tf_saved_model", verbose=False)
    return directory


@pytest.fixture(scope="session")
def cnn_saved_model_zip(cnn_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The exported CNN SavedModel packed as .zip."""
    return zip_directory(cnn_export, tmp_path_factory.mktemp("smzip") / "model.zip")


@pytest.fixture(scope="session")
def cnn_saved_model_tgz(cnn_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The exported CNN SavedModel packed as .tar.gz (top-level directory inside)."""
    base = tmp_path_factory.mktemp("smtgz") / "model"
    archive = shutil.make_archive(
        str(base), "gztar", root_dir=cnn_export.parent, base_dir=cnn_export.name
    )
    return Path(archive)


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    """A job's private staging directory, inside the test's own tmp_path."""
    directory = tmp_path / "staging"
    directory.mkdir()
    return directory


def save_lambda_model(path: Path) -> Path:
    """A .keras model with a Lambda layer: pickled Python bytecode in its config."""
    keras = _tf.keras()
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Lambda(lambda t: t * 2)]
    )
    model.save(path)
    return path


def save_hostile_saved_model(directory: Path, behaviour: str) -> Path:
    """A SavedModel whose serving function does something a served model must not.

    The functions are traced and saved, never run: saving writes nothing but
    the SavedModel itself.
    """
    tf = _tf.tensorflow()
    spec = tf.TensorSpec([None, 4], tf.float32)

    def read_file(x: Any) -> Any:
        return x + tf.cast(tf.strings.length(tf.io.read_file("/etc/hostname")), tf.float32)

    def write_file(x: Any) -> Any:
        tf.io.write_file(str(directory.parent / "written-by-model"), "owned")
        return x

    def print_input(x: Any) -> Any:
        tf.print("input:", x)
        return x

    def save_v2(x: Any) -> Any:
        prefix = str(directory.parent / "ckpt")
        tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["x"], shape_and_slices=[""], tensors=[x])
        return x

    bodies = {
        "read_file": read_file,
        "write_file": write_file,
        "py_function": lambda x: tf.py_function(lambda a: a * 2, [x], tf.float32),
        "numpy_function": lambda x: tf.numpy_function(lambda a: a * 2, [x], tf.float32),
        "print": print_input,
        "save_v2": save_v2,
        "none": lambda x: x * 2.0,
    }
    body = bodies[behaviour]
    module = tf.Module()
    module.serve = tf.function(body, input_signature=[spec])
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    return directory


def _converter(directory: Path) -> Any:
    tf = _tf.tensorflow()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(directory))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter


@pytest.fixture(scope="session")
def cnn_tflite(cnn_export: Path) -> bytes:
    """The CNN as float32 TFLite, converted directly (not through compress)."""
    return bytes(_converter(cnn_export).convert())


@pytest.fixture(scope="session")
def cnn_tflite_int8_io(cnn_export: Path, digits: Digits) -> bytes:
    """The CNN fully quantized with int8 input and output tensors."""
    tf = _tf.tensorflow()
    converter = _converter(cnn_export)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([row[None]] for row in digits.x_train[:100])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return bytes(converter.convert())


@pytest.fixture(scope="session")
def broken_tflite(cnn: TrainedModel) -> bytes:
    """A conversion that succeeds yet leaves the weights as uninitialised variables.

    ``from_concrete_functions`` with the Keras 3 model as the trackable: the
    converter path the issue warns about.
    """
    tf = _tf.tensorflow()
    function = tf.function(cnn.model).get_concrete_function(
        tf.TensorSpec([None, 8, 8, 1], tf.float32)
    )
    return bytes(tf.lite.TFLiteConverter.from_concrete_functions([function], cnn.model).convert())
