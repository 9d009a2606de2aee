"""One unsealed model in a LiteRT interpreter: the worker's unit of loading and running.

Worker side only. ``ai_edge_litert`` is imported inside ``LoadedModel.load``
so that importing this module (the gateway may, for types) never loads it.

Tensors are addressed by their *signature* names (``input``,
``probabilities``), not by the converter's tensor names, which change between
TensorFlow versions. A model without signatures falls back to its raw input
and output tensor names.

Nothing is cast: the gateway validates dtypes against the stored signature,
so a mismatch here means the signature and the model disagree and the call is
refused as ``INVALID_INPUT`` rather than silently converted.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from server.pool.errors import INVALID_INPUT, LOAD_FAILED, CallFailed
from server.service.datatypes import NUMPY_DTYPES
from server.service.types import Tensor

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import numpy.typing as npt

    from storage import BatchSettings

DEFAULT_SIGNATURE = "serving_default"

Call = tuple["Sequence[Tensor]", "Sequence[str]"]
"""One call as ``run_many`` takes it: the inputs, and the outputs wanted (empty: all)."""

_NOT_RUN = RuntimeError("the call was not run")

DIRECT_BYTES = 64 * 1024
"""Stacked inputs this large are written into the interpreter's buffer part by part.

Below it one ``np.concatenate`` is quicker than a Python loop over the parts
(32 one-row digits calls: 183-188 us per ``run_many`` against 199).
"""
_NUMERIC_KINDS = frozenset("biufc")
"""numpy dtype kinds held in the interpreter's memory as they are (not strings)."""

_OIP_NAMES = {dtype: name for name, dtype in NUMPY_DTYPES.items() if name != "BYTES"}


def _oip_datatype(dtype: Any) -> str | None:
    """The protocol name of a LiteRT tensor dtype, or None if the protocol cannot carry it."""
    numpy_type = np.dtype(dtype)
    if numpy_type.kind in ("S", "U", "O"):
        return "BYTES"
    return _OIP_NAMES.get(numpy_type.newbyteorder("<"))


@dataclass(frozen=True, slots=True)
class _Port:
    """One input or output of the model, by the name callers use."""

    name: str
    index: int
    datatype: str
    shape_signature: tuple[int, ...]
    """-1 where a dimension is dynamic."""


def _port(name: str, detail: dict[str, Any]) -> _Port:
    datatype = _oip_datatype(detail["dtype"])
    if datatype is None:
        raise CallFailed(
            LOAD_FAILED,
            f"tensor '{name}' has type {np.dtype(detail['dtype'])}, which is not served",
        )
    signature = detail.get("shape_signature")
    if signature is None or len(signature) == 0:
        signature = detail["shape"]
    return _Port(
        name=name,
        index=int(detail["index"]),
        datatype=datatype,
        shape_signature=tuple(int(dim) for dim in signature),
    )


def _interpreter_class() -> Any:
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415 - worker-only import

    return Interpreter


