"""Per-tenant limits refuse a flooding tenant with 429 / RESOURCE_EXHAUSTED and spare the others."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time

import grpc
import httpx
import numpy as np
import pytest

from protos import inference_pb2, inference_pb2_grpc
from server.service.audit import calls_in
from tests.digits import DEMO_MODEL, digits_test_split
from tests.functional.conftest import token_for
from tests.servers import cli, server_env, start_server, wait_for

BURST = 20
"""Calls a tenant may make at once."""
RATE = 2
"""Calls per second per tenant after the burst: slow, so a token seldom comes back
between a refusal and the next call, however busy the machine."""


@pytest.fixture(scope="module", params=[1, 2], ids=["one-gateway", "two-gateways"])
def limited(request, tmp_path_factory):
    """A server with a per-tenant rate limit; tokens of the demo tenant and of tenant 'flood'.

    Also with two gateway processes on the same ports: a tenant's calls spread
    over both, and the limits must still hold for the host as a whole.
    """
    data_dir = tmp_path_factory.mktemp("limits")
    env = server_env(
        data_dir,
        SEALSERVE_TENANT_RATE_LIMIT=str(RATE),
        SEALSERVE_TENANT_RATE_BURST=str(BURST),
        # Above the 60 calls the tests send at once: the rate limit alone decides.
        SEALSERVE_TENANT_MAX_CONCURRENCY="64",
        SEALSERVE_LOG_LEVEL="WARNING",
        SEALSERVE_GATEWAYS=str(request.param),
        SEALSERVE_WORKERS=str(request.param),
    )
    cli("init", "--demo", env=env)
    cli("tenants", "create", "flood", env=env)
    cli("models", "push", str(DEMO_MODEL), "--name", "digits", "--tenant", "flood", env=env)
    flood = json.loads(
        cli(
            "clients", "create", "--tenant", "flood", "--role", "tenant-client", "--json", env=env
        ).stdout
    )
    running = start_server(env, data_dir / "server.log")
    demo = json.loads((data_dir / "demo-client.json").read_text())
    yield (
        running,
        {
            "demo": token_for(running.url, demo["client_id"], demo["client_secret"]),
            "flood": token_for(running.url, flood["client_id"], flood["client_secret"]),
        },
        env,
    )
    running.stop()


def body() -> dict:
    """One digits image as a v2 request."""
    x, _ = digits_test_split()
    return {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": x[0].tolist()}]
    }


def test_flooding_tenant_gets_429_with_retry_after_and_others_do_not(limited, request) -> None:
    """Past its burst a tenant is refused with 429 + Retry-After; another tenant is served meanwhile.

    The refusals reach the audit log as counts, not a record each.
    """
    server, tokens, env = limited
    url = f"{server.url}/v2/models/digits/infer"

    async def scenario() -> tuple[list[httpx.Response], list[httpx.Response]]:
        async with httpx.AsyncClient(timeout=30) as http:

            async def call(tenant: str) -> httpx.Response:
                headers = {"Authorization": f"Bearer {tokens[tenant]}"}
                return await http.post(url, json=body(), headers=headers)

            flood = await asyncio.gather(*(call("flood") for _ in range(3 * BURST)))
            other = [await call("demo") for _ in range(BURST // 2)]
            return flood, other

    flood, other = asyncio.run(scenario())
    codes = [reply.status_code for reply in flood]
    assert set(codes) == {200, 429}
    if request.node.callspec.params["limited"] == 2:
        # Generated request ids start with the answering process's prefix: both answered.
        assert len({reply.headers["x-request-id"][:12] for reply in flood}) == 2
    # The burst, plus what refilled meanwhile: for the host, however many gateways took calls.
    assert codes.count(200) <= BURST + 1
    refused = next(reply for reply in flood if reply.status_code == 429)
    assert refused.json()["code"] == "overloaded"
    assert int(refused.headers["Retry-After"]) >= 1
    assert [reply.status_code for reply in other] == [200] * (BURST // 2)
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'sealserve_tenant_limited_total{reason="rate"' in metrics or (
        'reason="concurrency"' in metrics
    )

    def refusals_counted() -> int:
        listed = cli(
            "audit", "list", "--tenant", "flood", "--action", "inference.refused", "--json", env=env
        ).stdout
        return sum(
            row["count"] for entry in json.loads(listed) for row in entry["details"]["refused"]
        )

    # Flushed within a second by each gateway process that refused some.
    wait_for(lambda: refusals_counted() == codes.count(429), 10, "the refusals in the audit log")
    listed = cli(
        "audit", "list", "--tenant", "flood", "--action", "inference.calls", "--json", env=env
    )
    recorded = [c for entry in json.loads(listed.stdout) for c in calls_in(entry["details"])]
    assert len(recorded) == codes.count(200)  # admitted calls keep a record each


def test_limits_apply_over_grpc_as_resource_exhausted(limited) -> None:
    """The same limit refuses gRPC calls with RESOURCE_EXHAUSTED and the public code."""
    server, tokens, _ = limited
    x, _ = digits_test_split()
    request = inference_pb2.ModelInferRequest(model_name="digits")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.asarray(x[:1], dtype="<f4").tobytes())

    async def scenario() -> list[grpc.StatusCode | None]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            metadata = [("authorization", f"Bearer {tokens['flood']}")]

            async def call() -> grpc.StatusCode | None:
                try:
                    await stub.ModelInfer(request, metadata=metadata, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    codes = dict(exc.trailing_metadata() or ())
                    return exc.code() if codes.get("error-code") == "overloaded" else None
                return grpc.StatusCode.OK

            return await asyncio.gather(*(call() for _ in range(3 * BURST)))

    codes = asyncio.run(scenario())
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_a_tenant_over_its_limit_is_refused_before_its_body_is_read(limited) -> None:
    """Once the bucket is empty even a malformed body gets 429, not 400: nothing was decoded.

    A token comes back every 1/RATE s, so one of the malformed calls may find
    it and get its 400; the others must be refused before their body is read.
    """
    server, tokens, _ = limited
    headers = {"Authorization": f"Bearer {tokens['flood']}"}
    url = f"{server.url}/v2/models/digits/infer"
    with httpx.Client(timeout=30) as http:
        replies = [http.post(url, json=body(), headers=headers) for _ in range(3 * BURST)]
        assert 429 in {reply.status_code for reply in replies}
        malformed = [http.post(url, content=b"{not json", headers=headers) for _ in range(5)]
        predict = [
            http.post(f"{server.url}/v1/models/digits:predict", content=b"[", headers=headers)
            for _ in range(5)
        ]
    for replies in (malformed, predict):
        statuses = [reply.status_code for reply in replies]
        assert statuses.count(429) >= 3, statuses
        assert set(statuses) <= {400, 429}, statuses
    assert {r.json()["code"] for r in malformed + predict if r.status_code == 429} == {"overloaded"}


def test_a_refusal_needs_no_body_and_keeps_the_connection(limited) -> None:
    """A gateway that refused the tenant a moment ago refuses its next call from the head.

    The 429 arrives before the body is sent (the gateway started nothing for
    the call), and the same connection then serves the other tenant. A token
    comes back every 1/RATE s, so a head may find one and wait for its body:
    the test then sends it and tries again.
    """
    server, tokens, _ = limited
    payload = json.dumps(body()).encode()

    def request(tenant: str) -> bytes:
        return infer_head(tokens[tenant], len(payload))

    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as sock:
            empty_the_bucket(sock, tokens["flood"], payload)
            sock.sendall(request("flood"))  # the head alone
            sock.settimeout(2)
            try:
                status, head, refusal = read_answer(sock)
            except TimeoutError:
                continue  # a token came back: this call waits for its body
            finally:
                sock.settimeout(30)
            assert status == 429
            assert b"\r\nretry-after: " in head
            # The same body as every refusal: the public code and the request id.
            request_id = re.search(rb"x-request-id: (\S+)", head)[1].decode()
            assert json.loads(refusal) == {
                "error": "this tenant's inference rate limit is exceeded; retry later",
                "code": "overloaded",
                "request_id": request_id,
            }
            sock.sendall(payload + request("demo") + payload)
            assert read_answer(sock)[0] == 200
            return
    pytest.fail("no call was refused from its head in five tries")


@pytest.mark.parametrize("limited", [1], indirect=True, ids=["one-gateway"])
def test_heads_arriving_together_each_need_a_token_of_their_own(limited) -> None:
    """While refusing, a head that finds a token takes it: the heads after it are refused at once.

    The bucket is emptied, then left to refill by one token (and a bit);
    eight heads then arrive on eight connections, none with its body. The
    heads that found a token wait for their bodies, and get 200 once sent;
    every other head is answered 429 from the head alone. A check that only
    looked at the bucket would let all eight wait, since none of them has
    taken the token yet.
    """
    server, tokens, _ = limited
    payload = json.dumps(body()).encode()
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as sock:
        empty_the_bucket(sock, tokens["flood"], payload)
    time.sleep(1.2 / RATE)
    heads = [
        socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) for _ in range(8)
    ]
    try:
        for sock in heads:
            sock.sendall(infer_head(tokens["flood"], len(payload)))
        waiting = []
        for sock in heads:
            sock.settimeout(2)
            try:
                assert read_answer(sock)[0] == 429
            except TimeoutError:
                waiting.append(sock)
        # One token came back, two if this machine is slow; not all eight.
        assert 1 <= len(waiting) <= 2, f"{len(waiting)} heads were let through"
        for sock in waiting:
            sock.settimeout(30)
            sock.sendall(payload)
            assert read_answer(sock)[0] == 200
    finally:
        for sock in heads:
            sock.close()


def infer_head(token: str, length: int) -> bytes:
    """The head of a v2 infer call to the digits model with a body of ``length`` bytes."""
    return (
        f"POST /v2/models/digits/infer HTTP/1.1\r\nhost: x\r\n"
        f"authorization: Bearer {token}\r\ncontent-type: application/json\r\n"
        f"content-length: {length}\r\n\r\n"
    ).encode()


def read_answer(sock: socket.socket) -> tuple[int, bytes, bytes]:
    """One HTTP response: its status, its head (lower case) and its body."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536) or pytest.fail("connection closed")
    head, _, rest = received.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE)[1])
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split(b" ")[1]), head.lower(), rest


def empty_the_bucket(sock: socket.socket, token: str, payload: bytes) -> None:
    """Call through ``sock`` until refused: its gateway process then refuses from heads."""
    while True:
        sock.sendall(infer_head(token, len(payload)) + payload)
        if read_answer(sock)[0] == 429:
            return
