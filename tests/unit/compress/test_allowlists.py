import pytest

from compress import _tf
from compress.allowlists import (
    GRAPH_OPS,
    KERAS_FUNCTIONS,
    KERAS_LAYERS,
    KERAS_OBJECTS,
    REFUSED_KERAS,
    REFUSED_OPS,
    SAVER_OPS,
)


def test_every_allowed_layer_is_a_keras_builtin():
    """Each allowed layer name exists in keras.layers (a typo would silently refuse it)."""
    layers = _tf.keras().layers
    missing = sorted(name for name in KERAS_LAYERS if not hasattr(layers, name))
    assert missing == []


@pytest.mark.parametrize(
    "module", ["initializers", "regularizers", "constraints", "optimizers", "losses", "metrics"]
)
def test_every_allowed_object_is_a_keras_builtin(module):
    """Each allowed initializer, optimizer, loss... exists in its public Keras module."""
    public = getattr(_tf.keras(), module)
    missing = sorted(name for name in KERAS_OBJECTS[f"keras.{module}"] if not hasattr(public, name))
    assert missing == []


def test_allowed_functions_resolve_in_keras():
    """Each allowed function name is a Keras activation, loss or metric."""
    keras = _tf.keras()
    modules = (keras.activations, keras.losses, keras.metrics)
    missing = sorted(
        name for name in KERAS_FUNCTIONS if not any(hasattr(module, name) for module in modules)
    )
    assert missing == []


def test_refused_keras_classes_are_never_allowed():
    """Lambda and foreign-code wrappers are absent from every allow-list."""
    for allowed in KERAS_OBJECTS.values():
        assert not set(REFUSED_KERAS) & allowed


def test_every_allowed_op_is_a_real_tensorflow_op():
    """Each allowed graph op is registered in TensorFlow (a typo would refuse good models)."""
    raw_ops = _tf.tensorflow().raw_ops
    missing = sorted(name for name in GRAPH_OPS | SAVER_OPS if not hasattr(raw_ops, name))
    assert missing == []


def test_dangerous_ops_are_outside_the_allow_list():
    """No file, Python, printing or network op is allowed anywhere, saver included."""
    assert not set(REFUSED_OPS) & GRAPH_OPS
    for op in ("ReadFile", "WriteFile", "MatchingFiles", "PyFunc", "EagerPyFunc", "PrintV2"):
        assert op in REFUSED_OPS


def test_saver_ops_are_kept_apart_from_serving_ops():
    """Saver file ops are a separate list, so serving functions never get them."""
    assert not SAVER_OPS & GRAPH_OPS
