"""What the OpenAPI document says that FastAPI cannot work out from the routes.

The inference and upload routes read their bodies raw (the hot path parses
JSON straight into arrays; uploads stream to disk part by part), so FastAPI
sees no body model and would document none. And every error leaves in one
shape through the error table, which FastAPI does not know: left alone it
advertises its own 422 validation error, which this server never sends
(invalid input is a 400 with the usual body). This module holds the
documentation-only schemas and the error tables the routers declare;
nothing here validates a request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from compress import CompressOptions
from server.service.datatypes import NUMPY_DTYPES
from server.service.jobs import FILE_ROLES

if TYPE_CHECKING:
    from fastapi import FastAPI

REF = "#/components/schemas/{model}"


class ErrorBody(BaseModel):
    """Every error this server answers (but the token endpoint's, which follow RFC 6749)."""

    error: str = Field(description="What went wrong, for a person to read.")
    code: str = Field(
        description="Stable, for programs: invalid_request, unauthenticated, forbidden, "
        "not_found, conflict, payload_too_large, overloaded, unavailable, timeout, internal."
    )
    request_id: str | None = Field(description="This call's request id (``x-request-id``).")


class OAuthErrorBody(BaseModel):
    """An error of the token endpoints, as RFC 6749 section 5.2 has it."""

    error: str = Field(description="invalid_request, invalid_client, invalid_grant, ...")
    error_description: str
    request_id: str | None


_WHY: dict[int, str] = {
    400: "The request is malformed; the message names the problem.",
    401: "No valid access token.",
    403: "The token lacks the scope or tenant this call needs.",
    404: "No such object in the caller's tenant (another tenant's looks the same).",
    409: "It conflicts with what exists (a name already taken, say).",
    413: "The body is larger than the server accepts.",
    429: "The tenant's rate or concurrency limit, or a full queue: retry after the delay.",
    503: "Not ready, or no worker could take the call.",
    504: "The call ran out of time.",
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "How to authenticate", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}}},
}


def errors(*statuses: int, body: type[BaseModel] = ErrorBody) -> dict[int | str, dict[str, Any]]:
    """A router's ``responses``: ``statuses`` and, under "default", any other error.

    Declaring "default" also keeps FastAPI from listing its 422, which the
    error table turns into a 400.
    """
    table: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        table[status] = {"model": body, "description": _WHY[status]}
        if status in _HEADERS:
            table[status]["headers"] = _HEADERS[status]
    table["default"] = {"model": body, "description": "Any other error, in the same shape."}
    return table


ADMIN = errors(400, 401, 403, 404)
"""The administration routes' errors."""
READ = errors(401, 403, 404)
"""Errors of the protocols' metadata and readiness routes."""
INFERENCE = errors(400, 401, 403, 404, 413, 429, 503, 504)
"""Errors of an inference call."""
OAUTH = errors(400, 401, body=OAuthErrorBody)
"""Errors of the token endpoints."""


# --- Open Inference Protocol v2 -------------------------------------------------------
_DATATYPE = Field(json_schema_extra={"enum": list(NUMPY_DTYPES)})
_DATA = Field(
    default=None,
    description="The values, nested by shape or flat in row-major order; left out when "
    "the tensor's bytes follow the JSON (parameters.binary_data_size).",
)


class InferenceRequestInput(BaseModel):
    """One input tensor."""

    name: str
    shape: list[int] = Field(json_schema_extra={"items": {"type": "integer", "minimum": 0}})
    datatype: str = _DATATYPE
    parameters: dict[str, Any] | None = Field(
        default=None,
        description="binary_data_size: this tensor's bytes follow the JSON header "
        "(binary tensor extension).",
    )
    data: list[Any] | None = _DATA


class InferenceRequestOutput(BaseModel):
    """An output the caller wants, and how."""

    name: str
    parameters: dict[str, Any] | None = Field(
        default=None, description="binary_data: answer this output as raw bytes."
    )


class InferenceRequest(BaseModel):
    """``POST /v2/models/{model}/infer``: JSON, or JSON followed by raw tensor bytes."""

    id: str | None = Field(default=None, description="Echoed in the answer.")
    parameters: dict[str, Any] | None = Field(
        default=None, description="binary_data_output: every output as raw bytes."
    )
    inputs: list[InferenceRequestInput] = Field(min_length=1)
    outputs: list[InferenceRequestOutput] | None = None


class InferenceResponseOutput(BaseModel):
    """One output tensor."""

    name: str
    shape: list[int]
    datatype: str = _DATATYPE
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = _DATA


