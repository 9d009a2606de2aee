import pytest

from compress import _tf
from compress.cut import chain_layers
from compress.errors import InvalidOptions
from compress.formats import ModelKind
from compress.options import parse_options
from compress.pipeline import compress_model


def test_sequential_and_functional_chains_are_chains(cnn, mlp_chain):
    """A Sequential model and a functional model feeding layer to layer are both chains."""
    assert chain_layers(cnn.model) == list(cnn.model.layers)
    assert chain_layers(mlp_chain.model) == list(mlp_chain.model.layers)


def test_a_model_with_a_branch_is_not_a_chain():
    """A residual connection makes the model a graph, not a chain."""
    keras = _tf.keras()
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(4)(inputs)
    outputs = keras.layers.Add()([inputs, hidden])
    assert chain_layers(keras.Model(inputs, outputs)) is None


def test_cutting_removes_the_cheapest_layers_and_fine_tunes(mlp_chain, data_files, staging):
    """Two same-width hidden layers go; the report names them and the accuracy stays close."""
    result = compress_model(
        source=mlp_chain.path,
        kind=ModelKind.KERAS,
        staging=staging,
        options=parse_options({"cut": {"max_layers": 2}}),
        training=data_files.training,
        evaluation=data_files.evaluation,
    )
    report = result.report
    (step,) = report.steps
    assert step.name == "cut"
    removed = step.outcome["removed_layers"]
    same_width = {layer.name for layer in mlp_chain.model.layers[3:6]}
    assert len(removed) == 2
    assert {entry["layer"] for entry in removed} <= same_width
    assert all(0.0 <= entry["accuracy_before_fine_tune"] <= 1.0 for entry in removed)
    assert step.outcome["parameters_removed"] == 2 * (32 * 32 + 32)
    assert report.result.parameters == report.original.parameters - 2 * (32 * 32 + 32)
    assert step.outcome["fine_tune_epochs"] == 10
    assert report.accuracy_drop_points is not None
    assert report.accuracy_drop_points <= 2.0


def test_a_model_without_candidates_is_refused(cnn, data_files, staging):
    """The CNN has no shape-preserving layer with weights: cutting is refused, not faked."""
    with pytest.raises(InvalidOptions, match="no shape-preserving layer"):
        compress_model(
            source=cnn.path,
            kind=ModelKind.KERAS,
            staging=staging,
            options=parse_options({"cut": {"max_layers": 1}}),
            evaluation=data_files.evaluation,
        )


def test_a_branching_model_is_refused(tmp_path, data_files, staging):
    """Cutting a graph model is refused with the reason."""
    keras = _tf.keras()
    inputs = keras.Input((8, 8, 1))
    flat = keras.layers.Flatten()(inputs)
    hidden = keras.layers.Dense(64)(flat)
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Add()([flat, hidden]))
    keras.Model(inputs, outputs).save(tmp_path / "residual.keras")
    with pytest.raises(InvalidOptions, match="single chain"):
        compress_model(
            source=tmp_path / "residual.keras",
            kind=ModelKind.KERAS,
            staging=staging,
            options=parse_options({"cut": {"max_layers": 1}}),
            evaluation=data_files.evaluation,
        )
