import tempfile
from pathlib import Path

import numpy as np
import pytest

from compress import _tf
from compress.convert import (
    CheckSet,
    _first_verified,
    convert_keras,
    convert_saved_model,
    temporary_files_in,
)
from compress.errors import ConversionFailed, InvalidOptions
from compress.evaluate import OutputKind
from compress.options import Quantization, Task
from compress.runtime import TFLiteRunner
from tests.unit.compress.conftest import contents

KIND = OutputKind(Task.CLASSIFICATION, probabilities=True)


@pytest.fixture(scope="module")
def check(cnn, digits):
    """The CNN's outputs on 128 test images: what every conversion must reproduce."""
    inputs = digits.x_test[:128]
    return CheckSet(inputs=inputs, reference=cnn.model.predict(inputs, verbose=0), kind=KIND)


def test_keras_conversion_is_verified_and_writes_only_in_its_workdir(cnn, check, tmp_path):
    """model.export + from_saved_model gives a model agreeing everywhere, built inside workdir."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    conversion = convert_keras(cnn.model, workdir=workdir, mode=Quantization.NONE, check=check)
    assert conversion.converter == "keras-export"
    assert conversion.agreement == 1.0
    assert conversion.samples == 128
    assert conversion.facts.problems() == []
    assert {path.parts[0] for path in contents(tmp_path)} == {"work"}


def test_tf_saved_model_save_of_keras_falls_back_to_the_signature_path(cnn, check, tmp_path):
    """from_saved_model on tf.saved_model.save output keeps variables; the fallback is used."""
    tf = _tf.tensorflow()
    directory = tmp_path / "saved"
    tf.saved_model.save(cnn.model, str(directory))
    workdir = tmp_path / "work"
    workdir.mkdir()
    conversion = convert_saved_model(
        directory, workdir=workdir, mode=Quantization.NONE, check=check
    )
    assert conversion.converter == "saved-model-signature"
    assert conversion.agreement == 1.0


def test_a_conversion_left_with_variables_is_refused(cnn, check, tmp_path):
    """The concrete-function path with the Keras model as trackable is refused, not served."""
    tf = _tf.tensorflow()
    function = tf.function(cnn.model).get_concrete_function(
        tf.TensorSpec([None, 8, 8, 1], tf.float32)
    )

    def broken():
        return tf.lite.TFLiteConverter.from_concrete_functions([function], cnn.model)

    with pytest.raises(
        ConversionFailed, match=r"broken: it keeps weights in variables \(.*VAR_HANDLE"
    ):
        _first_verified(
            [("broken", broken)],
            workdir=tmp_path,
            mode=Quantization.NONE,
            int8_io=False,
            calibration=None,
            check=check,
        )


def test_a_conversion_that_disagrees_is_refused_with_its_agreement(check, tmp_path):
    """A model that converts cleanly but answers differently is refused with the figure."""
    tf = _tf.tensorflow()
    keras = _tf.keras()
    keras.utils.set_random_seed(1)
    untrained = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    untrained.export(str(tmp_path / "other"), format="tf_saved_model", verbose=False)

    def wrong_model():
        return tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "other"))

    with pytest.raises(ConversionFailed) as caught:
        _first_verified(
            [("wrong", wrong_model)],
            workdir=tmp_path,
            mode=Quantization.NONE,
            int8_io=False,
            calibration=None,
            check=check,
        )
    message = caught.value.message
    assert "agrees with the original on only" in message
    assert "of 128 samples (needs 98%)" in message


def test_converter_errors_become_a_reason(check, tmp_path):
    """A converter that raises is reported by exception type, not with its internals."""

    def failing():
        msg = "internal converter detail /srv/secret"
        raise RuntimeError(msg)

    with pytest.raises(
        ConversionFailed, match=r"failing: the converter failed \(RuntimeError\)"
    ) as caught:
        _first_verified(
            [("failing", failing)],
            workdir=tmp_path,
            mode=Quantization.NONE,
            int8_io=False,
            calibration=None,
            check=check,
        )
    assert "/srv/secret" not in caught.value.message
    assert caught.value.detail == "internal converter detail /srv/secret"


def test_int8_needs_calibration_inputs(cnn, check, tmp_path):
    """Full-integer conversion without calibration data is an options error, not a crash."""
    with pytest.raises(InvalidOptions, match="calibration"):
        convert_keras(cnn.model, workdir=tmp_path, mode=Quantization.INT8, check=check)


def test_int8_conversion_with_int8_io_is_verified_in_float(cnn, check, digits, tmp_path):
    """An int8-I/O conversion is checked through its scales and agrees with the float model."""
    conversion = convert_keras(
        cnn.model,
        workdir=tmp_path,
        mode=Quantization.INT8,
        check=check,
        int8_io=True,
        calibration=digits.x_train[:100],
    )
    assert conversion.agreement >= 0.95
    runner = TFLiteRunner(conversion.content)
    assert np.mean(runner.predict(digits.x_test).argmax(1) == digits.y_test) > 0.95


def test_temporary_files_go_to_the_job_directory_and_back(tmp_path):
    """While converting, tempfile writes under the job's directory; afterwards it is restored."""
    before = tempfile.gettempdir()
    with temporary_files_in(tmp_path):
        made = Path(tempfile.mkdtemp())
    assert made.parent == tmp_path
    assert tempfile.gettempdir() == before
