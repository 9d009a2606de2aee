"""Facts read from a ``.tflite`` flatbuffer: which ops it uses and how many weights it holds.

Workers serve with LiteRT's builtin op resolver only, so a model that needs a
custom or Flex (TensorFlow) op would fail there, or worse, load code we did not
review. A model that uses resource-variable ops (``VAR_HANDLE``...) is the
signature of a broken conversion: its weights were left as uninitialised
variables and it answers with noise. Both are found here from the schema,
without running the model.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from compress import _tf
from compress.errors import UnsupportedFormat

_HEADER_BYTES = 8  # root offset and file identifier

VARIABLE_OPS = frozenset({"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE"})

# TensorType codes of the weights we count (float and 8/16-bit integer). int32
# constants are mostly shapes and indices, so they are left out of the count.
_WEIGHT_TYPES = {0: np.float32, 1: np.float16, 3: np.uint8, 7: np.int16, 9: np.int8}


@dataclass(frozen=True)
class TFLiteFacts:
    """What a TFLite model is made of.

    ``parameters`` counts elements of constant float and 8/16-bit tensors
    (weights, whatever their storage), ``zero_parameters`` those stored as 0.
    """

    builtin_ops: frozenset[str]
    custom_ops: frozenset[str]
    parameters: int
    zero_parameters: int

    def problems(self) -> list[str]:
        """Why LiteRT workers must not serve this model (empty when they may)."""
        found = []
        if self.custom_ops:
            names = ", ".join(sorted(self.custom_ops))
            found.append(f"it needs custom or TensorFlow (Flex) ops: {names}")
        variables = self.builtin_ops & VARIABLE_OPS
        if variables:
            names = ", ".join(sorted(variables))
            found.append(f"it keeps weights in variables ({names}) instead of constants")
        return found


def _op_names(schema: Any) -> dict[int, str]:
    table = vars(schema.BuiltinOperator)
    return {code: name for name, code in table.items() if isinstance(code, int)}


def _buffer_bytes(model: Any, content: bytes, *, index: int) -> bytes:
    buffer = model.Buffers(index)
    if buffer is None:
        return b""
    offset, size = buffer.Offset(), buffer.Size()
    if offset > 1:  # large models keep buffers after the flatbuffer itself
        return content[offset : offset + size]
    if buffer.DataLength() == 0:
        return b""
    return bytes(buffer.DataAsNumpy().tobytes())


def read_tflite(content: bytes) -> TFLiteFacts:
    """Parse a TFLite flatbuffer; raise ``UnsupportedFormat`` if it is not one."""
    schema = _tf.litert_schema()
    if len(content) < _HEADER_BYTES or not schema.Model.ModelBufferHasIdentifier(content, 0):
        raise UnsupportedFormat("the file is not a TFLite model (no TFL3 identifier)")
    names = _op_names(schema)
    try:
        model = schema.Model.GetRootAs(content, 0)
        builtin: set[str] = set()
        custom: set[str] = set()
        for index in range(model.OperatorCodesLength()):
            code = model.OperatorCodes(index)
            number = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            if names.get(number) == "CUSTOM":
                custom.add((code.CustomCode() or b"?").decode("utf-8", "replace"))
            else:
                builtin.add(names.get(number, f"UNKNOWN_{number}"))
        parameters = zeros = 0
        for graph_index in range(model.SubgraphsLength()):
            graph = model.Subgraphs(graph_index)
            for tensor_index in range(graph.TensorsLength()):
                tensor = graph.Tensors(tensor_index)
                dtype = _WEIGHT_TYPES.get(tensor.Type())
                data = _buffer_bytes(model, content, index=tensor.Buffer()) if dtype else b""
                if dtype is None or not data:
                    continue
                values = np.frombuffer(data, dtype=dtype)
                count = (
                    math.prod(int(dim) for dim in tensor.ShapeAsNumpy())
                    if tensor.ShapeLength()
                    else 1
                )
                parameters += count
                zeros += int(np.count_nonzero(values == 0))
    except (IndexError, ValueError, TypeError, UnicodeError, struct.error) as exc:
        raise UnsupportedFormat("the TFLite model is corrupt", detail=repr(exc)) from exc
    return TFLiteFacts(
        builtin_ops=frozenset(builtin),
        custom_ops=frozenset(custom),
        parameters=parameters,
        zero_parameters=zeros,
    )
