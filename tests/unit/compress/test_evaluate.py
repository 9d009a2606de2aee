import numpy as np
import pytest

from compress.errors import InvalidData
from compress.evaluate import (
    OutputKind,
    agreement,
    class_labels,
    infer_output_kind,
    predicted_classes,
    score,
)
from compress.options import Task

PROBABILITIES = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
LOGITS = np.array([[2.0, -1.0, 0.5], [-3.0, 0.0, 4.0]], np.float32)


def test_integer_labels_that_fit_the_outputs_mean_classification():
    """Class indices within the output width make an auto task classification."""
    kind = infer_output_kind(requested=Task.AUTO, outputs=PROBABILITIES, labels=np.array([0, 2]))
    assert kind == OutputKind(Task.CLASSIFICATION, probabilities=True, binary=False)


def test_logits_are_told_from_probabilities():
    """Rows that do not sum to one are logits."""
    kind = infer_output_kind(requested=Task.AUTO, outputs=LOGITS, labels=np.array([0, 2]))
    assert kind.task is Task.CLASSIFICATION
    assert not kind.probabilities


def test_float_targets_mean_regression():
    """Non-integral targets make an auto task regression."""
    outputs = np.array([[0.3], [1.7]], np.float32)
    kind = infer_output_kind(requested=Task.AUTO, outputs=outputs, labels=np.array([0.25, 1.5]))
    assert kind.task is Task.REGRESSION


def test_single_unit_with_binary_labels_is_a_binary_classifier():
    """A sigmoid unit with 0/1 labels is classified by threshold."""
    outputs = np.array([[0.2], [0.9]], np.float32)
    kind = infer_output_kind(requested=Task.AUTO, outputs=outputs, labels=np.array([0, 1]))
    assert kind == OutputKind(Task.CLASSIFICATION, probabilities=True, binary=True)
    assert predicted_classes(outputs, kind).tolist() == [0, 1]


def test_without_labels_width_decides():
    """With no labels, several output units mean classification, one means regression."""
    assert (
        infer_output_kind(requested=Task.AUTO, outputs=LOGITS, labels=None).task
        is Task.CLASSIFICATION
    )
    single = np.array([[0.5], [3.0]], np.float32)
    assert (
        infer_output_kind(requested=Task.AUTO, outputs=single, labels=None).task is Task.REGRESSION
    )


def test_requested_task_wins_over_inference():
    """An explicit task in the options is kept whatever the labels look like."""
    kind = infer_output_kind(
        requested=Task.REGRESSION, outputs=PROBABILITIES, labels=np.array([0, 1])
    )
    assert kind.task is Task.REGRESSION


def test_one_hot_labels_become_indices():
    """One-hot rows are read as class indices."""
    assert class_labels(np.eye(3)[[2, 0]]).tolist() == [2, 0]


def test_accuracy_counts_matching_classes():
    """Accuracy is the share of rows whose argmax is the label."""
    kind = OutputKind(Task.CLASSIFICATION, probabilities=True)
    assert score(PROBABILITIES, np.array([0, 1]), kind=kind).accuracy == 0.5


def test_mse_of_regression_outputs():
    """MSE is the mean squared difference to the targets."""
    result = score(
        np.array([[1.0], [3.0]], np.float32), np.array([0.0, 1.0]), kind=OutputKind(Task.REGRESSION)
    )
    assert result.mse == pytest.approx(2.5)
    assert result.accuracy is None


def test_regression_targets_of_the_wrong_shape_are_refused():
    """Targets that cannot line up with the outputs are a data error."""
    with pytest.raises(InvalidData, match="shape"):
        score(np.ones((2, 3), np.float32), np.ones((2, 2)), kind=OutputKind(Task.REGRESSION))


def test_agreement_compares_predicted_classes():
    """Classification agreement is the share of rows with the same predicted class."""
    kind = OutputKind(Task.CLASSIFICATION)
    other = np.array([[0.7, 0.2, 0.1], [0.8, 0.1, 0.1]], np.float32)
    assert agreement(PROBABILITIES, other, kind=kind) == 0.5


def test_regression_agreement_is_closeness_relative_to_spread():
    """Regression outputs agree when within a tenth of the reference spread."""
    reference = np.array([[0.0], [10.0], [20.0]], np.float32)
    close = reference + 0.5
    far = reference + np.array([[0.5], [0.5], [5.0]], np.float32)
    kind = OutputKind(Task.REGRESSION)
    assert agreement(reference, close, kind=kind) == 1.0
    assert agreement(reference, far, kind=kind) == pytest.approx(2 / 3)
