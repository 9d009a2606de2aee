import subprocess
import sys

import pytest

from compress import _tf
from compress.errors import RuntimeUnavailable


def test_missing_runtime_raises_with_the_install_hint():
    """A missing heavy dependency becomes RuntimeUnavailable naming the extra to install."""
    with pytest.raises(RuntimeUnavailable) as caught:
        _tf._import("tensorflow_that_is_not_installed.lite")
    assert "tensorflow_that_is_not_installed" in caught.value.message
    assert "sealserve[compress]" in caught.value.message


def test_keras_runs_on_the_tensorflow_backend():
    """The converter needs TensorFlow graphs, so Keras must use the TensorFlow backend."""
    assert _tf.keras().backend.backend() == "tensorflow"


def test_litert_pieces_load():
    """LiteRT's interpreter and flatbuffer schema are importable through the helpers."""
    assert _tf.litert_interpreter().__name__ == "Interpreter"
    assert hasattr(_tf.litert_schema(), "BuiltinOperator")


def test_importing_the_package_loads_no_heavy_runtime():
    """The gateway can import compress without TensorFlow, Keras or LiteRT being loaded."""
    code = (
        "import sys, compress\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'ai_edge_litert', 'sklearn')]\n"
        "siblings = [m for m in sys.modules if m.split('.')[0] in "
        "('auth', 'storage', 'server', 'protos')]\n"
        "print(heavy, siblings)\n"
    )
    result = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[] []"
