import numpy as np
import pytest

from compress import _tf
from compress.clip import clip
from compress.formats import ModelKind
from compress.options import ClipOptions, parse_options
from compress.pipeline import compress_model


def test_each_kernel_is_clamped_to_its_percentile_and_zeros_stay(cnn):
    """After clipping at p90 no kernel weight exceeds its bound, and zeros remain zeros."""
    keras = _tf.keras()
    model = keras.models.clone_model(cnn.model)
    weights = cnn.model.get_weights()
    weights[0][..., :4] = 0.0
    model.set_weights(weights)
    bounds = [np.percentile(np.abs(w), 90) for w in model.get_weights() if w.ndim >= 2]
    outcome = clip(model, options=ClipOptions(percentile=90))
    assert outcome["clipped_share"] == pytest.approx(0.1, abs=0.01)
    kernels = [w for w in model.get_weights() if w.ndim >= 2]
    for kernel, bound in zip(kernels, bounds, strict=True):
        assert np.abs(kernel).max() <= bound + 1e-7
    assert np.all(kernels[0][..., :4] == 0.0)


def test_clipping_before_int8_is_recorded_and_costs_little(cnn, data_files, staging):
    """Clip then int8: both steps are in the report, in that order, within half a point."""
    result = compress_model(
        source=cnn.path,
        kind=ModelKind.KERAS,
        staging=staging,
        options=parse_options({"clip": {"percentile": 99.9}, "quantization": "int8"}),
        evaluation=data_files.evaluation,
    )
    report = result.report
    assert [step.name for step in report.steps] == ["clip", "quantize"]
    assert report.accuracy_drop_points is not None
    assert report.accuracy_drop_points <= 0.5