class InferenceResponse(BaseModel):
    """The answer to an infer call."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[InferenceResponseOutput]


# --- TensorFlow Serving ---------------------------------------------------------------
class PredictRequest(BaseModel):
    """``:predict``: exactly one of ``instances`` (rows) or ``inputs`` (columns)."""

    signature_name: str | None = Field(
        default=None, description="Accepted; a model serves its one signature."
    )
    instances: list[Any] | None = Field(default=None, description="Row form: one per example.")
    inputs: Any = Field(default=None, description="Columnar form: a tensor, or one per name.")


class PredictResponse(BaseModel):
    """``predictions`` for a row-form request, ``outputs`` for a columnar one."""

    predictions: list[Any] | None = None
    outputs: Any = None


# --- request bodies, for routes that read theirs raw ---------------------------------
def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


V2_INFER = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _ref(InferenceRequest)},
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "Binary tensor extension: the JSON request, then each "
                    "tensor's bytes; the Inference-Header-Content-Length header gives the "
                    "JSON's length.",
                }
            },
        },
    },
    "parameters": [
        {
            "name": "Inference-Header-Content-Length",
            "in": "header",
            "required": False,
            "description": "Length of the JSON part of a binary request or answer.",
            "schema": {"type": "integer", "minimum": 0},
        }
    ],
    "responses": {
        "200": {
            "description": "The outputs (binary outputs follow the JSON, as in the request).",
            "content": {"application/json": {"schema": _ref(InferenceResponse)}},
        }
    },
}

TFS_PREDICT = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _ref(PredictRequest)}},
    },
    "responses": {
        "200": {
            "description": "The predictions, in the request's form.",
            "content": {"application/json": {"schema": _ref(PredictResponse)}},
        }
    },
}


def _form(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "properties": properties, "required": required}
            }
        },
    }


_CLIENT = {
    "client_id": {"type": "string", "description": "Unless sent with HTTP Basic."},
    "client_secret": {"type": "string", "description": "Unless sent with HTTP Basic."},
}
TOKEN = {
    "requestBody": _form(
        {
            "grant_type": {"type": "string", "enum": ["client_credentials"]},
            "scope": {"type": "string", "description": "Space-separated; at most the client's."},
            **_CLIENT,
        },
        ["grant_type"],
    ),
    "responses": {
        "200": {
            "description": "An access token (RFC 6749 section 5.1).",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "access_token": {"type": "string"},
                            "token_type": {"type": "string", "enum": ["Bearer"]},
                            "expires_in": {"type": "integer"},
                            "scope": {"type": "string"},
                        },
                        "required": ["access_token", "token_type", "expires_in", "scope"],
                    }
                }
            },
        }
    },
}
REVOKE = {
    "requestBody": _form({"token": {"type": "string"}, **_CLIENT}, ["token"]),
    "responses": {"200": {"description": "Revoked, or not a token of this client (RFC 7009)."}},
}


def _upload() -> dict[str, Any]:
    files = {
        role: {"type": "string", "format": "binary", "description": f"The {role} file."}
        for role in FILE_ROLES
    }
    files["model"]["description"] = "The model: .keras, a SavedModel as .zip, or .tflite."
    files["student"]["description"] = "A .keras student for distillation."
    for role in ("calibration", "evaluation", "training"):
        files[role]["description"] = f"The {role} data set, an .npz of x and y arrays."
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {**files, "options": _ref(CompressOptions)},
                        "required": ["model"],
                    },
                    "encoding": {"options": {"contentType": "application/json"}},
                },
                "application/octet-stream": {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "A bare .tflite file, checked and sealed at once.",
                    }
                },
            },
        },
        "responses": {
            "201": {"description": "A bare .tflite was sealed: the new version."},
            "202": {
                "description": "The form was queued as a job; follow it at Location.",
                "headers": {"Location": {"schema": {"type": "string"}}},
            },
        },
    }


UPLOAD = _upload()
DOCUMENTED: tuple[type[BaseModel], ...] = (
    InferenceRequest,
    InferenceResponse,
    PredictRequest,
    PredictResponse,
    CompressOptions,
)
"""Models the raw-body routes refer to: added to the document's components."""


def install(app: FastAPI) -> None:
    """Build ``app``'s OpenAPI document once, with the documented models in its components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            _, definitions = models_json_schema(
                [(model, "validation") for model in DOCUMENTED], ref_template=REF
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(definitions.get("$defs", {}))
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
