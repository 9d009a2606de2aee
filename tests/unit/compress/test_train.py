import numpy as np

from compress import _tf
from compress._train import FitSettings, fine_tune, loss_for, training_targets
from compress.data import Dataset
from compress.evaluate import OutputKind
from compress.options import Task


def test_losses_follow_the_output_kind():
    """Cross-entropy on probabilities or logits for classification, MSE for regression."""
    probabilities = loss_for(OutputKind(Task.CLASSIFICATION, probabilities=True))
    logits = loss_for(OutputKind(Task.CLASSIFICATION, probabilities=False))
    binary = loss_for(OutputKind(Task.CLASSIFICATION, probabilities=True, binary=True))
    regression = loss_for(OutputKind(Task.REGRESSION))
    assert type(probabilities).__name__ == "SparseCategoricalCrossentropy"
    assert not probabilities.get_config()["from_logits"]
    assert logits.get_config()["from_logits"]
    assert type(binary).__name__ == "BinaryCrossentropy"
    assert type(regression).__name__ == "MeanSquaredError"


def test_targets_take_the_form_the_loss_expects():
    """One-hot labels become indices; binary labels a float column; regression floats."""
    one_hot = np.eye(3)[[2, 0]]
    assert training_targets(one_hot, OutputKind(Task.CLASSIFICATION)).tolist() == [2, 0]
    binary = training_targets(np.array([0, 1]), OutputKind(Task.CLASSIFICATION, binary=True))
    assert binary.shape == (2, 1)
    assert training_targets(np.array([1, 2]), OutputKind(Task.REGRESSION)).dtype == np.float32


def test_nothing_trains_without_labelled_data():
    """Fine-tuning without labels, or with zero epochs, runs nothing and says so."""
    keras = _tf.keras()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    before = [w.copy() for w in model.get_weights()]
    settings = FitSettings(OutputKind(Task.CLASSIFICATION), 8, 0)
    unlabelled = Dataset(np.zeros((4, 2), np.float32))
    assert (
        fine_tune(model, training=unlabelled, settings=settings, epochs=3, learning_rate=0.1) == 0
    )
    labelled = Dataset(np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1]))
    assert fine_tune(model, training=labelled, settings=settings, epochs=0, learning_rate=0.1) == 0
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
