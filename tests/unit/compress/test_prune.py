import numpy as np
import pytest

from compress import _tf
from compress._train import FitSettings
from compress.evaluate import OutputKind
from compress.formats import ModelKind
from compress.options import PruneOptions, Task, parse_options
from compress.pipeline import compress_model
from compress.prune import magnitude_mask, prune, schedule


def test_mask_zeroes_exactly_the_smallest_magnitudes():
    """The mask removes round(sparsity * size) entries, smallest |w| first, sign ignored."""
    values = np.array([[0.5, -0.1, 3.0], [-2.0, 0.05, 1.0]])
    mask = magnitude_mask(values, 0.5)
    assert mask.tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 1.0]]


def test_schedule_ramps_up_and_holds_the_target():
    """Sparsity rises over the ramp epochs, reaches the target at the last of them, then holds."""
    steps = [schedule(0.8, epoch=epoch, ramp=5) for epoch in range(8)]
    assert steps == sorted(steps)
    assert steps[0] > 0.3
    assert steps[4:] == [0.8] * 4


def test_without_training_data_pruning_is_one_shot_and_exact(cnn):
    """With no data, every kernel is pruned at once to the exact target; biases are kept."""
    keras = _tf.keras()
    model = keras.models.clone_model(cnn.model)
    model.set_weights(cnn.model.get_weights())
    settings = FitSettings(OutputKind(Task.CLASSIFICATION, probabilities=True), 32, 0)
    outcome = prune(model, options=PruneOptions(sparsity=0.5), training=None, settings=settings)
    assert outcome["fine_tune_epochs"] == 0
    assert outcome["pruned_tensors"] == 4
    assert outcome["achieved_sparsity"] == pytest.approx(0.5, abs=1e-4)
    for layer, original in zip(model.layers, cnn.model.layers, strict=True):
        if layer.weights:
            kernel, bias = layer.get_weights()
            assert np.mean(kernel == 0) == pytest.approx(0.5, abs=1e-3)
            np.testing.assert_array_equal(bias, original.get_weights()[1])


def test_pruning_to_80_percent_keeps_accuracy_and_shrinks_the_packed_model(
    cnn, data_files, staging
):
    """80% sparsity with fine-tuning loses at most 1.5 points and packs >= 3x smaller with zstd."""
    result = compress_model(
        source=cnn.path,
        kind=ModelKind.KERAS,
        staging=staging,
        options=parse_options({"prune": {"sparsity": 0.8, "epochs": 15}}),
        training=data_files.training,
        evaluation=data_files.evaluation,
    )
    report = result.report
    assert report.accuracy_drop_points is not None
    assert report.accuracy_drop_points <= 1.5
    assert report.zstd_ratio >= 3.0
    assert report.result.sparsity == pytest.approx(0.8, abs=0.01)
    (step,) = report.steps
    assert step.name == "prune"
    # The masks held through fine-tuning: the served kernels are exactly 80% zeros.
    assert step.outcome["achieved_sparsity"] == pytest.approx(0.8, abs=1e-4)
    assert step.outcome["fine_tune_epochs"] == 15
    assert step.settings == {"sparsity": 0.8, "epochs": 15, "learning_rate": 0.001}
