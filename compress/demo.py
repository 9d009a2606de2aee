"""Build the demo model that ships in ``server/demo``: a digits classifier in TFLite.

Usage::

    python -m compress.demo [--out server/demo/digits.tflite]

Why it exists: a fresh install needs one real model to serve, and the tests
need one that runs through the same LiteRT path as a tenant's upload, built
from data that ships with scikit-learn (no download) in a few seconds.

What it guarantees when it exits 0:

- the ``.tflite`` uses TFLite builtin ops only and float32 tensors, with one
  input ``input`` of shape ``[-1, 64]`` (pixels scaled to [0, 1]) and one
  output ``probabilities`` of shape ``[-1, 10]`` (softmax), batch dynamic;
- LiteRT's accuracy on the held-out split is above 90% and within half a
  point of the Keras model it was converted from;
- a README next to the model records how it was built, its accuracy, and its
  signature and tensor names.

Training is seeded and uses deterministic ops, so rebuilding with the same
TensorFlow on the same machine reproduces the file byte for byte. TensorFlow
and scikit-learn are imported inside functions only: importing ``compress``
must stay cheap and must work where the ``compress`` extra is absent.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

SEED = 0
TEST_SIZE = 0.25
EPOCHS = 40
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
SIGNATURE_KEY = "serving_default"
FEATURES = 64
CLASSES = 10
# Acceptance bounds for the converted model, as fractions.
MIN_ACCURACY = 0.90
MAX_ACCURACY_GAP = 0.005
DEFAULT_OUT = Path("server/demo/digits.tflite")

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Split:
    """The digits data, scaled to [0, 1] and split with ``random_state=0``."""

    x_train: FloatArray
    x_test: FloatArray
    y_train: IntArray
    y_test: IntArray


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output as LiteRT reports it.

    ``signature_name`` is the stable name callers should use; ``tensor_name``
    is whatever the converter called the graph tensor and changes between
    TensorFlow versions.
    """

    signature_name: str
    tensor_name: str
    dtype: str
    shape_signature: tuple[int, ...]


@dataclass(frozen=True)
class DemoReport:
    """What was built and how well it does; the README is written from it."""

    keras_accuracy: float
    tflite_accuracy: float
    epochs: int
    train_size: int
    test_size: int
    model_bytes: int
    sha256: str
    input: TensorInfo
    output: TensorInfo
    versions: dict[str, str]


def load_split() -> Split:
    """Load scikit-learn's bundled 8x8 digits and split them reproducibly.

    Pixels are integers 0..16; dividing by 16 puts features in [0, 1], the
    scaling every client of the demo model must apply too.
    """
    from sklearn.datasets import load_digits  # noqa: PLC0415 - optional extra
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    digits = load_digits()
    features = (digits.data / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=TEST_SIZE, random_state=SEED
    )
    return Split(x_train=x_train, x_test=x_test, y_train=y_train, y_test=y_test)


def _tensorflow() -> Any:
    """Import TensorFlow quietly and make its kernels deterministic."""
    # Level 3 hides C++ INFO/WARNING/ERROR lines that are noise here (oneDNN
    # notices, tf.data attribute mismatches); real failures still raise.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf  # noqa: PLC0415 - never at import time

    tf.config.experimental.enable_op_determinism()
    return tf


def train(split: Split, *, epochs: int = EPOCHS) -> Any:
    """Train the dense classifier; return a Keras model whose output is a dict.

    The dict output (``{"probabilities": ...}``) is what gives the converted
    model a meaningful signature output name instead of ``output_0``.
    """
    _tensorflow()
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(SEED)
    inputs = keras.Input(shape=(FEATURES,), name=INPUT_NAME, dtype="float32")
    hidden = keras.layers.Dense(64, activation="relu", name="hidden1")(inputs)
    hidden = keras.layers.Dense(32, activation="relu", name="hidden2")(hidden)
    probabilities = keras.layers.Dense(CLASSES, activation="softmax", name=OUTPUT_NAME)(hidden)
    model = keras.Model(inputs, probabilities, name="digits")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=1e-2),
        loss="sparse_categorical_crossentropy",
    )
    model.fit(split.x_train, split.y_train, epochs=epochs, batch_size=32, shuffle=True, verbose=0)
    # Same layers and weights, named output for serving.
    return keras.Model(inputs, {OUTPUT_NAME: probabilities}, name="digits")


