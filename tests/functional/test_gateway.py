"""The real ``sealserve`` process: start, health over REST and gRPC, CLI, graceful stop."""

from __future__ import annotations

import http.client
import json
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.servers import cli, server_env, start_server, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module, on a fresh data directory, like `make run`."""
    data_dir = tmp_path_factory.mktemp("data")
    env = server_env(data_dir)
    cli("init", "--if-missing", env=env)
    running = start_server(env, data_dir / "server.log")
    yield running, env
    running.stop()


def test_rest_health(server) -> None:
    """Live and ready answer 200 once the database is migrated; a request id comes back."""
    running, _ = server
    live = httpx.get(f"{running.url}/v2/health/live")
    ready = httpx.get(f"{running.url}/v2/health/ready", headers={"x-request-id": "abc-123"})
    assert live.status_code == 200
    assert ready.status_code == 200
    assert ready.headers["x-request-id"] == "abc-123"


def test_grpc_health_is_serving(server) -> None:
    """The standard gRPC health service answers SERVING."""
    running, _ = server
    with grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_health_watch_streams_and_unknown_methods_are_unimplemented(server) -> None:
    """The guard wraps streaming answers too, and a method nobody serves is UNIMPLEMENTED."""
    running, _ = server
    with grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        first = next(watch)
        watch.cancel()
        unknown = channel.unary_unary("/inference.GRPCInferenceService/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as refused:
            unknown(b"", timeout=5)
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_unknown_route_is_a_json_404(server) -> None:
    """Errors come back in the one JSON shape, with a request id, never a stack trace."""
    running, _ = server
    reply = httpx.get(f"{running.url}/v2/nope")
    assert reply.status_code == 404
    body = reply.json()
    assert set(body) == {"error", "code", "request_id"}
    assert body["code"] == "not_found"


def test_an_idle_connection_outlives_the_clients_pool_expiry(server) -> None:
    """A connection idle for longer than httpx's pool keeps it (5 s) still serves.

    The server must not be the side that ends an idle connection, or a
    client's next request can meet it closing and fail with a reset.
    """
    running, _ = server
    connection = http.client.HTTPConnection("127.0.0.1", running.rest_port, timeout=5)
    try:
        connection.request("GET", "/v2/health/live")
        first = connection.getresponse()
        first.read()
        assert first.status == 200
        socket_before = connection.sock
        time.sleep(5.5)
        # On a connection the server had closed this raises RemoteDisconnected.
        connection.request("GET", "/v2/health/live")
        second = connection.getresponse()
        second.read()
        assert second.status == 200
        assert connection.sock is socket_before  # the same connection, not a new one
    finally:
        connection.close()


def test_metrics_count_requests(server) -> None:
    """Prometheus metrics count requests by route template."""
    running, _ = server
    httpx.get(f"{running.url}/v2/health/live")
    text = httpx.get(f"{running.url}/metrics").text
    assert (
        'sealserve_http_requests_total{method="GET",route="/v2/health/live",status="200"}' in text
    )


def test_metrics_say_where_each_worker_runs(server) -> None:
    """``sealserve_worker_info`` names a local worker as local (a remote one: its address)."""
    running, _ = server

    def local_info() -> bool:
        text = httpx.get(f"{running.url}/metrics").text
        return 'sealserve_worker_info{address="",location="local",worker="0"} 1.0' in text

    wait_for(local_info, 10, "the worker's info line")  # the status is read each second


def test_cli_tenants_against_the_same_database(server) -> None:
    """The tenants commands work beside a running server and print JSON for scripts."""
    _, env = server
    created = json.loads(cli("tenants", "create", "acme", "--json", env=env).stdout)
    assert created["name"] == "acme"
    duplicate = cli("tenants", "create", "acme", env=env, check=False)
    assert duplicate.returncode == 1
    assert "already exists" in duplicate.stderr
    assert "Traceback" not in duplicate.stderr
    cli("tenants", "suspend", "acme", env=env)
    listed = json.loads(cli("tenants", "list", "--json", env=env).stdout)
    assert [(t["name"], t["state"]) for t in listed] == [("acme", "suspended")]
    cli("tenants", "delete", "acme", "--yes", env=env)
    assert json.loads(cli("tenants", "list", "--json", env=env).stdout) == []
    missing = cli("tenants", "delete", "acme", "--yes", env=env, check=False)
    assert missing.returncode == 1
    assert "not found" in missing.stderr


def test_db_commands(tmp_path) -> None:
    """Db current / downgrade / upgrade report and move the schema."""
    env = server_env(tmp_path)
    cli("init", env=env)
    assert json.loads(cli("db", "current", "--json", env=env).stdout)["up_to_date"] is True
    cli("db", "downgrade", "base", env=env)
    assert json.loads(cli("db", "current", "--json", env=env).stdout)["current"] is None
    cli("db", "upgrade", env=env)
    assert json.loads(cli("db", "current", "--json", env=env).stdout)["up_to_date"] is True


def test_production_start_without_key_fails_clearly(tmp_path) -> None:
    """In production a missing key file stops the start with a message, not a trace."""
    env = server_env(
        tmp_path, SEALSERVE_ENV="production", SEALSERVE_DATABASE_URL=f"sqlite:///{tmp_path}/x.db"
    )
    result = cli("serve", env=env, check=False)
    assert result.returncode == 1
    assert "master key file" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_stops_gracefully(tmp_path) -> None:
    """SIGTERM ends the process with exit code 0 and a 'stopped' log line."""
    env = server_env(tmp_path)
    running = start_server(env, tmp_path / "server.log")
    assert running.stop() == 0
    assert "stopped" in running.output()


def test_metrics_count_grpc_calls_by_method_and_code(server) -> None:
    """gRPC calls are counted by method and status code, refusals included."""
    running, _ = server
    from protos import inference_pb2, inference_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(inference_pb2.ModelInferRequest(model_name="digits"), timeout=5)
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    text = httpx.get(f"{running.url}/metrics").text
    assert 'sealserve_grpc_requests_total{code="OK",method="/grpc.health.v1.Health/Check"}' in text
    assert (
        'sealserve_grpc_requests_total{code="UNAUTHENTICATED",'
        'method="/inference.GRPCInferenceService/ModelInfer"}' in text
    )
