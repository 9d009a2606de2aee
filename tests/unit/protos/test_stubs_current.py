"""Committed stubs are current, and our OIP binding is the one tritonclient speaks.

tritonclient.grpc and protos.inference_pb2 both register the symbols
``inference.*`` in protobuf's process-wide descriptor pool, from different
files, so they cannot be imported into one Python process (the second import
fails with "duplicate symbol"). Everything that needs tritonclient therefore
runs in a child process, which reports back as JSON.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2

from protos import generate, inference_pb2, inference_pb2_grpc

# The core Open Inference Protocol RPCs we serve; the Triton extensions
# (streaming, repository, shared memory, ...) are left out on purpose.
OIP_METHODS = {
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
}

# Runs in a child process with tritonclient imported. argv[1] is the port of
# the server started by the `triton_report` fixture.
_TRITON_PROBE = textwrap.dedent(
    """
    import base64, json, sys
    import numpy as np
    import tritonclient.grpc as tc
    from tritonclient.grpc import service_pb2

    # The descriptor goes first, so a broken call below still leaves the
    # field-by-field comparison something to report.
    report = {"descriptor": base64.b64encode(service_pb2.DESCRIPTOR.serialized_pb).decode()}
    try:
        client = tc.InferenceServerClient(url=f"127.0.0.1:{sys.argv[1]}")
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        inp = tc.InferInput("input", [2, 3], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer(
            "digits", [inp], model_version="3", request_id="req-1",
            outputs=[tc.InferRequestedOutput("probabilities")],
        )
        report.update(
            live=client.is_server_live(),
            ready=client.is_server_ready(),
            model_ready=client.is_model_ready("digits", "3"),
            server=client.get_server_metadata(as_json=True),
            metadata=client.get_model_metadata("digits", as_json=True),
            output=result.as_numpy("probabilities").tolist(),
            output_dtype=str(result.as_numpy("probabilities").dtype),
            response=result.get_response(as_json=True),
        )
        client.close()
    except Exception as exc:
        report["error"] = repr(exc)
    print(json.dumps(report))
    """
)


class _Servicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    """Answers with fixed values, doubling FP32 inputs in ModelInfer.

    It checks what arrives, so a field-number mismatch on the request path
    shows up as a failed call rather than passing silently.
    """

    def ServerLive(self, _request, _context):  # noqa: N802 - generated name
        return inference_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, _request, _context):  # noqa: N802
        return inference_pb2.ServerReadyResponse(ready=True)

    def ModelReady(self, request, _context):  # noqa: N802
        ok = (request.name, request.version) == ("digits", "3")
        return inference_pb2.ModelReadyResponse(ready=ok)

    def ServerMetadata(self, _request, _context):  # noqa: N802
        return inference_pb2.ServerMetadataResponse(name="sealserve", version="0.1.0")

    def ModelMetadata(self, request, _context):  # noqa: N802
        tensor = inference_pb2.ModelMetadataResponse.TensorMetadata
        return inference_pb2.ModelMetadataResponse(
            name=request.name,
            versions=["3"],
            platform="tensorflow_lite",
            inputs=[tensor(name="input", datatype="FP32", shape=[-1, 64])],
            outputs=[tensor(name="probabilities", datatype="FP32", shape=[-1, 10])],
        )

    def ModelInfer(self, request, context):  # noqa: N802
        (tensor,) = request.inputs
        (raw,) = request.raw_input_contents
        (wanted,) = request.outputs
        if (request.model_name, request.model_version, request.id) != ("digits", "3", "req-1"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unexpected request header")
        if (tensor.name, tensor.datatype, list(tensor.shape)) != ("input", "FP32", [2, 3]):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unexpected input tensor")
        doubled = np.frombuffer(raw, dtype="<f4") * 2
        out = inference_pb2.ModelInferResponse.InferOutputTensor(
            name=wanted.name, datatype="FP32", shape=tensor.shape
        )
        return inference_pb2.ModelInferResponse(
            model_name=request.model_name,
            model_version=request.model_version,
            id=request.id,
            outputs=[out],
            raw_output_contents=[doubled.astype("<f4").tobytes()],
        )


@pytest.fixture(scope="module")
def triton_report() -> dict[str, Any]:
    """Serve our stubs in-process and drive them from tritonclient in a child."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        done = subprocess.run(  # noqa: S603 - fixed script, our own interpreter
            [sys.executable, "-c", _TRITON_PROBE, str(port)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        server.stop(grace=None)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])


def _shape(message: descriptor_pb2.DescriptorProto, prefix: str) -> dict[str, Any]:
    """Flatten a message and its nested types into comparable wire facts.

    Keyed by full name; each field is reduced to what decides the wire format
    and the generated accessors: name, number, type, label, referenced type,
    oneof membership. Declaration order and comments are not compared.
    """
    full = f"{prefix}.{message.name}"
    oneofs = [decl.name for decl in message.oneof_decl]
    fields = {
        field.number: (
            field.name,
            descriptor_pb2.FieldDescriptorProto.Type.Name(field.type),
            descriptor_pb2.FieldDescriptorProto.Label.Name(field.label),
            field.type_name,
            oneofs[field.oneof_index] if field.HasField("oneof_index") else None,
        )
        for field in message.field
    }
    flat = {full: {"fields": fields, "map_entry": message.options.map_entry}}
    for nested in message.nested_type:
        flat.update(_shape(nested, full))
    return flat


