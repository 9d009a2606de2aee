import numpy as np
import pytest

from compress import _tf
from compress.errors import InvalidData, UnsafeModel, UnsupportedFormat
from compress.formats import ModelKind
from compress.limits import IntakeLimits
from compress.source import load_keras, load_source

LIMITS = IntakeLimits()


def test_keras_upload_loads_with_its_counts(cnn, staging, digits):
    """A .keras upload loads and predicts like the model that was saved."""
    source = load_source(cnn.path, kind=ModelKind.KERAS, workdir=staging, limits=LIMITS)
    assert source.keras is not None
    assert source.input_shape == (-1, 8, 8, 1)
    assert source.parameters == cnn.model.count_params()
    expected = cnn.model.predict(digits.x_test[:20], verbose=0)
    np.testing.assert_allclose(source.predict(digits.x_test[:20]), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("fixture", "kind"),
    [
        ("cnn_saved_model_zip", ModelKind.SAVED_MODEL_ZIP),
        ("cnn_saved_model_tgz", ModelKind.SAVED_MODEL_TAR_GZ),
    ],
)
def test_saved_model_archives_load_and_predict(request, fixture, kind):
    """A SavedModel in a .zip or a .tar.gz (with a top-level folder) loads and predicts."""
    cnn, staging, digits = (request.getfixturevalue(name) for name in ("cnn", "staging", "digits"))
    source = load_source(
        request.getfixturevalue(fixture), kind=kind, workdir=staging, limits=LIMITS
    )
    assert source.saved_model is not None
    assert source.parameters == cnn.model.count_params()
    expected = cnn.model.predict(digits.x_test[:20], verbose=0)
    np.testing.assert_allclose(source.predict(digits.x_test[:20]), expected, atol=1e-5)


def test_tflite_upload_loads_through_litert(cnn_tflite, tmp_path, staging, digits, cnn):
    """A .tflite upload is read, checked and run in LiteRT."""
    path = tmp_path / "model.tflite"
    path.write_bytes(cnn_tflite)
    source = load_source(path, kind=ModelKind.TFLITE, workdir=staging, limits=LIMITS)
    assert source.tflite == cnn_tflite
    expected = cnn.model.predict(digits.x_test[:20], verbose=0)
    np.testing.assert_allclose(source.predict(digits.x_test[:20]), expected, atol=1e-4)


def test_tflite_with_variable_ops_is_refused(broken_tflite, tmp_path, staging):
    """An uploaded .tflite whose weights are variables cannot be served."""
    path = tmp_path / "model.tflite"
    path.write_bytes(broken_tflite)
    with pytest.raises(UnsafeModel, match="variables"):
        load_source(path, kind=ModelKind.TFLITE, workdir=staging, limits=LIMITS)


def test_archive_without_a_saved_model_is_refused(tmp_path, staging):
    """A zip with no saved_model.pb at its top level is not a SavedModel."""
    import zipfile

    path = tmp_path / "model.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(UnsupportedFormat, match=r"no SavedModel \(saved_model\.pb\)"):
        load_source(path, kind=ModelKind.SAVED_MODEL_ZIP, workdir=staging, limits=LIMITS)


def test_keras_model_with_two_inputs_is_refused(tmp_path, staging):
    """Multi-input Keras models are refused with a clear message."""
    keras = _tf.keras()
    first, second = keras.Input((3,)), keras.Input((3,))
    keras.Model([first, second], keras.layers.Add()([first, second])).save(tmp_path / "two.keras")
    with pytest.raises(UnsupportedFormat, match="one input and one output"):
        load_keras(tmp_path / "two.keras", workdir=staging / "k", limits=LIMITS)


def test_zip_that_is_not_a_keras_model_is_refused(tmp_path, staging):
    """A zip with a config.json Keras cannot build is refused as not loadable."""
    import zipfile

    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            "config.json", '{"module": "keras", "class_name": "Sequential", "config": {}}'
        )
    with pytest.raises(UnsupportedFormat, match="could not be loaded"):
        load_keras(path, workdir=staging / "k", limits=LIMITS)


def test_inputs_of_the_wrong_shape_are_refused(cnn, staging):
    """Data whose rows do not fit the model's input is refused, naming both shapes."""
    source = load_source(cnn.path, kind=ModelKind.KERAS, workdir=staging, limits=LIMITS)
    with pytest.raises(InvalidData, match=r"rows of shape \(64,\); the model expects \(8, 8, 1\)"):
        source.prepare(np.zeros((3, 64)), role="evaluation")
    prepared = source.prepare(np.zeros((3, 8, 8, 1), np.float64), role="evaluation")
    assert prepared.dtype == np.float32
