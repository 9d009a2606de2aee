"""Every datatype round-trips through an identity model over REST JSON, REST binary and gRPC."""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from protos import inference_pb2, inference_pb2_grpc
from tests.functional.conftest import auth_header
from tests.models import DATATYPES, identity_model, sample


@pytest.fixture(scope="module")
def identity(stack):
    """The identity model, uploaded by tenant 'other' through the admin API."""
    running, _, tokens = stack
    reply = httpx.post(
        f"{running.url}/admin/v1/models/identity/versions",
        content=identity_model(),
        headers={**auth_header(tokens, "other"), "Content-Type": "application/octet-stream"},
        timeout=120,
    )
    assert reply.status_code == 201, reply.text
    assert sorted(i["datatype"] for i in reply.json()["inputs"]) == sorted(DATATYPES)
    return running, tokens


def _all_inputs() -> dict[str, np.ndarray]:
    return {d: sample(d) for d in DATATYPES}


def _json_value(datatype: str, array: np.ndarray):
    if datatype == "BYTES":
        return [item.decode("utf-8", "backslashreplace") for item in array.reshape(-1)]
    return array.reshape(-1).tolist()


def test_rest_json(identity) -> None:
    """JSON data (flat lists) comes back equal for every numeric type, BOOL and UTF-8 BYTES."""
    running, tokens = identity
    inputs = _all_inputs()
    inputs["BYTES"] = np.array(
        [[b"", b"caf\xc3\xa9", b"x"], [b"a", b"trailing nul\x00", b"\xe2\x82\xac"]], dtype=object
    )
    body = {
        "inputs": [
            {"name": f"x_{d.lower()}", "datatype": d, "shape": [2, 3], "data": _json_value(d, a)}
            for d, a in inputs.items()
        ]
    }
    reply = httpx.post(
        f"{running.url}/v2/models/identity/infer", json=body, headers=auth_header(tokens, "other")
    )
    assert reply.status_code == 200, reply.text
    outputs = {o["name"]: o for o in reply.json()["outputs"]}
    for datatype, array in inputs.items():
        out = outputs[f"y_{datatype.lower()}"]
        assert out["datatype"] == datatype
        assert out["shape"] == [2, 3]
        assert out["data"] == _json_value(datatype, array), datatype


def test_rest_binary_tritonclient(identity) -> None:
    """The binary extension (tritonclient HTTP) returns every type bit-exact, raw BYTES included."""
    running, tokens = identity
    client = httpclient.InferenceServerClient(url=running.url.removeprefix("http://"))
    inputs = []
    for datatype, array in _all_inputs().items():
        entry = httpclient.InferInput(f"x_{datatype.lower()}", list(array.shape), datatype)
        entry.set_data_from_numpy(array, binary_data=True)
        inputs.append(entry)
    outputs = [
        httpclient.InferRequestedOutput(f"y_{d.lower()}", binary_data=True) for d in DATATYPES
    ]
    result = client.infer("identity", inputs, outputs=outputs, headers=auth_header(tokens, "other"))
    for datatype, array in _all_inputs().items():
        got = result.as_numpy(f"y_{datatype.lower()}")
        if datatype == "BYTES":
            assert got.reshape(-1).tolist() == array.reshape(-1).tolist()
        else:
            assert got.dtype == array.dtype, datatype
            np.testing.assert_array_equal(got, array)


def test_grpc_raw_and_typed(identity) -> None:
    """GRPC raw contents for every type, typed contents for every type that has a field."""
    running, tokens = identity
    metadata = [("authorization", f"Bearer {tokens['other']}")]
    with grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        raw = inference_pb2.ModelInferRequest(model_name="identity")
        typed = inference_pb2.ModelInferRequest(model_name="identity")
        from server.grpc.converters import _CONTENTS_FIELD
        from server.service.datatypes import to_raw

        for datatype, array in _all_inputs().items():
            name = f"x_{datatype.lower()}"
            raw.inputs.add(name=name, datatype=datatype, shape=[2, 3])
            raw.raw_input_contents.append(to_raw(array, datatype))
            entry = typed.inputs.add(name=name, datatype=datatype, shape=[2, 3])
            if datatype in _CONTENTS_FIELD:
                getattr(entry.contents, _CONTENTS_FIELD[datatype]).extend(
                    array.reshape(-1).tolist()
                )
        answers = [stub.ModelInfer(raw, metadata=metadata, timeout=30)]
        # FP16 has no typed field: the typed request must leave it out, so it is refused.
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(typed, metadata=metadata, timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "raw_input_contents" in refused.value.details()
    from server.service.datatypes import from_raw

    answer = answers[0]
    for index, out in enumerate(answer.outputs):
        datatype = out.datatype
        got = from_raw(answer.raw_output_contents[index], datatype, tuple(out.shape), name=out.name)
        expected = sample(datatype)
        if datatype == "BYTES":
            assert got.reshape(-1).tolist() == expected.reshape(-1).tolist()
        else:
            np.testing.assert_array_equal(got, expected)
