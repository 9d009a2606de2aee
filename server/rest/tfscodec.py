"""The TensorFlow Serving REST API's predict bodies, in row and columnar form.

Row form ``{"instances": [...]}`` answers ``{"predictions": [...]}``; columnar
``{"inputs": ...}`` answers ``{"outputs": ...}``. With one input (output) the
values stand alone, with several they are keyed by name, as TF Serving does.
Datatypes come from the stored signature; ``BYTES`` values may be strings or
``{"b64": "..."}`` objects.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import orjson

from server.rest.v2codec import json_array, json_values
from server.service.errors import InvalidRequest
from server.service.types import InferRequest, InferResponse, Tensor

_TF_DTYPES = {
    "BOOL": "DT_BOOL",
    "UINT8": "DT_UINT8",
    "UINT16": "DT_UINT16",
    "UINT32": "DT_UINT32",
    "UINT64": "DT_UINT64",
    "INT8": "DT_INT8",
    "INT16": "DT_INT16",
    "INT32": "DT_INT32",
    "INT64": "DT_INT64",
    "FP16": "DT_HALF",
    "FP32": "DT_FLOAT",
    "FP64": "DT_DOUBLE",
    "BYTES": "DT_STRING",
}


def _unb64(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise InvalidRequest('a binary value must be written {"b64": "<base64>"}')
        try:
            return base64.b64decode(value["b64"], validate=True)
        except binascii.Error:
            raise InvalidRequest('a {"b64": ...} value is not valid base64') from None
    if isinstance(value, list):
        return [_unb64(item) for item in value]
    return value


def _tensor(name: str, values: Any, datatype: str) -> Tensor:
    if datatype == "BYTES":
        values = _unb64(values)
    array = json_array(values, datatype, None, name=name)
    return Tensor(name, datatype, tuple(int(dim) for dim in array.shape), array)


def parse_predict(body: bytes, signature: dict[str, Any]) -> tuple[InferRequest, bool]:
    """Decode a predict body against ``signature``; also says whether it was row form."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidRequest("request body must be a JSON object")
    specs = {t["name"]: t["datatype"] for t in signature.get("inputs", [])}
    if ("instances" in document) == ("inputs" in document):
        raise InvalidRequest("request must have exactly one of 'instances' or 'inputs'")
    if "instances" in document:
        instances = document["instances"]
        if not isinstance(instances, list) or not instances:
            raise InvalidRequest("'instances' must be a non-empty list")
        if len(specs) == 1 and not isinstance(instances[0], dict):
            ((name, datatype),) = specs.items()
            return InferRequest(inputs=(_tensor(name, instances, datatype),)), True
        columns: dict[str, list[Any]] = {name: [] for name in specs}
        for index, instance in enumerate(instances):
            if not isinstance(instance, dict):
                raise InvalidRequest(f"instances[{index}] must be an object naming each input")
            for key in instance:
                if key not in specs:
                    raise InvalidRequest(f"unknown input '{key}' in instances[{index}]")
            for name in specs:
                if name not in instance:
                    raise InvalidRequest(f"instances[{index}] is missing input '{name}'")
                columns[name].append(instance[name])
        return InferRequest(inputs=tuple(_tensor(n, v, specs[n]) for n, v in columns.items())), True
    inputs = document["inputs"]
    if not isinstance(inputs, dict):
        if len(specs) != 1:
            raise InvalidRequest("the model has several inputs: 'inputs' must name each one")
        ((name, datatype),) = specs.items()
        return InferRequest(inputs=(_tensor(name, inputs, datatype),)), False
    for key in inputs:
        if key not in specs:
            raise InvalidRequest(f"unknown input '{key}'")
    return InferRequest(inputs=tuple(_tensor(n, v, specs[n]) for n, v in inputs.items())), False


def _values(tensor: Tensor) -> Any:
    if tensor.datatype == "BYTES":
        return np.asarray(json_values(tensor), dtype=object).reshape(tensor.shape).tolist()
    return tensor.data.tolist()


def encode_predict(response: InferResponse, *, row: bool) -> bytes:
    """The predict answer in the form the request used."""
    outputs = response.outputs
    if row:
        if len(outputs) == 1:
            return orjson.dumps({"predictions": _values(outputs[0])})
        columns = {t.name: _values(t) for t in outputs}
        rows = len(next(iter(columns.values())))
        return orjson.dumps(
            {"predictions": [{n: v[i] for n, v in columns.items()} for i in range(rows)]}
        )
    if len(outputs) == 1:
        return orjson.dumps({"outputs": _values(outputs[0])})
    return orjson.dumps({"outputs": {t.name: _values(t) for t in outputs}})


def _tensor_info(tensor: dict[str, Any]) -> dict[str, Any]:
    return {
        "dtype": _TF_DTYPES.get(tensor["datatype"], "DT_INVALID"),
        "tensor_shape": {
            "dim": [{"size": str(dim), "name": ""} for dim in tensor["shape"]],
            "unknown_rank": False,
        },
        "name": tensor["name"],
    }


def model_metadata(name: str, version: int, signature: dict[str, Any]) -> dict[str, Any]:
    """``GET /v1/models/{m}/metadata`` in TF Serving's shape."""
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(version)},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    "serving_default": {
                        "inputs": {t["name"]: _tensor_info(t) for t in signature.get("inputs", [])},
                        "outputs": {
                            t["name"]: _tensor_info(t) for t in signature.get("outputs", [])
                        },
                        "method_name": "tensorflow/serving/predict",
                    }
                }
            }
        },
    }


def model_status(version: int, state: str) -> dict[str, Any]:
    """``GET /v1/models/{m}`` in TF Serving's shape."""
    available = state == "ready"
    return {
        "model_version_status": [
            {
                "version": str(version),
                "state": "AVAILABLE" if available else "UNAVAILABLE",
                "status": {"error_code": "OK" if available else "UNAVAILABLE", "error_message": ""},
            }
        ]
    }