def _file_shapes(proto: descriptor_pb2.FileDescriptorProto) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for message in proto.message_type:
        flat.update(_shape(message, f".{proto.package}"))
    return flat


def _ours() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    inference_pb2.DESCRIPTOR.CopyToProto(proto)
    return proto


def _theirs(report: dict[str, Any]) -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(report["descriptor"]))


def test_generated_stubs_match_proto_sources():
    """Regenerating from protos/*.proto reproduces the committed stubs exactly."""
    assert generate.check() == [], "stale stubs: run `make protos` and commit the result"


def test_stale_files_names_changed_missing_and_orphaned():
    """The check names a changed stub, a missing one and one without a .proto."""
    expected = {"a_pb2.py": b"new", "b_pb2.py": b"same", "c_pb2.py": b"missing"}
    actual = {"a_pb2.py": b"old", "b_pb2.py": b"same", "gone_pb2.py": b"orphan"}
    assert generate.stale_files(expected, actual) == ["a_pb2.py", "c_pb2.py", "gone_pb2.py"]


def test_generated_code_imports_siblings_from_the_protos_package():
    """Stubs are generated with the repo root as include path (`-I .`)."""
    assert inference_pb2.DESCRIPTOR.name == "protos/inference.proto"
    source = (generate.PROTOS_DIR / "inference_pb2_grpc.py").read_text()
    assert "from protos import inference_pb2" in source


def test_package_and_service_names_match_the_protocol(triton_report):
    """Clients call /inference.GRPCInferenceService/<Method>: those names must agree."""
    ours, theirs = _ours(), _theirs(triton_report)
    assert ours.package == theirs.package == "inference"
    assert ours.syntax == theirs.syntax == "proto3"
    (service,) = ours.service
    (their_service,) = theirs.service
    assert service.name == their_service.name == "GRPCInferenceService"
    their_methods = {method.name: method for method in their_service.method}
    assert {method.name for method in service.method} == OIP_METHODS
    for method in service.method:
        twin = their_methods[method.name]
        assert (method.input_type, method.output_type) == (twin.input_type, twin.output_type)
        assert not method.client_streaming
        assert not method.server_streaming
        assert not twin.client_streaming
        assert not twin.server_streaming


def test_every_message_matches_tritonclient_field_by_field(triton_report):
    """Each message we define, nested ones included, matches tritonclient's.

    Same field names, numbers, types, labels, referenced types and oneofs.
    """
    ours = _file_shapes(_ours())
    theirs = _file_shapes(_theirs(triton_report))
    assert ours, "no messages found in inference.proto"
    for name, shape in ours.items():
        assert name in theirs, f"{name} is not an Open Inference Protocol message"
        assert shape == theirs[name], f"{name} differs from tritonclient's definition"


def test_every_message_the_rpcs_use_is_defined(triton_report):
    """No message that our six RPCs reach (transitively) is missing from our file."""
    theirs = _file_shapes(_theirs(triton_report))
    ours = _file_shapes(_ours())
    pending = [f".inference.{m}{s}" for m in OIP_METHODS for s in ("Request", "Response")]
    reached: set[str] = set()
    while pending:
        name = pending.pop()
        if name in reached:
            continue
        reached.add(name)
        pending.extend(
            type_name for (_, _, _, type_name, _) in theirs[name]["fields"].values() if type_name
        )
        pending.extend(nested for nested in theirs if nested.startswith(f"{name}."))
    assert reached <= ours.keys(), f"missing: {sorted(reached - ours.keys())}"


def test_tritonclient_health_and_metadata_calls_work(triton_report):
    """The client's health and metadata helpers decode our responses."""
    assert "error" not in triton_report, triton_report["error"]
    assert triton_report["live"] is True
    assert triton_report["ready"] is True
    assert triton_report["model_ready"] is True
    assert triton_report["server"]["name"] == "sealserve"
    meta = triton_report["metadata"]
    assert meta["platform"] == "tensorflow_lite"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "64"]}]
    assert meta["outputs"][0]["name"] == "probabilities"


def test_tritonclient_infer_round_trips_raw_tensors(triton_report):
    """Raw FP32 tensors survive the trip both ways.

    tritonclient's request reaches our servicer intact, and tritonclient turns
    our raw response back into the right array.
    """
    assert "error" not in triton_report, triton_report["error"]
    expected = (np.arange(6, dtype=np.float32).reshape(2, 3) * 2).tolist()
    assert triton_report["output"] == expected
    assert triton_report["output_dtype"] == "float32"
    response = triton_report["response"]
    assert (response["model_name"], response["model_version"], response["id"]) == (
        "digits",
        "3",
        "req-1",
    )
