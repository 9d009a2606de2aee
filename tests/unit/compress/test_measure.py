import numpy as np
import pytest

from compress.data import Dataset
from compress.evaluate import OutputKind
from compress.measure import measure, zstd_size
from compress.options import Task


def test_zeros_pack_far_smaller_than_noise():
    """Zero runs pack to almost nothing and random bytes barely shrink: the figure shows sparsity."""
    noise = np.random.default_rng(0).bytes(100_000)
    assert zstd_size(bytes(100_000)) < 100
    assert zstd_size(noise) > 99_000


def test_figures_come_from_the_served_bytes(cnn_tflite, cnn, digits):
    """Size, packed size, latency and accuracy are measured on the TFLite model in LiteRT."""
    evaluation = Dataset(digits.x_test, digits.y_test)
    measured = measure(
        cnn_tflite,
        parameters=(1000, 250),
        evaluation=evaluation,
        kind=OutputKind(Task.CLASSIFICATION, probabilities=True),
        latency_input=digits.x_test[0],
    )
    figures = measured.figures
    assert figures.tflite_bytes == len(cnn_tflite)
    assert 0 < figures.zstd_bytes < len(cnn_tflite)
    assert figures.sparsity == 0.25
    assert figures.latency_us > 0
    assert figures.accuracy == pytest.approx(cnn.accuracy, abs=0.003)
    assert measured.outputs is not None
    assert measured.outputs.shape == (len(digits.x_test), 10)


def test_without_evaluation_data_there_is_no_metric(cnn_tflite, digits):
    """No evaluation file: sizes and latency only."""
    measured = measure(
        cnn_tflite,
        parameters=(10, 0),
        evaluation=None,
        kind=OutputKind(Task.CLASSIFICATION),
        latency_input=digits.x_test[0],
    )
    assert measured.figures.accuracy is None
    assert measured.figures.mse is None
    assert measured.outputs is None