def keras_accuracy(model: Any, split: Split) -> float:
    """Top-1 accuracy of the Keras model on the test split."""
    predicted = model.predict(split.x_test, verbose=0)[OUTPUT_NAME]
    return float(np.mean(np.argmax(predicted, axis=1) == split.y_test))


def convert(model: Any) -> bytes:
    """Convert to a float32 ``.tflite`` restricted to builtin ops.

    No optimizations: this is the uncompressed baseline, and builtin ops only
    is what the workers are allowed to serve.
    """
    tf = _tensorflow()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    # Keras prints a summary of the temporary SavedModel it exports; the
    # demo's own output says what matters.
    with contextlib.redirect_stdout(io.StringIO()):
        return bytes(converter.convert())


def _tensor_info(detail: dict[str, Any], signature_name: str) -> TensorInfo:
    return TensorInfo(
        signature_name=signature_name,
        tensor_name=str(detail["name"]),
        dtype=np.dtype(detail["dtype"]).name,
        shape_signature=tuple(int(d) for d in detail["shape_signature"]),
    )


def inspect_tflite(model_content: bytes, split: Split) -> tuple[float, TensorInfo, TensorInfo]:
    """Run the converted model with LiteRT; return accuracy and tensor names.

    The whole test split goes through the signature runner as one batch,
    which also proves the batch dimension is dynamic.
    """
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    interpreter = Interpreter(model_content=model_content)
    signature = interpreter.get_signature_list()[SIGNATURE_KEY]
    (input_detail,) = interpreter.get_input_details()
    (output_detail,) = interpreter.get_output_details()
    (input_name,) = signature["inputs"]
    (output_name,) = signature["outputs"]
    runner = interpreter.get_signature_runner(SIGNATURE_KEY)
    predicted = runner(**{input_name: split.x_test})[output_name]
    accuracy = float(np.mean(np.argmax(predicted, axis=1) == split.y_test))
    return (
        accuracy,
        _tensor_info(input_detail, input_name),
        _tensor_info(output_detail, output_name),
    )


def problems(report: DemoReport) -> list[str]:
    """Return every way the built model misses its guarantees (empty if none)."""
    found = []
    if report.tflite_accuracy <= MIN_ACCURACY:
        found.append(f"TFLite accuracy {report.tflite_accuracy:.2%} is not above 90%")
    if abs(report.tflite_accuracy - report.keras_accuracy) > MAX_ACCURACY_GAP:
        found.append("TFLite and Keras accuracy differ by more than 0.5 points")
    expected = {
        "input": (INPUT_NAME, "float32", (-1, FEATURES)),
        "output": (OUTPUT_NAME, "float32", (-1, CLASSES)),
    }
    for role, info in (("input", report.input), ("output", report.output)):
        actual = (info.signature_name, info.dtype, info.shape_signature)
        if actual != expected[role]:
            found.append(f"{role} is {actual}, expected {expected[role]}")
    return found


