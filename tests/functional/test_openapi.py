"""The OpenAPI document of a running server describes what the server really does.

A tenant's developer generates a client from ``/openapi.json``: its request
bodies, error shapes and upload parts must be the ones the server accepts
and sends. The routes that read their bodies raw (inference, uploads, the
token endpoints) are documented by hand, so each claim is checked here
against a real call.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import numpy as np
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from tests.digits import DEMO_MODEL, digits_test_split
from tests.functional.conftest import auth_header

BODY_METHODS = ("post", "put", "patch")
NO_BODY = {"/admin/v1/tenants/{tenant}/suspend", "/admin/v1/tenants/{tenant}/resume"}
"""Routes that act on their path alone."""


@pytest.fixture(scope="module")
def document(stack) -> dict[str, Any]:
    """The served ``/openapi.json``, fetched once."""
    running, _, _ = stack
    reply = httpx.get(f"{running.url}/openapi.json")
    assert reply.status_code == 200
    return reply.json()


def _operations(document: dict[str, Any]):
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            yield path, method, operation


def _schema(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator for ``schema`` that resolves the document's ``#/components`` references."""
    return Draft202012Validator({**schema, "components": document["components"]})


def _component(document: dict[str, Any], name: str) -> Draft202012Validator:
    return _schema(document, {"$ref": f"#/components/schemas/{name}"})


def _content_schema(operation: dict[str, Any], media_type: str) -> dict[str, Any]:
    return operation["requestBody"]["content"][media_type]["schema"]


def test_the_document_is_valid_openapi(document) -> None:
    """It passes the OpenAPI 3.1 validator, hand-written parts included."""
    validate(document)
    assert document["openapi"].startswith("3.1")


def test_every_route_that_takes_a_body_documents_it(document) -> None:
    """Raw-body routes too, with each media type they accept."""
    missing = [
        f"{method.upper()} {path}"
        for path, method, operation in _operations(document)
        if method in BODY_METHODS and path not in NO_BODY and "requestBody" not in operation
    ]
    assert missing == []
    paths = document["paths"]
    assert set(paths["/v2/models/{model}/infer"]["post"]["requestBody"]["content"]) == {
        "application/json",
        "application/octet-stream",
    }
    assert set(paths["/admin/v1/models/{name}/versions"]["post"]["requestBody"]["content"]) == {
        "multipart/form-data",
        "application/octet-stream",
    }
    for route in ("/v1/auth/token", "/v1/auth/revoke"):
        assert list(paths[route]["post"]["requestBody"]["content"]) == [
            "application/x-www-form-urlencoded"
        ]


def test_errors_are_documented_in_the_shape_the_server_sends(document) -> None:
    """No FastAPI 422 (invalid input is a 400), and every error response names its body."""
    for path, method, operation in _operations(document):
        assert "422" not in operation["responses"], f"{method} {path}"
        for status, response in operation["responses"].items():
            if status == "default" or status.startswith(("4", "5")):
                schema = response["content"]["application/json"]["schema"]
                assert schema["$ref"].rsplit("/", 1)[1] in {"ErrorBody", "OAuthErrorBody"}
    limited = document["paths"]["/v2/models/{model}/infer"]["post"]["responses"]["429"]
    assert "Retry-After" in limited["headers"]


def test_a_v2_call_and_its_answer_match_the_schemas(stack, document) -> None:
    """A real infer request is valid by the documented schema, and so is its answer."""
    running, _, tokens = stack
    x, _ = digits_test_split()
    body = {
        "id": "documented",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 64], "data": x[:2].tolist()}],
        "outputs": [{"name": "probabilities"}],
    }
    infer = document["paths"]["/v2/models/{model}/infer"]["post"]
    _schema(document, _content_schema(infer, "application/json")).validate(body)
    reply = httpx.post(
        f"{running.url}/v2/models/digits/infer", json=body, headers=auth_header(tokens)
    )
    assert reply.status_code == 200, reply.text
    answer = infer["responses"]["200"]["content"]["application/json"]["schema"]
    _schema(document, answer).validate(reply.json())


def test_a_request_the_schema_refuses_is_refused_with_the_documented_error(stack, document) -> None:
    """Empty ``inputs``: the schema refuses it, and so does the server, with a 400 body."""
    running, _, tokens = stack
    body: dict[str, Any] = {"inputs": []}
    infer = document["paths"]["/v2/models/{model}/infer"]["post"]
    assert not _schema(document, _content_schema(infer, "application/json")).is_valid(body)
    reply = httpx.post(
        f"{running.url}/v2/models/digits/infer", json=body, headers=auth_header(tokens)
    )
    assert reply.status_code == 400
    _component(document, "ErrorBody").validate(reply.json())
    assert reply.json()["code"] == "invalid_request"


def test_tf_serving_predict_matches_the_schemas(stack, document) -> None:
    """Row and columnar requests, and their answers, match the predict schemas."""
    running, _, tokens = stack
    x, _ = digits_test_split()
    predict = document["paths"]["/v1/models/{model}:predict"]["post"]
    for body in ({"instances": x[:2].tolist()}, {"inputs": x[:2].tolist()}):
        _schema(document, _content_schema(predict, "application/json")).validate(body)
        reply = httpx.post(
            f"{running.url}/v1/models/digits:predict", json=body, headers=auth_header(tokens)
        )
        assert reply.status_code == 200, reply.text
        answer = predict["responses"]["200"]["content"]["application/json"]["schema"]
        _schema(document, answer).validate(reply.json())
        assert np.asarray(next(iter(reply.json().values()))).shape == (2, 10)


def test_the_token_endpoint_answers_as_documented(stack, document) -> None:
    """A refused grant comes back in the documented RFC 6749 error body."""
    running, _, _ = stack
    token = document["paths"]["/v1/auth/token"]["post"]
    form = token["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    assert form["required"] == ["grant_type"]
    refused = httpx.post(f"{running.url}/v1/auth/token", data={"grant_type": "password"})
    assert refused.status_code == 400
    _component(document, "OAuthErrorBody").validate(refused.json())
    assert refused.json()["error"] == "unsupported_grant_type"


def test_the_documented_upload_parts_are_the_ones_the_server_takes(stack, document) -> None:
    """The server's own list of parts (in its refusal of an unknown one) is the documented one."""
    running, _, tokens = stack
    upload = document["paths"]["/admin/v1/models/{name}/versions"]["post"]
    form = _content_schema(upload, "multipart/form-data")
    reply = httpx.post(
        f"{running.url}/admin/v1/models/documented/versions",
        files={"bogus": ("x.bin", b"x"), "model": ("digits.tflite", DEMO_MODEL.read_bytes())},
        headers=auth_header(tokens, "other"),
    )
    assert reply.status_code == 400, reply.text
    _component(document, "ErrorBody").validate(reply.json())
    listed = re.search(r"the parts are: (.+)$", reply.json()["error"])
    assert listed is not None, reply.json()
    assert set(listed.group(1).split(", ")) == set(form["properties"])
    assert form["required"] == ["model"]
    # The options part's schema refuses what the server refuses: an unknown key.
    options = _schema(document, form["properties"]["options"])
    assert options.is_valid({"prune": {"sparsity": 0.8}})
    assert not options.is_valid({"prune": {"sparsty": 0.8}})
    assert set(upload["responses"]) >= {"201", "202", "400", "413"}
