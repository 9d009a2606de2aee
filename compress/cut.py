"""Layer cutting: remove the layers whose removal costs least, then fine-tune.

Only a model that is one chain of layers (a ``Sequential``, or a functional
model where each layer feeds the next) can lose a layer without rewiring a
graph, and only a layer whose output has its input's shape can go without
breaking its neighbours. Among those, only layers holding weights are
candidates: cutting aims at size, and a weightless layer (dropout, an
activation) saves nothing.

Greedy: at each of up to ``max_layers`` rounds, every remaining candidate is
removed in turn, the model scored on the evaluation data, and the cheapest
removal kept. Scoring on evaluation data is what the option asks for; it
means the report's figures after cutting are not independent of the choice,
which the report makes visible by listing each round's score. Fine-tuning on the
training data (when given) then lets the neighbours absorb the loss.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from compress import _tf
from compress._train import FitSettings, fine_tune
from compress.errors import InvalidData, InvalidOptions
from compress.evaluate import score
from compress.options import Task
from compress.source import keras_predictor

if TYPE_CHECKING:
    from compress._tf import KerasModel
    from compress.data import Array, Dataset
    from compress.evaluate import OutputKind
    from compress.options import CutOptions
    from compress.report import JsonValue


def _histories(node: object) -> list[str]:
    """Names of the layers whose tensors a serialised call node consumes."""
    found = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("class_name") == "__keras_tensor__":
                found.append(str(item["config"]["keras_history"][0]))
            else:
                stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return found


def _one_endpoint(value: object) -> bool:
    """Whether a functional config's ``input_layers``/``output_layers`` names one tensor.

    Keras writes a single endpoint as ``[name, node, tensor]`` and several as a
    list of such triples.
    """
    if not isinstance(value, (list, tuple)) or not value:
        return False
    return isinstance(value[0], str) or len(value) == 1


def chain_layers(model: KerasModel) -> list[Any] | None:
    """The model's layers in order if it is a single chain, else ``None``."""
    keras = _tf.keras()
    if isinstance(model, keras.Sequential):
        return list(model.layers)
    config = model.get_config()
    entries = config.get("layers", [])
    if not (
        _one_endpoint(config.get("input_layers")) and _one_endpoint(config.get("output_layers"))
    ):
        return None
    for previous, entry in itertools.pairwise(entries):
        nodes = entry.get("inbound_nodes", [])
        if len(nodes) != 1 or _histories(nodes[0]) != [previous["name"]]:
            return None
    return list(model.layers)


def _rebuild(model: KerasModel, layers: list[Any], *, drop: set[int]) -> KerasModel:
    """A new chain model from fresh copies of ``layers`` minus ``drop``, weights copied."""
    keras = _tf.keras()
    spec = model.inputs[0]
    inputs = keras.Input(batch_shape=tuple(spec.shape), dtype=spec.dtype)
    tensor = inputs
    for index, layer in enumerate(layers):
        if index in drop or isinstance(layer, keras.layers.InputLayer):
            continue
        copy = layer.__class__.from_config(layer.get_config())
        tensor = copy(tensor)
        copy.set_weights(layer.get_weights())
    return keras.Model(inputs, tensor, name=model.name)


def _quality(model: KerasModel, *, x: Array, y: Array, kind: OutputKind) -> float:
    """Higher is better: accuracy, or minus the MSE."""
    result = score(keras_predictor(model)(x), y, kind=kind)
    if kind.task is Task.CLASSIFICATION:
        return result.accuracy or 0.0
    return -(result.mse or 0.0)


def cut(
    model: KerasModel,
    *,
    options: CutOptions,
    evaluation: Dataset | None,
    training: Dataset | None,
    settings: FitSettings,
) -> tuple[KerasModel, dict[str, JsonValue]]:
    """Return a copy of ``model`` with up to ``max_layers`` layers removed, and the outcome."""
    if evaluation is None or evaluation.y is None:
        raise InvalidData("layer cutting needs evaluation data with labels to choose layers")
    x, y, kind = evaluation.x, evaluation.y, settings.kind
    metric = "accuracy" if kind.task is Task.CLASSIFICATION else "mse"
    layers = chain_layers(model)
    if layers is None:
        raise InvalidOptions("layer cutting needs a model that is a single chain of layers")
    candidates = [
        index
        for index, layer in enumerate(layers)
        if layer.weights and tuple(layer.input.shape) == tuple(layer.output.shape)
    ]
    if not candidates:
        raise InvalidOptions("the model has no shape-preserving layer with weights to cut")
    dropped: set[int] = set()
    rounds: list[JsonValue] = []
    for _ in range(min(options.max_layers, len(candidates))):
        scored = [
            (_quality(_rebuild(model, layers, drop=dropped | {index}), x=x, y=y, kind=kind), index)
            for index in candidates
            if index not in dropped
        ]
        best_quality, best = max(scored)
        dropped.add(best)
        rounds.append({"layer": layers[best].name, f"{metric}_before_fine_tune": abs(best_quality)})
    result = _rebuild(model, layers, drop=dropped)
    epochs = fine_tune(
        result,
        training=training,
        settings=settings,
        epochs=options.epochs,
        learning_rate=options.learning_rate,
    )
    return result, {
        "removed_layers": rounds,
        "parameters_removed": int(model.count_params() - result.count_params()),
        "fine_tune_epochs": epochs,
    }
