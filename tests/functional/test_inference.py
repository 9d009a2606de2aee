"""Inference through a real server: Open Inference Protocol (REST, gRPC), TF Serving, admin.

One server per module, started as `make run` starts it (`init --demo`, then
`serve`), plus a second tenant that owns a model called ``secret``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import numpy as np
import tritonclient.http as httpclient

from protos import inference_pb2, inference_pb2_grpc
from server.rest.protocol import WHOLE_BODY_BYTES
from server.service.audit import calls_in
from tests.digits import DEMO_MODEL, accuracy, digits_test_split, in_process_probabilities
from tests.functional.conftest import auth_header as _auth
from tests.servers import cli, wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_rest_v2_json_matches_in_process(stack) -> None:
    """All 450 test digits over REST JSON give exactly the in-process predictions."""
    running, _, tokens = stack
    x, _ = digits_test_split()
    body = {
        "id": "batch-1",
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}
        ],
    }
    reply = httpx.post(
        f"{running.url}/v2/models/digits/infer", json=body, headers=_auth(tokens), timeout=60
    )
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["id"] == "batch-1"
    assert answer["model_name"] == "digits"
    (output,) = answer["outputs"]
    assert output["name"] == "probabilities"
    assert output["shape"] == [450, 10]
    probabilities = np.asarray(output["data"], dtype=np.float32).reshape(450, 10)
    expected = in_process_probabilities()
    assert (probabilities.argmax(1) == expected.argmax(1)).all()
    assert accuracy(probabilities) == accuracy(expected) > 0.9


def test_tritonclient_http(stack) -> None:
    """The official tritonclient HTTP client: health, metadata, binary inference with a token."""
    running, _, tokens = stack
    client = httpclient.InferenceServerClient(url=running.url.removeprefix("http://"))
    headers = _auth(tokens)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits", headers=headers)
    metadata = client.get_model_metadata("digits", headers=headers)
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    x, _ = digits_test_split()
    inputs = [httpclient.InferInput("input", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x, binary_data=True)
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=True)]
    result = client.infer("digits", inputs, outputs=outputs, headers=headers)
    probabilities = result.as_numpy("probabilities")
    np.testing.assert_allclose(probabilities, in_process_probabilities(), rtol=1e-6, atol=1e-7)
    assert accuracy(probabilities) == accuracy(in_process_probabilities())


def test_a_request_large_enough_to_arrive_whole_answers_every_row(stack) -> None:
    """1,350 digits in binary (346 KB): a body the gateway hands over in one piece."""
    running, _, tokens = stack
    client = httpclient.InferenceServerClient(url=running.url.removeprefix("http://"))
    x, _ = digits_test_split()
    rows = np.concatenate([x, x[::-1], x])
    assert rows.nbytes >= WHOLE_BODY_BYTES
    inputs = [httpclient.InferInput("input", list(rows.shape), "FP32")]
    inputs[0].set_data_from_numpy(rows, binary_data=True)
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=True)]
    result = client.infer("digits", inputs, outputs=outputs, headers=_auth(tokens))
    expected = in_process_probabilities()
    np.testing.assert_allclose(
        result.as_numpy("probabilities"),
        np.concatenate([expected, expected[::-1], expected]),
        rtol=1e-6,
        atol=1e-7,
    )


def test_tritonclient_grpc(stack, tmp_path) -> None:
    """The official tritonclient gRPC client (own process): health, metadata, inference, errors."""
    running, _, tokens = stack
    x, _ = digits_test_split()
    npy = tmp_path / "x.npy"
    np.save(npy, x)
    done = subprocess.run(  # noqa: S603 - our own client script
        [
            sys.executable,
            str(ROOT / "tests" / "clients" / "triton_grpc.py"),
            f"127.0.0.1:{running.grpc_port}",
            tokens["demo"],
            "digits",
            str(npy),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["live"] and result["ready"] and result["model_ready"]
    assert [i["name"] for i in result["metadata"]["inputs"]] == ["input"]
    assert result["metadata"]["inputs"][0]["shape"] == ["-1", "64"]
    probabilities = np.asarray(result["probabilities"], dtype=np.float32)
    assert accuracy(probabilities) == accuracy(in_process_probabilities())
    assert result["bad_token_status"] == "StatusCode.UNAUTHENTICATED"
    assert result["missing_status"] == "StatusCode.NOT_FOUND"


def test_tf_serving_row_and_columnar(stack) -> None:
    """TF Serving's predict in row and columnar form, by default, version and label."""
    running, env, tokens = stack
    x, _ = digits_test_split()
    headers = _auth(tokens)
    rows = httpx.post(
        f"{running.url}/v1/models/digits:predict",
        json={"instances": x.tolist()},
        headers=headers,
        timeout=60,
    )
    assert rows.status_code == 200, rows.text
    predictions = np.asarray(rows.json()["predictions"])
    assert predictions.shape == (450, 10)
    assert accuracy(predictions) == accuracy(in_process_probabilities())
    columns = httpx.post(
        f"{running.url}/v1/models/digits/versions/1:predict",
        json={"inputs": {"input": x[:5].tolist()}},
        headers=headers,
    )
    assert columns.status_code == 200, columns.text
    np.testing.assert_allclose(np.asarray(columns.json()["outputs"]), predictions[:5], rtol=1e-6)
    cli("models", "label", "digits", "stable", "1", "--tenant", "demo", env=env)
    labelled = httpx.post(
        f"{running.url}/v1/models/digits/labels/stable:predict",
        json={"instances": [x[0].tolist()]},
        headers=headers,
    )
    assert labelled.status_code == 200, labelled.text
    status = httpx.get(f"{running.url}/v1/models/digits", headers=headers).json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    metadata = httpx.get(f"{running.url}/v1/models/digits/metadata", headers=headers).json()
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["input"]["dtype"] == "DT_FLOAT"


