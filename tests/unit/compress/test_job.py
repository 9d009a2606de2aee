import numpy as np
import pytest

from compress.job import _check_inputs, _verdict
from compress.options import CompressOptions
from compress.report import ModelFigures
from compress.source import Source


def _figures(accuracy=None, mse=None):
    return ModelFigures(
        tflite_bytes=1,
        zstd_bytes=1,
        parameters=1,
        sparsity=0.0,
        latency_us=1.0,
        accuracy=accuracy,
        mse=mse,
    )


def test_accuracy_drop_is_in_points_and_judged_against_the_bound():
    """98% to 96.5% is a 1.5-point drop; with a 1-point bound it fails, saying both."""
    drop, increase, reasons = _verdict(
        CompressOptions(max_accuracy_drop=1.0),
        before=_figures(accuracy=0.98),
        after=_figures(accuracy=0.965),
    )
    assert drop == pytest.approx(1.5)
    assert increase is None
    assert reasons == ["accuracy dropped 1.50 points, more than the allowed 1"]


def test_mse_increase_is_relative_and_judged_against_its_bound():
    """MSE from 0.10 to 0.12 is +20%; a 10% bound fails."""
    drop, increase, reasons = _verdict(
        CompressOptions(max_mse_increase=0.1), before=_figures(mse=0.10), after=_figures(mse=0.12)
    )
    assert drop is None
    assert increase == pytest.approx(0.2)
    assert reasons == ["MSE rose by 20.0%, more than the allowed 10.0%"]


def test_no_bound_means_no_failure():
    """Without bounds the figures are reported and nothing fails."""
    _, _, reasons = _verdict(
        CompressOptions(), before=_figures(accuracy=0.9), after=_figures(accuracy=0.1)
    )
    assert reasons == []


def test_check_inputs_are_random_but_seeded_without_data():
    """With no data file, conversion checks use seeded random inputs of the model's shape."""
    source = Source(
        kind="keras",  # type: ignore[arg-type]
        predict=lambda x: x,
        input_shape=(-1, 5, -1),
        float_input=True,
        parameters=0,
        zero_parameters=0,
    )
    first = _check_inputs(source, None, seed=3)
    assert first.shape == (64, 5, 8)
    assert first.dtype == np.float32
    np.testing.assert_array_equal(first, _check_inputs(source, None, seed=3))