class LoadedModel:
    """A model version ready to run: interpreter, ports, and the numbers LRU placement needs.

    Not thread-safe by nature (one interpreter), so ``run`` holds a lock;
    the worker runs inference on one thread anyway.
    """

    def __init__(
        self,
        *,
        interpreter: Any,
        inputs: dict[str, _Port],
        outputs: list[_Port],
        runner: Any | None,
        bytes_used: int,
    ) -> None:
        self._interpreter = interpreter
        self._inputs = inputs
        self._outputs = outputs
        self._outputs_by_name = {port.name: port for port in outputs}
        # Set only when the signature lives outside the primary subgraph: the
        # interpreter's tensor-index API addresses subgraph 0 only, so such a
        # signature is run through LiteRT's SignatureRunner (which resizes
        # and allocates on every call, slower but correct).
        self._runner = runner
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._lock = threading.Lock()
        self.bytes_used = bytes_used
        self.last_used = time.monotonic()
        self.in_flight = 0
        self.batching: BatchSettings | None = None
        """The version's own batching settings as read at load time (None: the worker's)."""
        # Rows of concurrent calls can be stacked into one invocation only when
        # every input and output has a dynamic first (batch) dimension.
        self.batchable = all(
            port.shape_signature[:1] == (-1,) for port in (*inputs.values(), *outputs)
        ) and bool(inputs)

    @classmethod
    def load(cls, content: bytes, *, signature_key: str = DEFAULT_SIGNATURE) -> LoadedModel:
        """Build the interpreter for a model's plaintext bytes (blocking; run off the loop).

        Raises ``CallFailed(LOAD_FAILED)`` when LiteRT refuses the model.
        """
        try:
            interpreter = _interpreter_class()(model_content=content, num_threads=1)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            msg = "the model could not be loaded by the runtime"
            raise CallFailed(LOAD_FAILED, msg) from exc
        signatures: dict[str, Any] = interpreter.get_signature_list()
        if not signatures:
            inputs = [_port(d["name"], d) for d in interpreter.get_input_details()]
            outputs = [_port(d["name"], d) for d in interpreter.get_output_details()]
            return cls(
                interpreter=interpreter,
                inputs={port.name: port for port in inputs},
                outputs=outputs,
                runner=None,
                bytes_used=len(content) + _arena_bytes(interpreter),
            )
        key = signature_key if signature_key in signatures else next(iter(signatures))
        if len(signatures) > 1 and key != signature_key:
            msg = f"the model has several signatures and none is named '{signature_key}'"
            raise CallFailed(LOAD_FAILED, msg)
        runner = interpreter.get_signature_runner(key)
        input_details: dict[str, Any] = runner.get_input_details()
        output_details: dict[str, Any] = runner.get_output_details()
        inputs = [_port(name, input_details[name]) for name in signatures[key]["inputs"]]
        outputs = [_port(name, output_details[name]) for name in signatures[key]["outputs"]]
        primary = {int(d["index"]) for d in interpreter.get_input_details()} == {
            port.index for port in inputs
        } and {int(d["index"]) for d in interpreter.get_output_details()} == {
            port.index for port in outputs
        }
        return cls(
            interpreter=interpreter,
            inputs={port.name: port for port in inputs},
            outputs=outputs,
            runner=None if primary else runner,
            bytes_used=len(content) + _arena_bytes(interpreter),
        )

    @property
    def input_names(self) -> list[str]:
        """The model's input names, as callers address them."""
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        """The model's output names, in signature order."""
        return [port.name for port in self._outputs]

    def idle_seconds(self) -> float:
        """Time since the model last served a call (or was loaded)."""
        return time.monotonic() - self.last_used

    def run(self, inputs: Sequence[Tensor], outputs: Sequence[str] = ()) -> list[Tensor]:
        """Run one call: ``outputs`` by name in that order, all of them when empty.

        Raises ``CallFailed(INVALID_INPUT)`` naming the tensor for a missing,
        unknown or repeated name, a wrong datatype or an incompatible shape.
        Anything LiteRT raises past validation propagates as is: the worker
        logs it and answers INTERNAL.
        """
        feeds = self._check_inputs(inputs)
        wanted = self._check_outputs(outputs)
        with self._lock:
            try:
                results = self._invoke(feeds, wanted)
            finally:
                self.last_used = time.monotonic()
        return [
            Tensor(name=port.name, datatype=port.datatype, shape=tuple(array.shape), data=array)
            for port, array in zip(wanted, results, strict=True)
        ]

    def run_many(self, calls: Sequence[Call]) -> list[list[Tensor] | Exception]:
        """Run several calls in one go: stacked into one invocation where the model allows.

        Each call gets its own outcome (outputs, or the exception it raised),
        so a misfit call never fails its neighbours. Calls whose inputs agree
        on everything but the first dimension are concatenated along it, run
        once, and the outputs split back by row; a model whose outputs do not
        come back with one row per input row is marked not batchable and its
        calls are run one by one from then on.
        """
        results: list[list[Tensor] | Exception] = [_NOT_RUN] * len(calls)
        groups: dict[tuple[Any, ...], list[tuple[int, dict[str, npt.NDArray[Any]]]]] = {}
        for position, (inputs, outputs) in enumerate(calls):
            try:
                feeds = self._check_inputs(inputs)
                self._check_outputs(outputs)
            except CallFailed as exc:
                results[position] = exc
                continue
            if not self.batchable:
                results[position] = self._run_one(inputs, outputs)
                continue
            shape_key = tuple(
                (name, array.shape[1:], array.dtype.str) for name, array in sorted(feeds.items())
            )
            groups.setdefault(shape_key, []).append((position, feeds))
        for members in groups.values():
            if len(members) == 1:
                position = members[0][0]
                results[position] = self._run_one(*calls[position])
                continue
            self._run_stacked(calls, members, results)
        return results

    def _run_one(
        self, inputs: Sequence[Tensor], outputs: Sequence[str]
    ) -> list[Tensor] | Exception:
        try:
            return self.run(inputs, outputs)
        except Exception as exc:  # noqa: BLE001 - handed back as this call's outcome
            return exc

    def _run_stacked(
        self,
        calls: Sequence[Call],
        members: list[tuple[int, dict[str, npt.NDArray[Any]]]],
        results: list[list[Tensor] | Exception],
    ) -> None:
        rows = [next(iter(feeds.values())).shape[0] for _, feeds in members]
        total = sum(rows)
        stacked = {name: _stacked([feeds[name] for _, feeds in members]) for name in self._inputs}
        with self._lock:
            try:
                produced = self._invoke(stacked, self._outputs)
            except Exception as exc:  # noqa: BLE001 - every call of the batch gets it
                for position, _ in members:
                    results[position] = exc
                return
            finally:
                self.last_used = time.monotonic()
        if any(array.shape[:1] != (total,) for array in produced):
            # The outputs do not follow the input rows: never stack this model again.
            self.batchable = False
            for position, _ in members:
                results[position] = self._run_one(*calls[position])
            return
        by_name = dict(zip((port.name for port in self._outputs), produced, strict=True))
        start = 0
        for (position, _), count in zip(members, rows, strict=True):
            wanted = self._check_outputs(calls[position][1])
            results[position] = [
                Tensor(
                    name=port.name,
                    datatype=port.datatype,
                    shape=(count, *by_name[port.name].shape[1:]),
                    data=by_name[port.name][start : start + count],
                )
                for port in wanted
            ]
            start += count

    def _check_inputs(self, inputs: Sequence[Tensor]) -> dict[str, npt.NDArray[Any]]:
        feeds: dict[str, npt.NDArray[Any]] = {}
        for tensor in inputs:
            port = self._inputs.get(tensor.name)
            if port is None:
                known = ", ".join(self._inputs)
                raise CallFailed(
                    INVALID_INPUT, f"unknown input '{tensor.name}'; the model takes: {known}"
                )
            if tensor.name in feeds:
                raise CallFailed(INVALID_INPUT, f"input '{tensor.name}' is given more than once")
            if tensor.datatype != port.datatype:
                raise CallFailed(
                    INVALID_INPUT,
                    f"input '{tensor.name}': datatype {tensor.datatype} does not match "
                    f"the model's {port.datatype}",
                )
            _check_shape(port, tuple(tensor.data.shape))
            feeds[tensor.name] = tensor.data
        missing = [name for name in self._inputs if name not in feeds]
        if missing:
            raise CallFailed(INVALID_INPUT, f"missing input '{missing[0]}'")
        return feeds

    def _check_outputs(self, names: Sequence[str]) -> list[_Port]:
        if not names:
            return self._outputs
        wanted = []
        for name in names:
            port = self._outputs_by_name.get(name)
            if port is None:
                known = ", ".join(self._outputs_by_name)
                raise CallFailed(INVALID_INPUT, f"unknown output '{name}'; the model has: {known}")
            wanted.append(port)
        return wanted

    def _invoke(
        self, feeds: Mapping[str, npt.NDArray[Any] | list[npt.NDArray[Any]]], wanted: list[_Port]
    ) -> list[npt.NDArray[Any]]:
        """Run once on ``feeds``: an array per input, or the parts to stack into it.

        Parts (``_stacked`` leaves them apart when they are large) are copied
        straight into the interpreter's input buffer, once: concatenating them
        first and then handing the result over copied a batch's inputs twice
        (for a batch of 224x224 images, 6.6 MB each time, into freshly mapped
        memory).
        """
        if self._runner is not None:
            arrays = {name: _joined(feed) for name, feed in feeds.items()}
            produced: dict[str, npt.NDArray[Any]] = self._runner(**arrays)
            return [produced[port.name] for port in wanted]
        interpreter = self._interpreter
        shapes = {name: _shape(feed) for name, feed in feeds.items()}
        resized = False
        for name, shape in shapes.items():
            if self._shapes.get(name) != shape:
                interpreter.resize_tensor_input(self._inputs[name].index, list(shape), strict=True)
                resized = True
        if resized:
            # Forget the shapes first: if allocation fails half-way, the next
            # call resizes every input again instead of trusting stale state.
            self._shapes.clear()
            interpreter.allocate_tensors()
            self._shapes = shapes
        for name, feed in feeds.items():
            index = self._inputs[name].index
            if not isinstance(feed, list):
                interpreter.set_tensor(index, feed)
                continue
            # A view of the interpreter's own memory; it must be gone before
            # invoke(), which refuses to run while one is held.
            buffer = interpreter.tensor(index)()
            start = 0
            for array in feed:
                buffer[start : start + len(array)] = array
                start += len(array)
            del buffer
        interpreter.invoke()
        # get_tensor copies, so the arrays stay valid after the next invoke.
        return [interpreter.get_tensor(port.index) for port in wanted]


