"""A loaded model runs like LiteRT does in process, by signature names, and refuses misfits."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from server.pool import runtime
from server.pool.errors import INVALID_INPUT, LOAD_FAILED, CallFailed
from server.pool.runtime import LoadedModel
from server.service.types import Tensor
from tests.models import DATATYPES, identity_model, sample

from .conftest import DIGITS, Digits, Reference


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    """The demo model, loaded once for the module."""
    return LoadedModel.load(DIGITS.read_bytes())


def _input(x: np.ndarray, name: str = "input") -> Tensor:
    return Tensor(name=name, datatype="FP32", shape=tuple(x.shape), data=x)


def test_ports_are_the_signature_names(model: LoadedModel) -> None:
    """Inputs and outputs are addressed as the signature names them, not by tensor names."""
    assert model.input_names == ["input"]
    assert model.output_names == ["probabilities"]


@pytest.mark.parametrize("batch", [1, 32, 7, 2])
def test_outputs_equal_in_process_litert(
    model: LoadedModel, digits: Digits, reference: Reference, batch: int
) -> None:
    """Any batch size (resized as needed, back and forth) gives LiteRT's exact outputs."""
    x = digits.x_test[:batch]
    (out,) = model.run([_input(x)])
    assert (out.name, out.datatype, out.shape) == ("probabilities", "FP32", (batch, 10))
    assert np.array_equal(out.data, reference(x))


def test_outputs_come_in_the_order_asked(model: LoadedModel, digits: Digits) -> None:
    """Naming outputs returns those, in that order (repeats allowed)."""
    outs = model.run([_input(digits.x_test[:2])], ["probabilities", "probabilities"])
    assert [out.name for out in outs] == ["probabilities", "probabilities"]


def test_unknown_output_is_invalid_input_naming_it(model: LoadedModel, digits: Digits) -> None:
    """An output the model does not have is refused, listing the ones it has."""
    with pytest.raises(CallFailed, match=r"unknown output 'logits'.*probabilities") as caught:
        model.run([_input(digits.x_test[:1])], ["logits"])
    assert caught.value.code == INVALID_INPUT


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        (
            [_input(np.zeros((1, 64), np.float32), "pixels")],
            "unknown input 'pixels'; the model takes: input",
        ),
        ([], "missing input 'input'"),
        ([_input(np.zeros((1, 64), np.float32))] * 2, "input 'input' is given more than once"),
        (
            [Tensor("input", "FP64", (1, 64), np.zeros((1, 64), np.float64))],
            "input 'input': datatype FP64 does not match the model's FP32",
        ),
        (
            [_input(np.zeros((1, 65), np.float32))],
            r"input 'input': shape \[1, 65\] does not match the model's \[-1, 64\]",
        ),
        ([_input(np.zeros((64,), np.float32))], r"input 'input': shape \[64\] does not match"),
        ([_input(np.zeros((0, 64), np.float32))], r"input 'input': empty dimension"),
    ],
)
def test_misfit_inputs_are_invalid_input_naming_the_tensor(
    model: LoadedModel, tensors: list[Tensor], message: str
) -> None:
    """Wrong names, dtypes and shapes are refused before LiteRT sees them, naming the tensor."""
    with pytest.raises(CallFailed, match=message) as caught:
        model.run(tensors)
    assert caught.value.code == INVALID_INPUT


def test_model_still_runs_after_a_refused_call(
    model: LoadedModel, digits: Digits, reference: Reference
) -> None:
    """A refused call leaves the interpreter usable."""
    with pytest.raises(CallFailed):
        model.run([_input(np.zeros((3, 65), np.float32))])
    (out,) = model.run([_input(digits.x_test[:3])])
    assert np.array_equal(out.data, reference(digits.x_test[:3]))


def test_bytes_used_is_the_model_plus_activations_and_use_is_recorded(digits: Digits) -> None:
    """Size is the model bytes plus the activations at batch 1; every run resets the idle time."""
    model = LoadedModel.load(DIGITS.read_bytes())
    # float32: input 64, Dense 64, Dense 32, Dense 10 and its softmax, one row each.
    assert model.bytes_used == DIGITS.stat().st_size + 4 * (64 + 64 + 32 + 10 + 10)
    time.sleep(0.02)
    assert model.idle_seconds() >= 0.02
    model.run([_input(digits.x_test[:1])])
    assert model.idle_seconds() < 0.02


@pytest.mark.parametrize("content", [b"", b"not a flatbuffer" * 10])
def test_bytes_litert_refuses_are_load_failed(content: bytes) -> None:
    """Garbage is LOAD_FAILED with a generic message, not a LiteRT traceback."""
    with pytest.raises(CallFailed, match="could not be loaded by the runtime") as caught:
        LoadedModel.load(content)
    assert caught.value.code == LOAD_FAILED


def test_importing_the_pool_never_loads_litert() -> None:
    """Every pool module imports without loading LiteRT or TensorFlow (the gateway imports them)."""
    code = (
        "import importlib, pkgutil, sys, server.pool\n"
        "for module in pkgutil.iter_modules(server.pool.__path__):\n"
        "    importlib.import_module('server.pool.' + module.name)\n"
        "loaded = [m for m in ('ai_edge_litert', 'tensorflow') if m in sys.modules]\n"
        "sys.exit(str(loaded) if loaded else 0)\n"
    )
    result = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def every_datatype() -> LoadedModel:
    """A model echoing one [-1, 3] input of each protocol datatype (built with TensorFlow)."""
    return LoadedModel.load(identity_model())


def test_stacked_calls_of_every_datatype_come_back_row_for_row(
    every_datatype: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three calls stacked into one invocation each get exactly their own rows back.

    Numbers go through a view of the interpreter's input buffer (however
    small, here), strings (BYTES) through ``set_tensor``.
    """
    monkeypatch.setattr(runtime, "DIRECT_BYTES", 0)
    calls = []
    for flip in (False, True, False):
        inputs = []
        for datatype in DATATYPES:
            rows = sample(datatype)[::-1] if flip else sample(datatype)
            inputs.append(
                Tensor(
                    name=f"x_{datatype.lower()}",
                    datatype=datatype,
                    shape=tuple(rows.shape),
                    data=np.ascontiguousarray(rows),
                )
            )
        calls.append((inputs, []))
    assert every_datatype.batchable
    results = every_datatype.run_many(calls)
    assert every_datatype.batchable  # stacked, not run one by one
    for (inputs, _), result in zip(calls, results, strict=True):
        assert not isinstance(result, Exception), result
        by_name = {tensor.name: tensor for tensor in result}
        for tensor in inputs:
            echoed = by_name["y" + tensor.name[1:]]
            assert echoed.datatype == tensor.datatype
            assert echoed.data.tolist() == tensor.data.tolist()
