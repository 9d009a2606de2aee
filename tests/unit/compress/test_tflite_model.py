import pytest

from compress.errors import UnsupportedFormat
from compress.tflite_model import VARIABLE_OPS, read_tflite


def test_a_good_conversion_uses_builtin_ops_and_counts_its_weights(cnn_tflite, cnn):
    """The CNN's TFLite uses builtin ops only and holds about the Keras parameter count."""
    facts = read_tflite(cnn_tflite)
    assert facts.custom_ops == frozenset()
    assert {"CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= facts.builtin_ops
    assert not facts.builtin_ops & VARIABLE_OPS
    assert facts.problems() == []
    assert abs(facts.parameters - cnn.model.count_params()) <= 100


def test_a_conversion_with_uninitialised_variables_is_flagged(broken_tflite):
    """VAR_HANDLE and READ_VARIABLE mark weights left as variables: not servable."""
    facts = read_tflite(broken_tflite)
    assert {"VAR_HANDLE", "READ_VARIABLE"} <= facts.builtin_ops
    (problem,) = facts.problems()
    assert "variables" in problem
    assert "VAR_HANDLE" in problem


def test_int8_weights_are_counted_too(cnn_tflite_int8_io, cnn):
    """Quantized weights count as parameters like float ones."""
    facts = read_tflite(cnn_tflite_int8_io)
    assert facts.parameters >= cnn.model.count_params() * 0.9


@pytest.mark.parametrize("content", [b"", b"short", b"\x00" * 64])
def test_bytes_without_the_tflite_identifier_are_refused(content):
    """Anything without the TFL3 identifier is not a TFLite model."""
    with pytest.raises(UnsupportedFormat, match="not a TFLite model"):
        read_tflite(content)


def test_corrupt_flatbuffer_is_refused_not_crashed(cnn_tflite):
    """A TFL3 header over garbage offsets is refused as corrupt."""
    content = cnn_tflite[:8] + b"\xff" * 64
    with pytest.raises(UnsupportedFormat, match="corrupt"):
        read_tflite(content)
