"""Bad requests get a clear 4xx naming the problem, never a 500; other tenants' models are invisible."""

from __future__ import annotations

import json

import grpc
import httpx
import numpy as np
import pytest

from protos import inference_pb2, inference_pb2_grpc
from tests.digits import DEMO_MODEL, digits_test_split
from tests.functional.conftest import auth_header

ROW = digits_test_split()[0][0].tolist()


def _v2(inputs, **extra):
    return json.dumps({"inputs": inputs, **extra}).encode()


def _binary(header: dict, payload: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + payload, {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }


GOOD = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": ROW}
x1 = np.asarray([ROW], dtype="<f4").tobytes()

# (name, path, body, extra headers, expected status, words the message must contain)
CASES = [
    ("bad json", "/v2/models/digits/infer", b"{nope", {}, 400, "not valid JSON"),
    ("no inputs", "/v2/models/digits/infer", b'{"inputs": []}', {}, 400, "'inputs'"),
    (
        "wrong shape",
        "/v2/models/digits/infer",
        _v2([{**GOOD, "shape": [1, 63], "data": ROW[:63]}]),
        {},
        400,
        "shape",
    ),
    (
        "shape vs data",
        "/v2/models/digits/infer",
        _v2([{**GOOD, "shape": [2, 64]}]),
        {},
        400,
        "128 expected",
    ),
    (
        "wrong datatype",
        "/v2/models/digits/infer",
        _v2([{**GOOD, "datatype": "INT32", "data": [1] * 64}]),
        {},
        400,
        "expects FP32",
    ),
    (
        "unknown datatype",
        "/v2/models/digits/infer",
        _v2([{**GOOD, "datatype": "FLOAT"}]),
        {},
        400,
        "unknown datatype",
    ),
    (
        "strings for floats",
        "/v2/models/digits/infer",
        _v2([{**GOOD, "data": ["a"] * 64}]),
        {},
        400,
        "FP32",
    ),
    (
        "ragged",
        "/v2/models/digits/infer",
        _v2([{**GOOD, "data": [[1.0], [1.0, 2.0]]}]),
        {},
        400,
        "regular",
    ),
    (
        "missing input",
        "/v2/models/digits/infer",
        _v2([{**GOOD, "name": "other"}]),
        {},
        400,
        "unknown input 'other'",
    ),
    (
        "extra input",
        "/v2/models/digits/infer",
        _v2([GOOD, {**GOOD, "name": "extra"}]),
        {},
        400,
        "unknown input 'extra'",
    ),
    ("duplicate input", "/v2/models/digits/infer", _v2([GOOD, GOOD]), {}, 400, "twice"),
    (
        "unknown output",
        "/v2/models/digits/infer",
        _v2([GOOD], outputs=[{"name": "logits"}]),
        {},
        400,
        "unknown output 'logits'",
    ),
    (
        "binary too short",
        "/v2/models/digits/infer",
        *_binary(
            {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": [1, 64],
                        "parameters": {"binary_data_size": 256},
                    }
                ]
            },
            x1[:100],
        ),
        400,
        "runs past",
    ),
    (
        "binary extra bytes",
        "/v2/models/digits/infer",
        *_binary(
            {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": [1, 64],
                        "parameters": {"binary_data_size": 256},
                    }
                ]
            },
            x1 + b"xx",
        ),
        400,
        "add up",
    ),
    (
        "binary size vs shape",
        "/v2/models/digits/infer",
        *_binary(
            {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": [1, 64],
                        "parameters": {"binary_data_size": 128},
                    }
                ]
            },
            x1[:128],
        ),
        400,
        "256 expected",
    ),
    (
        "header length bogus",
        "/v2/models/digits/infer",
        b"{}",
        {"Inference-Header-Content-Length": "999"},
        400,
        "larger than the body",
    ),
    (
        "over the limit",
        "/v2/models/digits/infer",
        b"[" + b"0," * (1100 * 1024) + b"0]",
        {},
        413,
        "limit",
    ),
    (
        "unknown model",
        "/v2/models/nothing/infer",
        _v2([GOOD]),
        {},
        404,
        "model 'nothing' not found",
    ),
    (
        "unknown version",
        "/v2/models/digits/versions/7/infer",
        _v2([GOOD]),
        {},
        404,
        "no version '7'",
    ),
    (
        "unknown label",
        "/v2/models/digits/versions/gold/infer",
        _v2([GOOD]),
        {},
        404,
        "no version 'gold'",
    ),
    (
        "tfs both forms",
        "/v1/models/digits:predict",
        b'{"instances": [1], "inputs": [1]}',
        {},
        400,
        "exactly one",
    ),
    (
        "tfs bad row",
        "/v1/models/digits:predict",
        json.dumps({"instances": [ROW[:10]]}).encode(),
        {},
        400,
        "shape",
    ),
    (
        "tfs unknown model",
        "/v1/models/nothing:predict",
        b'{"instances": [[1]]}',
        {},
        404,
        "not found",
    ),
]