def test_grpc_own_stubs_raw_and_typed(stack) -> None:
    """ModelInfer accepts typed contents and raw contents and answers raw outputs."""
    running, _, tokens = stack
    x, _ = digits_test_split()
    metadata = [("authorization", f"Bearer {tokens['demo']}")]
    with grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        typed = inference_pb2.ModelInferRequest(model_name="digits")
        entry = typed.inputs.add(name="input", datatype="FP32", shape=[3, 64])
        entry.contents.fp32_contents.extend(x[:3].reshape(-1).tolist())
        raw = inference_pb2.ModelInferRequest(model_name="digits", model_version="1")
        raw.inputs.add(name="input", datatype="FP32", shape=[3, 64])
        raw.raw_input_contents.append(x[:3].astype("<f4").tobytes())
        answers = [stub.ModelInfer(r, metadata=metadata, timeout=30) for r in (typed, raw)]
    for answer in answers:
        got = np.frombuffer(answer.raw_output_contents[0], dtype="<f4").reshape(3, 10)
        np.testing.assert_allclose(got, in_process_probabilities()[:3], rtol=1e-6)


def test_labels_and_versions_resolve(stack) -> None:
    """A second version becomes the default; labels and explicit versions pick others."""
    running, env, tokens = stack
    headers = _auth(tokens)
    reply = httpx.post(
        f"{running.url}/admin/v1/models/digits/versions",
        content=DEMO_MODEL.read_bytes(),
        headers={**headers, "Content-Type": "application/octet-stream"},
    )
    # The demo client holds infer and models:read only: uploads need models:write.
    assert reply.status_code == 403
    cli("models", "push", str(DEMO_MODEL), "--name", "digits", "--tenant", "demo", env=env)
    # The CLI wrote to the database from another process: the server's resolution
    # cache follows within its 2 s lifetime, never later.
    wait_for(
        lambda: (
            httpx.get(f"{running.url}/v2/models/digits", headers=headers).json()["versions"]
            == ["2"]
        ),
        timeout=3.0,
        what="version 2 as the default",
    )
    assert httpx.get(f"{running.url}/v2/models/digits/versions/1", headers=headers).json()[
        "versions"
    ] == ["1"]
    cli("models", "label", "digits", "canary", "2", "--tenant", "demo", env=env)
    canary = httpx.get(f"{running.url}/v2/models/digits/versions/canary", headers=headers)
    assert canary.json()["versions"] == ["2"]
    assert (
        httpx.get(f"{running.url}/v2/models/digits/versions/9", headers=headers).status_code == 404
    )


def test_inference_calls_reach_the_audit_log(stack) -> None:
    """Each call (refused ones too) is recorded within a second, in its own tenant's log only."""
    import time

    running, _, tokens = stack
    x, _ = digits_test_split()
    headers = _auth(tokens, "other")
    body = {
        "id": "audited-1",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 64], "data": x[:2].tolist()}],
    }
    for _ in range(3):
        assert (
            httpx.post(
                f"{running.url}/v2/models/secret/infer", json=body, headers=headers
            ).status_code
            == 200
        )
    bad = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    assert (
        httpx.post(f"{running.url}/v2/models/secret/infer", json=bad, headers=headers).status_code
        == 400
    )
    time.sleep(1.5)
    entries = httpx.get(
        f"{running.url}/admin/v1/audit?action=inference.calls&limit=100", headers=headers
    ).json()["entries"]
    calls = [
        call
        for entry in entries
        for call in calls_in(entry["details"])
        if call["model"] == "secret"
    ]
    assert (
        len([c for c in calls if c["outcome"] == "success" and c["request_id"] == "audited-1"]) == 3
    )
    assert any(c["outcome"] == "invalid_request" for c in calls)
    assert all(c["version"] in ("1", "default") and c["latency_us"] >= 0 for c in calls)
    assert {e["tenant_id"] for e in entries} == {entries[0]["tenant_id"]}  # only tenant 'other'


def _write_calls(pid: int) -> int:
    """How many write system calls the process has made (``syscw`` in /proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError("no syscw in /proc/PID/io")


def test_each_rest_answer_leaves_in_one_write(stack) -> None:
    """Head and body of a response go to the socket together, not as two writes.

    Per sequential call the gateway writes the answer and one frame to its
    worker; uvicorn on its own adds a second write for the body.
    """
    server, _, tokens = stack
    x, _ = digits_test_split()
    body = {
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x[0].tolist()}]
    }
    calls = 300
    with httpx.Client(base_url=server.url, headers=_auth(tokens)) as client:
        client.post("/v2/models/digits/infer", json=body).raise_for_status()  # warm
        before = _write_calls(server.process.pid)
        for _ in range(calls):
            client.post("/v2/models/digits/infer", json=body).raise_for_status()
        writes = _write_calls(server.process.pid) - before
    # 2 per call, plus the audit log's few database writes per flush.
    assert writes / calls < 2.5, f"{writes} writes for {calls} calls"