def _stacked(arrays: list[npt.NDArray[Any]]) -> npt.NDArray[Any] | list[npt.NDArray[Any]]:
    """Calls' inputs for one invocation: concatenated, or left as parts when that copy counts.

    Parts of ``DIRECT_BYTES`` or more in all, of a numeric type, are written
    into the interpreter's buffer one by one (``_invoke``); strings have no
    view to write into, and small parts are quicker joined by numpy.
    """
    if arrays[0].dtype.kind in _NUMERIC_KINDS and sum(a.nbytes for a in arrays) >= DIRECT_BYTES:
        return arrays
    return np.concatenate(arrays)


def _joined(feed: npt.NDArray[Any] | list[npt.NDArray[Any]]) -> npt.NDArray[Any]:
    return np.concatenate(feed) if isinstance(feed, list) else feed


def _shape(feed: npt.NDArray[Any] | list[npt.NDArray[Any]]) -> tuple[int, ...]:
    if isinstance(feed, list):
        return (sum(array.shape[0] for array in feed), *feed[0].shape[1:])
    return tuple(feed.shape)


def _arena_bytes(interpreter: Any) -> int:
    """Bytes of the tensors the interpreter computes (inputs and every op's outputs).

    Weights live in the model bytes and are counted there; this adds the
    activations LiteRT allocates, at the shapes allocated now. Reads LiteRT's
    op details (a private but stable accessor); 0 when they are unavailable.
    """
    try:
        ops = interpreter._get_ops_details()  # noqa: SLF001 - no public accessor
        details = {int(d["index"]): d for d in interpreter.get_tensor_details()}
    except (AttributeError, RuntimeError, ValueError):
        return 0
    computed = {int(d["index"]) for d in interpreter.get_input_details()}
    for op in ops:
        computed.update(int(index) for index in op["outputs"])
    total = 0
    for index in computed:
        detail = details.get(index)
        if detail is not None:
            count = int(np.prod(detail["shape"])) if len(detail["shape"]) else 1
            total += count * np.dtype(detail["dtype"]).itemsize
    return total


def _check_shape(port: _Port, shape: tuple[int, ...]) -> None:
    expected = port.shape_signature
    fits = len(shape) == len(expected) and all(
        want in (-1, got) for want, got in zip(expected, shape, strict=True)
    )
    if not fits:
        raise CallFailed(
            INVALID_INPUT,
            f"input '{port.name}': shape {list(shape)} does not match the model's {list(expected)}",
        )
    if 0 in shape:
        raise CallFailed(INVALID_INPUT, f"input '{port.name}': empty dimension in {list(shape)}")
