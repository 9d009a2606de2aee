import numpy as np
import pytest

from compress import _tf
from compress.errors import UnsupportedFormat
from compress.runtime import TFLiteRunner


def test_float_model_predicts_like_keras(cnn_tflite, cnn, digits):
    """LiteRT outputs of the float32 conversion match Keras to float precision."""
    runner = TFLiteRunner(cnn_tflite)
    expected = cnn.model.predict(digits.x_test[:50], verbose=0)
    np.testing.assert_allclose(runner.predict(digits.x_test[:50]), expected, atol=1e-4)
    assert runner.input_shape == (-1, 8, 8, 1)
    assert runner.float_input


def test_int8_io_model_is_fed_and_read_in_float(cnn_tflite_int8_io, cnn, digits):
    """An int8-I/O model takes float inputs and gives float outputs through its scales."""
    runner = TFLiteRunner(cnn_tflite_int8_io)
    outputs = runner.predict(digits.x_test[:100])
    assert outputs.dtype == np.float32
    expected = cnn.model.predict(digits.x_test[:100], verbose=0)
    assert np.mean(outputs.argmax(1) == expected.argmax(1)) >= 0.95
    assert runner.float_input


def test_latency_is_a_positive_median_in_microseconds(cnn_tflite, digits):
    """Batch-1 latency is measured in microseconds, well under a second for this model."""
    latency = TFLiteRunner(cnn_tflite).latency_us(digits.x_test[0], runs=20, warmup=2)
    assert 0 < latency < 1_000_000


def test_model_that_does_not_load_is_refused(cnn_tflite):
    """Bytes LiteRT cannot load are refused with the builtin-ops message."""
    with pytest.raises(UnsupportedFormat, match="does not load in LiteRT"):
        TFLiteRunner(cnn_tflite[: len(cnn_tflite) // 2])


def test_model_with_two_inputs_is_refused(tmp_path):
    """Only single-input, single-output models fit the pipeline's data files."""
    tf = _tf.tensorflow()
    keras = _tf.keras()
    first, second = keras.Input((3,)), keras.Input((3,))
    model = keras.Model([first, second], keras.layers.Add()([first, second]))
    model.export(str(tmp_path / "two"), format="tf_saved_model", verbose=False)
    content = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "two")).convert()
    with pytest.raises(UnsupportedFormat, match="one input and one output"):
        TFLiteRunner(content)
