import json
import zipfile

import pytest

from compress import _tf
from compress.errors import UnsafeModel, UnsupportedFormat
from compress.screening import screen_keras_config, screen_keras_directory, screen_saved_model
from tests.unit.compress.conftest import save_hostile_saved_model, save_lambda_model


def keras_config(path):
    """The parsed config.json of a .keras file."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json"))


def test_builtin_layers_of_every_family_pass(tmp_path):
    """A model using convolutions, normalisation, recurrence and attention passes screening."""
    keras = _tf.keras()
    layers = keras.layers
    inputs = keras.Input((6, 6, 3))
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(4, 3, padding="same", kernel_regularizer=keras.regularizers.L2(0.01))(x)
    x = layers.BatchNormalization()(x)
    x = layers.DepthwiseConv2D(3, padding="same", activation="gelu")(x)
    x = layers.Reshape((36, 4))(x)
    x = layers.LSTM(4, return_sequences=True)(x)
    x = layers.MultiHeadAttention(2, 4)(x, x)
    x = layers.GlobalAveragePooling1D()(x)
    outputs = layers.Dense(3, activation="softmax")(layers.Dropout(0.1)(x))
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.9)),
        loss=keras.losses.sparse_categorical_crossentropy,
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    model.save(tmp_path / "m.keras")
    screen_keras_config(keras_config(tmp_path / "m.keras"))


def test_lambda_layer_is_refused(tmp_path):
    """A Lambda layer carries Python bytecode: refused by name."""
    path = save_lambda_model(tmp_path / "lambda.keras")
    with pytest.raises(UnsafeModel, match="Lambda layers are not accepted"):
        screen_keras_config(keras_config(path))


def test_custom_registered_layer_is_refused(tmp_path):
    """A layer registered by the uploader's own code is a custom object: refused."""
    keras = _tf.keras()

    @keras.saving.register_keras_serializable(package="uploader")
    class Sneaky(keras.layers.Layer):
        def call(self, inputs):
            return inputs

    model = keras.Sequential([keras.Input((3,)), Sneaky(), keras.layers.Dense(2)])
    model.save(tmp_path / "custom.keras")
    with pytest.raises(UnsafeModel, match="custom or unknown Keras object 'Sneaky'"):
        screen_keras_config(keras_config(tmp_path / "custom.keras"))


def test_custom_activation_function_is_refused(tmp_path):
    """A Python function used as an activation is refused; built-in names are not."""
    keras = _tf.keras()

    def doubled(x):
        return x * 2

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation=doubled)])
    model.save(tmp_path / "fn.keras")
    with pytest.raises(UnsafeModel, match="custom function 'doubled'"):
        screen_keras_config(keras_config(tmp_path / "fn.keras"))


@pytest.mark.parametrize(
    "obj",
    [
        {"module": "os", "class_name": "system", "config": {}},
        {"module": "keras.layers", "class_name": "TFSMLayer", "config": {}},
        {"module": "keras.layers", "class_name": "Dense", "registered_name": "evil>Dense"},
        {"module": "builtins", "class_name": "function", "config": "eval"},
        {"module": None, "class_name": "__typespec__", "config": {}},
        {"module": "keras.layers", "class_name": ["Dense"]},
    ],
)
def test_unknown_or_disguised_objects_anywhere_are_refused(obj):
    """Objects outside the allow-list are refused wherever they sit in the config."""
    config = {
        "module": "keras",
        "class_name": "Sequential",
        "config": {
            "layers": [{"module": "keras.layers", "class_name": "Dense", "config": {"x": obj}}]
        },
    }
    with pytest.raises(UnsafeModel):
        screen_keras_config(config)


def test_root_compile_config_is_not_screened():
    """The root compile_config is never deserialised (compile=False), so it is skipped."""
    config = {
        "module": "keras",
        "class_name": "Sequential",
        "config": {"layers": []},
        "compile_config": {
            "loss": {"module": "builtins", "class_name": "function", "config": "mine"}
        },
    }
    screen_keras_config(config)


def test_nested_compile_config_is_screened():
    """A nested model's compile_config would be compiled by Keras, so it is screened."""
    inner = {
        "module": "keras",
        "class_name": "Sequential",
        "config": {"layers": []},
        "compile_config": {
            "loss": {"module": "builtins", "class_name": "function", "config": "mine"}
        },
    }
    config = {"module": "keras", "class_name": "Sequential", "config": {"layers": [inner]}}
    with pytest.raises(UnsafeModel, match="custom function 'mine'"):
        screen_keras_config(config)


def test_config_that_is_not_a_model_is_refused():
    """A config.json without a top-level class is not a Keras model."""
    with pytest.raises(UnsupportedFormat, match="does not describe a model"):
        screen_keras_config([1, 2, 3])


def test_keras_directory_without_config_is_refused(tmp_path):
    """An unpacked .keras without config.json is refused with the fix."""
    with pytest.raises(UnsupportedFormat, match=r"no config\.json"):
        screen_keras_directory(tmp_path)


def test_deeply_nested_config_is_refused_not_crashed(tmp_path):
    """JSON nested deeper than the parser's recursion limit is refused cleanly."""
    (tmp_path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UnsupportedFormat, match="not valid JSON"):
        screen_keras_directory(tmp_path)


def test_model_export_passes_graph_screening(cnn_export):
    """A Keras model.export() SavedModel uses allowed ops only (saver ops inside the saver)."""
    screen_saved_model(cnn_export)


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ("read_file", "op 'ReadFile', which reads or writes files"),
        ("write_file", "op 'WriteFile', which reads or writes files"),
        ("py_function", "op 'EagerPyFunc', which runs Python code"),
        ("numpy_function", "op 'PyFunc', which runs Python code"),
        ("print", "which formats or prints strings"),
        ("save_v2", "saver op 'SaveV2' outside the saver"),
    ],
)
def test_hostile_savedmodel_ops_are_refused(tmp_path, behaviour, message):
    """File, Python, printing and saver ops in a serving function are refused by name."""
    directory = save_hostile_saved_model(tmp_path / "model", behaviour)
    with pytest.raises(UnsafeModel, match=message):
        screen_saved_model(directory)


def test_harmless_savedmodel_of_a_plain_module_passes(tmp_path):
    """A tf.Module SavedModel doing plain math passes: the checks are about ops, not origin."""
    screen_saved_model(save_hostile_saved_model(tmp_path / "model", "none"))


def test_corrupt_saved_model_pb_is_refused(tmp_path):
    """Bytes that do not parse as a SavedModel protobuf are refused."""
    (tmp_path / "saved_model.pb").write_bytes(b"\xff" * 64)
    with pytest.raises(UnsupportedFormat, match="not a valid SavedModel"):
        screen_saved_model(tmp_path)
