"""A deleted tenant's unexpired tokens stop working, through a real server, on both databases.

Tokens live up to an hour; deleting their tenant must not leave that long a
window in which a tenant admin's token still reads the tenant's audit trail.
"""

from __future__ import annotations

import json
import time

import grpc
import httpx
import pytest

from protos import inference_pb2, inference_pb2_grpc
from tests.digits import DEMO_MODEL
from tests.functional.conftest import token_for
from tests.functional.databases import server_database  # noqa: F401 - a fixture
from tests.servers import cli, server_env, start_server

ROW = [0.5] * 64
TENANTS = ("gone-rest", "gone-cli", "kept")


def _infer(url: str, token: str) -> httpx.Response:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": ROW}]}
    return httpx.post(
        f"{url}/v2/models/digits/infer",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def _audit(url: str, token: str) -> httpx.Response:
    return httpx.get(f"{url}/admin/v1/audit", headers={"Authorization": f"Bearer {token}"})


def _grpc_infer_code(port: int, token: str) -> grpc.StatusCode:
    request = inference_pb2.ModelInferRequest(model_name="digits")
    entry = request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    entry.contents.fp32_contents.extend(ROW)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            stub.ModelInfer(request, metadata=[("authorization", f"Bearer {token}")], timeout=30)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, server_database):  # noqa: F811 - the fixture above
    """A server with three tenants, each with the digits model and a tenant-admin token."""
    data_dir = tmp_path_factory.mktemp("deleted")
    env = server_env(data_dir, **server_database)
    cli("init", env=env)
    clients = {}
    for tenant in TENANTS:
        cli("tenants", "create", tenant, env=env)
        clients[tenant] = json.loads(
            cli(
                "clients", "create", "--tenant", tenant, "--role", "tenant-admin", "--json", env=env
            ).stdout
        )
        cli("models", "push", str(DEMO_MODEL), "--name", "digits", "--tenant", tenant, env=env)
    admin = json.loads(
        cli("clients", "create", "--role", "platform-admin", "--json", env=env).stdout
    )
    running = start_server(env, data_dir / "server.log")
    tokens = {
        t: token_for(running.url, c["client_id"], c["client_secret"]) for t, c in clients.items()
    }
    tokens["admin"] = token_for(running.url, admin["client_id"], admin["client_secret"])
    yield running, env, tokens
    running.stop()


def test_tokens_work_before_deletion(deployment) -> None:
    """Control: every tenant admin's token reads its audit trail and runs its model."""
    running, _, tokens = deployment
    for tenant in TENANTS:
        assert _audit(running.url, tokens[tenant]).status_code == 200, tenant
        reply = _infer(running.url, tokens[tenant])
        assert reply.status_code == 200, (tenant, reply.text)


def test_deleted_over_rest_refused_at_once(deployment) -> None:
    """Deleted through this gateway: the next call with the tenant's token is a 401."""
    running, _, tokens = deployment
    reply = httpx.delete(
        f"{running.url}/admin/v1/tenants/gone-rest",
        headers={"Authorization": f"Bearer {tokens['admin']}"},
    )
    assert reply.status_code == 204, reply.text
    audit = _audit(running.url, tokens["gone-rest"])
    assert audit.status_code == 401, audit.text
    assert audit.json()["error"] == "tenant is suspended"  # the same refusal as suspension
    assert audit.headers["www-authenticate"].startswith("Bearer")
    assert _infer(running.url, tokens["gone-rest"]).status_code == 401
    assert (
        _grpc_infer_code(running.grpc_port, tokens["gone-rest"]) == grpc.StatusCode.UNAUTHENTICATED
    )
    # Another tenant is untouched.
    assert _audit(running.url, tokens["kept"]).status_code == 200
    reply = _infer(running.url, tokens["kept"])
    assert reply.status_code == 200, reply.text


def test_deleted_from_another_process_refused_within_seconds(deployment) -> None:
    """Deleted by the CLI (another process): the gateway's deny-list picks it up within ~1 s."""
    running, env, tokens = deployment
    cli("tenants", "delete", "gone-cli", "--yes", env=env)
    deadline = time.monotonic() + 5
    while _audit(running.url, tokens["gone-cli"]).status_code != 401:
        assert time.monotonic() < deadline, "a deleted tenant's token still works after 5 s"
        time.sleep(0.1)
    assert _infer(running.url, tokens["gone-cli"]).status_code == 401
    assert (
        _grpc_infer_code(running.grpc_port, tokens["gone-cli"]) == grpc.StatusCode.UNAUTHENTICATED
    )


def test_tenant_created_a_moment_ago_is_served(deployment) -> None:
    """A tenant newer than the last deny-list refresh is not refused (refusal is by deletion)."""
    running, _, tokens = deployment
    headers = {"Authorization": f"Bearer {tokens['admin']}"}
    assert (
        httpx.post(
            f"{running.url}/admin/v1/tenants", json={"name": "brand-new"}, headers=headers
        ).status_code
        == 201
    )
    client = httpx.post(
        f"{running.url}/admin/v1/tenants/brand-new/clients",
        json={"role": "tenant-admin"},
        headers=headers,
    ).json()
    token = token_for(running.url, client["client_id"], client["client_secret"])
    assert _audit(running.url, token).status_code == 200