def build(out: Path, *, epochs: int = EPOCHS) -> DemoReport:
    """Train, convert and verify; write the model only if it checks out.

    Returns the report either way; the caller decides what a failed check
    means (``main`` exits non-zero). The README is written next to ``out``.
    """
    split = load_split()
    model = train(split, epochs=epochs)
    content = convert(model)
    tflite_accuracy, input_info, output_info = inspect_tflite(content, split)
    tf = _tensorflow()
    import ai_edge_litert  # noqa: PLC0415
    import keras  # noqa: PLC0415
    import sklearn  # noqa: PLC0415

    report = DemoReport(
        keras_accuracy=keras_accuracy(model, split),
        tflite_accuracy=tflite_accuracy,
        epochs=epochs,
        train_size=len(split.y_train),
        test_size=len(split.y_test),
        model_bytes=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        input=input_info,
        output=output_info,
        versions={
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "scikit-learn": sklearn.__version__,
            "ai-edge-litert": getattr(ai_edge_litert, "__version__", "unknown"),
        },
    )
    if not problems(report):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(content)
        (out.parent / "README.md").write_text(render_readme(report, model_name=out.name))
    return report


def render_readme(report: DemoReport, *, model_name: str) -> str:
    """Render the README that sits next to the model."""
    versions = ", ".join(f"{name} {version}" for name, version in report.versions.items())
    rows = "\n".join(
        f"| {role} | `{info.signature_name}` | `{info.tensor_name}` | {info.dtype} "
        f"| `{list(info.shape_signature)}` |"
        for role, info in (("input", report.input), ("output", report.output))
    )
    return f"""# Demo model: handwritten digits

`{model_name}` is a small float32 classifier for scikit-learn's bundled
8x8 digits, shipped so a fresh install has a real model to serve and the
tests have one that runs through LiteRT like a tenant's upload.
Generated by `python -m compress.demo`; do not edit this file by hand.

## How it was built

- Data: `sklearn.datasets.load_digits()`, pixels divided by 16 to [0, 1],
  `train_test_split(test_size={TEST_SIZE}, random_state={SEED})`:
  {report.train_size} training and {report.test_size} test images.
- Model: Dense(64, relu), Dense(32, relu), Dense(10, softmax); Adam,
  {report.epochs} epochs, seed {SEED}, deterministic ops.
- Conversion: `tf.lite.TFLiteConverter.from_keras_model`, builtin ops only,
  no optimizations (float32).
- Tools: {versions}.
- File: {report.model_bytes} bytes, SHA-256 `{report.sha256}`.

## Accuracy on the {report.test_size} test images

| runtime | accuracy |
|---|---|
| Keras | {report.keras_accuracy:.2%} |
| TFLite (LiteRT interpreter) | {report.tflite_accuracy:.2%} |

## Inputs and outputs

Signature `{SIGNATURE_KEY}`. Address tensors by their signature names: the
tensor names are chosen by the converter and change between TensorFlow
versions.

| role | signature name | tensor name | dtype | shape |
|---|---|---|---|---|
{rows}

The input is one flattened 8x8 image per row (row-major, values in [0, 1]);
the output holds the probabilities of digits 0 to 9. The batch dimension
(-1) is dynamic.

## Rebuild

```sh
make install-test
.venv/bin/python -m compress.demo --out server/demo/{model_name}
```

With the same library versions on the same machine the file is identical;
elsewhere accuracy may move by a fraction of a point. The command refuses to
write a model below 90% accuracy or more than 0.5 points off Keras.
"""


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m compress.demo",
        description="Train, convert and verify the demo digits model.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write .tflite")
    options = parser.parse_args(argv)
    report = build(options.out)
    print(f"Keras accuracy:  {report.keras_accuracy:.2%}")
    print(f"TFLite accuracy: {report.tflite_accuracy:.2%}")
    for role, info in (("input", report.input), ("output", report.output)):
        print(
            f"{role}: signature name {info.signature_name!r}, tensor name "
            f"{info.tensor_name!r}, {info.dtype} {list(info.shape_signature)}"
        )
    failures = problems(report)
    if failures:
        print("model not written:", *failures, sep="\n  ", file=sys.stderr)
        return 1
    print(
        f"wrote {options.out} ({report.model_bytes} bytes) and {options.out.parent / 'README.md'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
