"""Open Inference Protocol v2 over HTTP: JSON tensors and the binary tensor extension.

Bodies are parsed straight into numpy arrays with orjson; nothing validates
element by element. Every problem raises ``InvalidRequest`` naming the field.
With the binary extension the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by the inputs' raw bytes,
in input order, each ``parameters.binary_data_size`` long.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from server.service.datatypes import element_count, from_raw, numpy_dtype, to_raw
from server.service.errors import InvalidRequest
from server.service.types import InferRequest, InferResponse, RequestedOutput, Tensor

HEADER_LENGTH = "inference-header-content-length"
_KINDS: dict[str, str] = {"BOOL": "b"}
_INT_KINDS = "iub"
_FLOAT_KINDS = "fiub"


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} must be a JSON object")
    return value


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in value
    ):
        raise InvalidRequest(f"input '{name}': shape must be a list of non-negative integers")
    return tuple(value)


def json_array(
    data: Any, datatype: str, shape: tuple[int, ...] | None, *, name: str
) -> npt.NDArray[Any]:
    """A JSON ``data`` value (nested or flat) as an array of ``shape`` and ``datatype``.

    ``shape=None`` takes the shape from the nesting of ``data`` (TF Serving bodies).
    """
    dtype = numpy_dtype(datatype)
    if datatype == "BYTES":
        return _bytes_array(data, shape, name=name)
    try:
        raw = np.asarray(data)
    except ValueError:
        raise InvalidRequest(f"input '{name}': data is not a regular (rectangular) array") from None
    allowed = _KINDS.get(datatype, _FLOAT_KINDS if datatype.startswith("FP") else _INT_KINDS)
    if raw.dtype.kind in "fO" and datatype.startswith(("INT", "UINT")):
        # numpy reads integers beyond int64 (UINT64's upper half) as floats or
        # objects: convert exactly, and refuse anything that was a real fraction.
        try:
            exact = np.asarray(data, dtype=dtype)
        except (OverflowError, ValueError, TypeError):
            raise InvalidRequest(f"input '{name}': data does not hold {datatype} values") from None
        if raw.dtype.kind == "f" and not np.array_equal(exact, raw):
            raise InvalidRequest(f"input '{name}': data does not hold {datatype} values")
        raw = exact
    if raw.size and raw.dtype.kind not in allowed:
        raise InvalidRequest(f"input '{name}': data does not hold {datatype} values")
    if shape is None:
        shape = tuple(int(dim) for dim in raw.shape)
    if raw.size != element_count(shape):
        raise InvalidRequest(
            f"input '{name}': {raw.size} values for shape {list(shape)} "
            f"({element_count(shape)} expected)"
        )
    if dtype.kind in "iu" and raw.size:
        # astype would wrap out-of-range integers silently; refuse them instead.
        limits = np.iinfo(dtype)
        if raw.min() < limits.min or raw.max() > limits.max:
            raise InvalidRequest(f"input '{name}': values out of range for {datatype}")
    return raw.astype(dtype, copy=False).reshape(shape)


def _bytes_array(data: Any, shape: tuple[int, ...] | None, *, name: str) -> npt.NDArray[Any]:
    # Object dtype on purpose: numpy's fixed-width bytes type drops trailing NULs.
    try:
        raw = np.asarray(data, dtype=object)
    except ValueError:
        raise InvalidRequest(f"input '{name}': data is not a regular (rectangular) array") from None
    flat = raw.reshape(-1)
    if not all(isinstance(item, str | bytes) for item in flat):
        raise InvalidRequest(f"input '{name}': data must be a regular array of strings")
    if shape is None:
        shape = tuple(int(dim) for dim in raw.shape)
    if flat.size != element_count(shape):
        raise InvalidRequest(
            f"input '{name}': {flat.size} values for shape {list(shape)} "
            f"({element_count(shape)} expected)"
        )
    result = np.empty(flat.size, dtype=object)
    result[:] = [item.encode() if isinstance(item, str) else item for item in flat]
    return result.reshape(shape)


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """Decode an infer request body (JSON, or JSON + binary tensors)."""
    # Views, not slices: the tensors' bytes stay where the body has them.
    header, binary = memoryview(body), memoryview(b"")
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise InvalidRequest("Inference-Header-Content-Length must be an integer") from None
        if not 0 < length <= len(body):
            raise InvalidRequest("Inference-Header-Content-Length is larger than the body")
        header, binary = header[:length], header[length:]
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    document = _object(document, "request body")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidRequest("request must have a non-empty 'inputs' list")
    inputs: list[Tensor] = []
    offset = 0
    for index, item in enumerate(raw_inputs):
        entry = _object(item, f"inputs[{index}]")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"inputs[{index}] needs a 'name' string")
        datatype = entry.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidRequest(f"input '{name}' needs a 'datatype' string")
        numpy_dtype(datatype)
        shape = _shape(entry.get("shape"), name)
        parameters = _object(entry.get("parameters") or {}, f"input '{name}' parameters")
        if "shared_memory_region" in parameters:
            raise InvalidRequest(f"input '{name}': shared memory is not supported")
        size = parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidRequest(f"input '{name}': binary_data_size must be an integer")
            if offset + size > len(binary):
                raise InvalidRequest(
                    f"input '{name}': binary_data_size {size} runs past the binary data"
                )
            array = from_raw(binary[offset : offset + size], datatype, shape, name=name)
            offset += size
        elif "data" in entry:
            array = json_array(entry["data"], datatype, shape, name=name)
        else:
            raise InvalidRequest(f"input '{name}' has neither 'data' nor binary_data_size")
        inputs.append(Tensor(name, datatype, shape, array))
    if offset != len(binary):
        raise InvalidRequest(
            f"binary data is {len(binary)} bytes but the inputs' "
            f"binary_data_size add up to {offset}"
        )
    parameters = _object(document.get("parameters") or {}, "request parameters")
    outputs = []
    for index, item in enumerate(document.get("outputs") or []):
        entry = _object(item, f"outputs[{index}]")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"outputs[{index}] needs a 'name' string")
        out_parameters = _object(entry.get("parameters") or {}, f"output '{name}' parameters")
        binary_flag = out_parameters.get("binary_data")
        outputs.append(
            RequestedOutput(
                name=name,
                binary=bool(binary_flag) if binary_flag is not None else None,
                parameters=out_parameters,
            )
        )
    request_id = document.get("id")
    return InferRequest(
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        id=str(request_id) if request_id is not None else None,
        parameters=parameters,
    )


def json_values(tensor: Tensor) -> Any:
    """A tensor's values as a flat JSON-ready list."""
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        return [bytes(item).decode("utf-8", "backslashreplace") for item in flat]
    return flat.tolist()


def encode_response(response: InferResponse, request: InferRequest) -> tuple[bytes, int | None]:
    """The response body, and the JSON header length when binary outputs follow it."""
    default_binary = bool(request.parameters.get("binary_data_output", False))
    wanted = {output.name: output for output in request.outputs}
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for tensor in response.outputs:
        asked = wanted.get(tensor.name)
        binary = default_binary if asked is None or asked.binary is None else asked.binary
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if binary:
            raw = to_raw(tensor.data, tensor.datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = json_values(tensor)
        outputs.append(entry)
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id is not None:
        document["id"] = response.id
    header = orjson.dumps(document)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)
