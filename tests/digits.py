"""The digits test split and the demo model's in-process predictions (the ground truth)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

DEMO_MODEL = Path(__file__).resolve().parent.parent / "server" / "demo" / "digits.tflite"


@cache
def digits_test_split() -> tuple[np.ndarray, np.ndarray]:
    """The 450 test images (float32, scaled to [0, 1]) and labels, as the demo model was built."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    _, x_test, _, y_test = train_test_split(x, digits.target, test_size=0.25, random_state=0)
    return x_test, y_test


@cache
def in_process_probabilities() -> np.ndarray:
    """The demo model run in this process with LiteRT on the whole test split."""
    from ai_edge_litert.interpreter import Interpreter

    x, _ = digits_test_split()
    interpreter = Interpreter(model_content=DEMO_MODEL.read_bytes())
    runner = interpreter.get_signature_runner("serving_default")
    return runner(input=x)["probabilities"]


def accuracy(probabilities: np.ndarray) -> float:
    """Share of test images whose highest probability is the true digit."""
    _, y = digits_test_split()
    return float((np.asarray(probabilities).argmax(axis=1) == y).mean())