@pytest.mark.parametrize(
    ("name", "path", "body", "headers", "status", "words"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_request_is_named(stack, name, path, body, headers, status, words) -> None:
    """Each malformed request gets its 4xx and a message naming the problem, in the error shape."""
    running, _, tokens = stack
    merged = {"Content-Type": "application/json", **headers, **auth_header(tokens)}
    reply = httpx.post(running.url + path, content=body, headers=merged)
    assert reply.status_code == status, reply.text
    document = reply.json()
    assert words in document["error"], document
    assert set(document) == {"error", "code", "request_id"}


def _upload(
    running, tokens, content: bytes, tenant="other", content_type="application/octet-stream"
):
    return httpx.post(
        f"{running.url}/admin/v1/models/up/versions",
        content=content,
        headers={**auth_header(tokens, tenant), "Content-Type": content_type},
        timeout=60,
    )


@pytest.fixture(scope="module")
def flex_model() -> bytes:
    """A real TFLite model that needs a TensorFlow (Flex) op, built with TensorFlow here."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def lengths(text):
        return tf.strings.length(text)

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [lengths.get_concrete_function()], lengths
    )
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS,
        tf.lite.OpsSet.SELECT_TF_OPS,
    ]
    return converter.convert()


def test_upload_errors(stack, flex_model) -> None:
    """Uploads that are not servable models are refused with 4xx and leave no version."""
    running, _, tokens = stack
    not_model = _upload(running, tokens, b"this is not a model at all")
    assert (not_model.status_code, "not a TFLite model" in not_model.json()["error"]) == (400, True)
    corrupt = _upload(running, tokens, b"\x00\x00\x00\x00TFL3" + b"\xff" * 64)
    assert corrupt.status_code == 400
    assert "does not load" in corrupt.json()["error"] or "corrupt" in corrupt.json()["error"]
    flex = _upload(running, tokens, flex_model)
    assert flex.status_code == 400, flex.text
    assert "Flex" in flex.json()["error"] or "custom" in flex.json()["error"]
    big = _upload(running, tokens, b"\x00" * (5 * 1024 * 1024))
    assert big.status_code == 413
    form = _upload(running, tokens, DEMO_MODEL.read_bytes(), content_type="text/plain")
    assert form.status_code == 400
    assert "Content-Type" in form.json()["error"]
    listed = httpx.get(
        f"{running.url}/admin/v1/models", headers=auth_header(tokens, "other")
    ).json()
    assert [m["name"] for m in listed["models"]] == ["secret"]
    good = _upload(running, tokens, DEMO_MODEL.read_bytes())
    assert good.status_code == 201, good.text
    assert good.json()["inputs"][0]["name"] == "input"
    assert (
        httpx.delete(
            f"{running.url}/admin/v1/models/up", headers=auth_header(tokens, "other")
        ).status_code
        == 204
    )


def _rest_probes(model: str) -> list[tuple[str, str, bytes | None]]:
    body = _v2([GOOD])
    return [
        ("GET", f"/v2/models/{model}", None),
        ("GET", f"/v2/models/{model}/versions/1", None),
        ("GET", f"/v2/models/{model}/ready", None),
        ("GET", f"/v2/models/{model}/versions/1/ready", None),
        ("POST", f"/v2/models/{model}/infer", body),
        ("POST", f"/v2/models/{model}/versions/1/infer", body),
        ("POST", f"/v1/models/{model}:predict", json.dumps({"instances": [ROW]}).encode()),
        (
            "POST",
            f"/v1/models/{model}/versions/1:predict",
            json.dumps({"instances": [ROW]}).encode(),
        ),
        ("GET", f"/v1/models/{model}", None),
        ("GET", f"/v1/models/{model}/metadata", None),
        ("GET", f"/admin/v1/models/{model}", None),
        ("PUT", f"/admin/v1/models/{model}/labels/x", b'{"version": 1}'),
        ("DELETE", f"/admin/v1/models/{model}/versions/1", None),
        ("DELETE", f"/admin/v1/models/{model}", None),
    ]


def _grpc_probes(channel, token: str, model: str) -> list[tuple[str, str]]:
    stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    metadata = [("authorization", f"Bearer {token}")]
    request = inference_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(x1)
    answers = []
    for call, message in (
        (stub.ModelMetadata, inference_pb2.ModelMetadataRequest(name=model)),
        (stub.ModelReady, inference_pb2.ModelReadyRequest(name=model)),
        (stub.ModelInfer, request),
    ):
        try:
            call(message, metadata=metadata, timeout=10)
            answers.append(("OK", ""))
        except grpc.RpcError as exc:
            answers.append((exc.code().name, exc.details()))
    return answers


def _rest_answers(running, tokens, model: str) -> list[tuple[int, bytes]]:
    # The same request id on every call, so bodies can be compared byte for byte.
    headers = {
        **auth_header(tokens, "other"),
        "Content-Type": "application/json",
        "X-Request-ID": "probe",
    }
    return [
        (r.status_code, r.content)
        for r in (
            httpx.request(m, running.url + p, content=b, headers=headers)
            for m, p, b in _rest_probes(model)
        )
    ]


def test_other_tenants_model_is_indistinguishable_from_missing(stack) -> None:
    """On every endpoint of both protocols, another tenant's model answers exactly like no model.

    Tenant 'other' probes the demo tenant's 'digits' (which exists there), then
    probes it again after the demo tenant deleted it: every status and body must
    be byte-identical.
    """
    running, env, tokens = stack
    from tests.servers import cli

    with grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
        before_rest = _rest_answers(running, tokens, "digits")
        before_grpc = _grpc_probes(channel, tokens["other"], "digits")
        cli("models", "delete", "digits", "--tenant", "demo", env=env)
        after_rest = _rest_answers(running, tokens, "digits")
        after_grpc = _grpc_probes(channel, tokens["other"], "digits")
    assert all(status == 404 for status, _ in before_rest), before_rest
    assert before_rest == after_rest
    assert all(code == "NOT_FOUND" for code, _ in before_grpc), before_grpc
    assert before_grpc == after_grpc


def _grpc_request(**changes):
    # Tenant 'other' and its own model: the cross-tenant test above deletes 'digits'.
    request = inference_pb2.ModelInferRequest(model_name=changes.get("model", "secret"))
    entry = request.inputs.add(
        name=changes.get("name", "input"),
        datatype=changes.get("datatype", "FP32"),
        shape=changes.get("shape", [1, 64]),
    )
    if "typed" in changes:
        entry.contents.fp32_contents.extend(changes["typed"])
    else:
        request.raw_input_contents.append(changes.get("raw", x1))
    if changes.get("extra_raw"):
        request.raw_input_contents.append(b"\x00")
    return request


GRPC_CASES = [
    ("raw size", _grpc_request(raw=x1[:100]), "INVALID_ARGUMENT", "256 expected"),
    ("raw entries", _grpc_request(extra_raw=True), "INVALID_ARGUMENT", "raw_input_contents"),
    ("typed count", _grpc_request(typed=[0.0] * 10), "INVALID_ARGUMENT", "10 values"),
    ("unknown input", _grpc_request(name="pixels"), "INVALID_ARGUMENT", "unknown input 'pixels'"),
    (
        "wrong datatype",
        _grpc_request(datatype="FP64", raw=bytes(512)),
        "INVALID_ARGUMENT",
        "expects FP32",
    ),
    ("bad datatype", _grpc_request(datatype="FLOAT"), "INVALID_ARGUMENT", "unknown datatype"),
    ("wrong shape", _grpc_request(shape=[1, 32], raw=x1[:128]), "INVALID_ARGUMENT", "shape"),
    ("unknown model", _grpc_request(model="nothing"), "NOT_FOUND", "model 'nothing' not found"),
]


@pytest.mark.parametrize(
    ("name", "request_", "code", "words"), GRPC_CASES, ids=[c[0] for c in GRPC_CASES]
)
def test_bad_grpc_request_is_named(stack, name, request_, code, words) -> None:
    """Malformed ModelInfer calls get INVALID_ARGUMENT or NOT_FOUND naming the problem, never INTERNAL."""
    running, _, tokens = stack
    with grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(
                request_, metadata=[("authorization", f"Bearer {tokens['other']}")], timeout=10
            )
    assert caught.value.code().name == code
    assert words in caught.value.details()
    trailers = dict(caught.value.trailing_metadata() or ())
    assert trailers.get("error-code") in ("invalid_request", "not_found")
