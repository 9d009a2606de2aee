import pytest

from compress import _tf
from compress.errors import InvalidOptions
from compress.formats import ModelKind
from compress.options import Quantization, parse_options
from compress.pipeline import compress_model
from compress.quantize import MIN_AGREEMENT, configure


@pytest.mark.parametrize(
    "target",
    [("int8", 3.4, 0.5), ("float16", 1.9, 0.1), ("dynamic", 3.4, 0.5)],
    ids=["int8", "float16", "dynamic"],
)
def test_quantization_meets_the_size_and_accuracy_targets(cnn, data_files, staging, target):
    """On the digits CNN each mode is smaller than float32 TFLite by its target, losing little."""
    mode, min_ratio, max_drop = target
    result = compress_model(
        source=cnn.path,
        kind=ModelKind.KERAS,
        staging=staging,
        options=parse_options({"quantization": mode}),
        calibration=data_files.calibration,
        evaluation=data_files.evaluation,
    )
    report = result.report
    assert report.original.accuracy is not None
    assert report.original.accuracy >= 0.98
    assert report.size_ratio >= min_ratio
    assert report.accuracy_drop_points is not None
    assert report.accuracy_drop_points <= max_drop
    assert report.passed
    (step,) = report.steps
    assert step.name == "quantize"
    assert step.settings["mode"] == mode
    assert [record.model for record in report.conversions] == ["original", "result"]


def test_int8_io_serves_int8_tensors(cnn, data_files, staging):
    """int8_io makes the served model's input and output INT8, with their scales."""
    result = compress_model(
        source=cnn.path,
        kind=ModelKind.KERAS,
        staging=staging,
        options=parse_options({"quantization": "int8", "int8_io": True}),
        evaluation=data_files.evaluation,
    )
    assert result.signature["inputs"][0]["datatype"] == "INT8"
    assert result.signature["outputs"][0]["datatype"] == "INT8"
    assert result.report.accuracy_drop_points is not None
    assert result.report.accuracy_drop_points <= 1.0
    (step,) = result.report.steps
    assert step.outcome["calibration_samples"] == 200


def test_every_mode_keeps_to_builtin_ops():
    """No mode ever allows SELECT_TF_OPS; int8 restricts to the int8 builtins."""
    tf = _tf.tensorflow()
    for mode in Quantization:
        converter = tf.lite.TFLiteConverter.from_concrete_functions([_identity(tf)])
        configure(converter, mode=mode, calibration=_inputs())
        ops = set(converter.target_spec.supported_ops)
        assert tf.lite.OpsSet.SELECT_TF_OPS not in ops
        if mode is Quantization.INT8:
            assert ops == {tf.lite.OpsSet.TFLITE_BUILTINS_INT8}


def test_int8_without_calibration_is_refused():
    """The converter setup refuses int8 when it has no inputs to calibrate on."""
    tf = _tf.tensorflow()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([_identity(tf)])
    with pytest.raises(InvalidOptions, match="calibration"):
        configure(converter, mode=Quantization.INT8, calibration=None)


def test_float_conversions_must_agree_more_than_quantized_ones():
    """Float modes are held to a stricter agreement than lossy ones, all far above chance."""
    assert MIN_AGREEMENT[Quantization.NONE] >= MIN_AGREEMENT[Quantization.INT8] >= 0.5
    assert set(MIN_AGREEMENT) == set(Quantization)


def _identity(tf):
    return tf.function(lambda x: x * 1.0).get_concrete_function(
        tf.TensorSpec([None, 2], tf.float32)
    )


def _inputs():
    import numpy as np

    return np.zeros((2, 2), np.float32)
