import numpy as np

from compress._weights import kernels, parameter_counts


def test_kernels_are_the_trainable_matrices(cnn):
    """Convolution and dense kernels are selected; biases are not."""
    selected = kernels(cnn.model)
    assert len(selected) == 4
    assert all(len(weight.shape) >= 2 for weight in selected)


def test_parameter_counts_include_zeros(cnn):
    """Counts match Keras' own, and zeros are counted exactly (fresh biases are all zero)."""
    total, zeros = parameter_counts(cnn.model.weights)
    assert total == cnn.model.count_params()
    assert zeros == sum(int(np.sum(w.numpy() == 0)) for w in cnn.model.weights)
