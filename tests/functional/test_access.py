"""Access control through a real server over REST and gRPC: crafted tokens, tenants, clients, OAuth.

The crafted-token table (``tests/auth_cases.py``) is the same one the unit
suite runs against the verifier; here every case goes through HTTP to a real
``sealserve serve`` whose database holds the table's keys, deny-list and
suspended tenant, and which trusts the table's external issuer.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import httpx
import pytest

from tests.auth_cases import CASES, Outcome, TokenCase, make_context
from tests.digits import DEMO_MODEL
from tests.servers import cli, server_env, start_server
from tests.tokens_setup import prepare_data_dir

ADMIN_ROUTE = "/admin/v1/tenants"
BEARER_GRAMMAR = "authorization must be 'Bearer <token>'"


@pytest.fixture(scope="module")
def ctx():
    """The crafted-token context (keys in every state, external issuer)."""
    return make_context()


@pytest.fixture(scope="module")
def server(ctx, tmp_path_factory):
    """A server whose signing keys, deny-list and trusted issuer come from ``ctx``."""
    data_dir = tmp_path_factory.mktemp("access")
    env = prepare_data_dir(ctx, data_dir)
    running = start_server(env, data_dir / "server.log")
    yield running, env
    running.stop()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_crafted_token_on_admin_route(case: TokenCase, ctx, server) -> None:
    """Every attack is a 401 naming its reason; every control token is authenticated."""
    running, _ = server
    token = case.make(ctx)
    # HTTP trims trailing blanks from header values: "Bearer " arrives as "Bearer".
    # Header values go on the wire as bytes (UTF-8 here, as a hostile client may send).
    value = f"Bearer {token}".strip().encode()
    reply = httpx.get(running.url + ADMIN_ROUTE, headers={"Authorization": value})
    assert reply.status_code != 500
    if case.outcome is Outcome.ACCEPT:
        # Authenticated: a tenant token lacks tenants:manage (403), a platform token passes.
        assert reply.status_code in (200, 403), reply.text
    else:
        assert reply.status_code == 401, (case.name, reply.text)
        # The transport's Bearer grammar may refuse a token before the verifier sees it.
        assert reply.json()["error"] in (case.message, BEARER_GRAMMAR), case.name
        assert reply.headers["www-authenticate"].startswith("Bearer")


def _token(running, client_id: str, secret: str, **form: str) -> httpx.Response:
    return httpx.post(
        f"{running.url}/v1/auth/token",
        auth=(client_id, secret),
        data={"grant_type": "client_credentials", **form},
    )


@pytest.fixture(scope="module")
def admin(server):
    """A platform admin client and its bearer header."""
    running, env = server
    created = json.loads(
        cli("clients", "create", "--role", "platform-admin", "--json", env=env).stdout
    )
    reply = _token(running, created["client_id"], created["client_secret"])
    assert reply.status_code == 200, reply.text
    return created, {"Authorization": f"Bearer {reply.json()['access_token']}"}


def test_token_endpoint_answers_in_oauth_shape(server, admin) -> None:
    """Issued tokens carry the documented fields; errors use RFC 6749 codes, never cached."""
    running, _ = server
    created, _ = admin
    ok = _token(running, created["client_id"], created["client_secret"], scope="tenants:manage")
    body = ok.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert body["scope"] == "tenants:manage"
    assert ok.headers["cache-control"] == "no-store"
    header = json.loads(base64.urlsafe_b64decode(body["access_token"].split(".")[0] + "=="))
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "ES256"
    cases = {
        "wrong secret": (_token(running, created["client_id"], "cs_wrong"), 401, "invalid_client"),
        "unknown client": (_token(running, "cl_nobody", "cs_x"), 401, "invalid_client"),
        "scope beyond role": (
            _token(running, created["client_id"], created["client_secret"], scope="infer"),
            400,
            "invalid_scope",
        ),
        "grant type": (
            httpx.post(
                f"{running.url}/v1/auth/token",
                auth=(created["client_id"], created["client_secret"]),
                data={"grant_type": "password"},
            ),
            400,
            "unsupported_grant_type",
        ),
        "not a form": (
            httpx.post(f"{running.url}/v1/auth/token", json={"grant_type": "client_credentials"}),
            400,
            "invalid_request",
        ),
    }
    for name, (reply, status, code) in cases.items():
        assert (reply.status_code, reply.json()["error"]) == (status, code), name
        assert reply.headers["cache-control"] == "no-store", name
    assert (
        cases["wrong secret"][0].json()["error_description"]
        == cases["unknown client"][0].json()["error_description"]
    )


def test_form_credentials_work_too(server, admin) -> None:
    """Client credentials may come as form fields instead of HTTP Basic."""
    running, _ = server
    created, _ = admin
    reply = httpx.post(
        f"{running.url}/v1/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": created["client_id"],
            "client_secret": created["client_secret"],
        },
    )
    assert reply.status_code == 200


def test_tenant_and_client_lifecycle_over_rest(server, admin) -> None:
    """Create tenant and client; the client's token works; revoke and suspend take effect at once."""
    running, _ = server
    _, headers = admin
    assert (
        httpx.post(running.url + ADMIN_ROUTE, json={"name": "rest-co"}, headers=headers).status_code
        == 201
    )
    assert (
        httpx.post(running.url + ADMIN_ROUTE, json={"name": "rest-co"}, headers=headers).status_code
        == 409
    )
    bad = httpx.post(running.url + ADMIN_ROUTE, json={"name": "Bad Name"}, headers=headers)
    assert bad.status_code == 400
    assert "tenant name" in bad.json()["error"]
    created = httpx.post(
        f"{running.url}{ADMIN_ROUTE}/rest-co/clients",
        json={"role": "tenant-admin"},
        headers=headers,
    )
    assert created.status_code == 201
    client = created.json()
    wrong_role = httpx.post(
        f"{running.url}{ADMIN_ROUTE}/rest-co/clients",
        json={"role": "platform-admin"},
        headers=headers,
    )
    assert wrong_role.status_code == 400
    listed = httpx.get(f"{running.url}{ADMIN_ROUTE}/rest-co/clients", headers=headers).json()[
        "clients"
    ]
    assert [c["client_id"] for c in listed] == [client["client_id"]]
    assert "secret" not in json.dumps(listed)

    token = _token(running, client["client_id"], client["client_secret"]).json()["access_token"]
    tenant_headers = {"Authorization": f"Bearer {token}"}
    # A tenant admin is authenticated but may not manage tenants.
    assert httpx.get(running.url + ADMIN_ROUTE, headers=tenant_headers).status_code == 403

    assert (
        httpx.post(f"{running.url}{ADMIN_ROUTE}/rest-co/suspend", headers=headers).status_code
        == 200
    )
    suspended = httpx.get(running.url + ADMIN_ROUTE, headers=tenant_headers)
    assert (suspended.status_code, suspended.json()["error"]) == (401, "tenant is suspended")
    refused = _token(running, client["client_id"], client["client_secret"])
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant")
    assert (
        httpx.post(f"{running.url}{ADMIN_ROUTE}/rest-co/resume", headers=headers).status_code == 200
    )
    assert httpx.get(running.url + ADMIN_ROUTE, headers=tenant_headers).status_code == 403

    revoke = httpx.delete(
        f"{running.url}{ADMIN_ROUTE}/rest-co/clients/{client['client_id']}", headers=headers
    )
    assert revoke.status_code == 204
    assert httpx.get(running.url + ADMIN_ROUTE, headers=tenant_headers).status_code == 401
    assert _token(running, client["client_id"], client["client_secret"]).status_code == 401
    assert httpx.delete(f"{running.url}{ADMIN_ROUTE}/rest-co", headers=headers).status_code == 204
    assert httpx.get(f"{running.url}{ADMIN_ROUTE}/rest-co", headers=headers).status_code == 404


def test_rfc7009_revocation(server, admin) -> None:
    """A client revokes its own token; the token stops working at once."""
    running, _ = server
    created, _ = admin
    token = _token(running, created["client_id"], created["client_secret"]).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(running.url + ADMIN_ROUTE, headers=headers).status_code == 200
    reply = httpx.post(
        f"{running.url}/v1/auth/revoke",
        auth=(created["client_id"], created["client_secret"]),
        data={"token": token},
    )
    assert reply.status_code == 200
    denied = httpx.get(running.url + ADMIN_ROUTE, headers=headers)
    assert (denied.status_code, denied.json()["error"]) == (401, "token has been revoked")


def test_jwks_publishes_public_keys_only(server, ctx) -> None:
    """JWKS lists next, primary and previous keys, never private members or retired keys."""
    running, _ = server
    keys = httpx.get(f"{running.url}/.well-known/jwks.json").json()["keys"]
    published = {k["kid"] for k in keys}
    expected = {k.kid for k in ctx.keys if k.state.value in ("next", "primary", "previous")}
    assert published == expected
    assert not any("d" in k for k in keys)


def test_malformed_admin_body_is_400(server, admin) -> None:
    """A bad JSON body names the problem with a 400, not a 422 or 500."""
    running, _ = server
    _, headers = admin
    reply = httpx.post(
        running.url + ADMIN_ROUTE,
        content=b"{nope",
        headers={**headers, "content-type": "application/json"},
    )
    assert reply.status_code == 400
    assert reply.json()["code"] == "invalid_request"
    extra = httpx.post(
        running.url + ADMIN_ROUTE, json={"name": "x", "admin": True}, headers=headers
    )
    assert extra.status_code == 400
    assert "admin" in extra.json()["error"]


def test_no_secret_reaches_the_logs(server, admin) -> None:
    """A full token flow, failed attempts included, leaves no secret, token or key in the logs."""
    running, env = server
    created, headers = admin
    client = httpx.post(f"{running.url}{ADMIN_ROUTE}", json={"name": "logs-co"}, headers=headers)
    assert client.status_code == 201
    tenant_client = httpx.post(
        f"{running.url}{ADMIN_ROUTE}/logs-co/clients",
        json={"role": "tenant-client"},
        headers=headers,
    ).json()
    secrets_seen = [
        created["client_secret"],
        tenant_client["client_secret"],
        headers["Authorization"].split()[1],
    ]
    good = _token(running, tenant_client["client_id"], tenant_client["client_secret"]).json()[
        "access_token"
    ]
    secrets_seen.append(good)
    _token(
        running, tenant_client["client_id"], tenant_client["client_secret"] + "x"
    )  # wrong secret
    _token(running, "cl_unknown", tenant_client["client_secret"])  # right secret, wrong id
    httpx.get(running.url + ADMIN_ROUTE, headers={"Authorization": f"Bearer {good}"})  # 403
    httpx.get(running.url + ADMIN_ROUTE, headers={"Authorization": f"Bearer {good[:-3]}abc"})  # 401
    httpx.post(
        f"{running.url}/v1/auth/revoke",
        auth=(tenant_client["client_id"], tenant_client["client_secret"]),
        data={"token": good},
    )
    # An upload by the tenant's admin, and a signing-key rotation by the operator.
    uploader = httpx.post(
        f"{running.url}{ADMIN_ROUTE}/logs-co/clients",
        json={"role": "tenant-admin"},
        headers=headers,
    ).json()
    secrets_seen.append(uploader["client_secret"])
    upload_token = _token(running, uploader["client_id"], uploader["client_secret"]).json()[
        "access_token"
    ]
    secrets_seen.append(upload_token)
    uploaded = httpx.post(
        f"{running.url}/admin/v1/models/logged/versions",
        content=DEMO_MODEL.read_bytes(),
        headers={
            "Authorization": f"Bearer {upload_token}",
            "Content-Type": "application/octet-stream",
        },
    )
    assert uploaded.status_code == 201, uploaded.text
    cli("keys", "rotate-signing", env=env)
    master_key = (Path(env["SEALSERVE_DATA_DIR"]) / "master.key").read_text().strip()
    secrets_seen.append(master_key)
    log = running.output()
    assert '"request refused"' in log  # the refusals were logged (with their reasons)...
    for secret in secrets_seen:
        assert secret not in log  # ...but nothing secret was
        assert secret[:24] not in log  # not even a prefix
    # The audit log recorded the flow, failures included, and holds no secret either.
    time.sleep(1.5)  # batched records are flushed at least every second
    entries = httpx.get(f"{running.url}/admin/v1/audit?limit=1000", headers=headers).json()[
        "entries"
    ]
    actions = {(e["action"], e["outcome"]) for e in entries}
    assert {
        ("client.create", "success"),
        ("token.issue", "success"),
        ("token.issue", "failure"),
        ("auth.failure", "failure"),
        ("auth.denied", "denied"),
        ("model.upload", "success"),
        ("keys.rotate-signing", "success"),
        ("token.revoke", "success"),
    } <= actions
    exported = cli("audit", "export", env=env).stdout  # the whole log, as it leaves the database
    dump = json.dumps(entries) + exported
    for secret in secrets_seen:
        assert secret not in dump
        assert secret[:24] not in dump


def test_audit_review_is_scoped_and_verifiable(server, admin) -> None:
    """Platform auditors see every tenant; a tenant admin only its own; the chain verifies."""
    running, env = server
    _, headers = admin
    httpx.post(f"{running.url}{ADMIN_ROUTE}", json={"name": "audit-a"}, headers=headers)
    httpx.post(f"{running.url}{ADMIN_ROUTE}", json={"name": "audit-b"}, headers=headers)
    admin_a = httpx.post(
        f"{running.url}{ADMIN_ROUTE}/audit-a/clients",
        json={"role": "tenant-admin"},
        headers=headers,
    ).json()
    httpx.post(
        f"{running.url}{ADMIN_ROUTE}/audit-b/clients",
        json={"role": "tenant-client"},
        headers=headers,
    )
    token_a = _token(running, admin_a["client_id"], admin_a["client_secret"]).json()["access_token"]
    everything = httpx.get(
        f"{running.url}/admin/v1/audit?action=client.create&limit=1000", headers=headers
    ).json()["entries"]
    own = httpx.get(
        f"{running.url}/admin/v1/audit?limit=1000", headers={"Authorization": f"Bearer {token_a}"}
    ).json()["entries"]
    tenant_a = httpx.get(f"{running.url}{ADMIN_ROUTE}/audit-a", headers=headers).json()["id"]
    assert len({e["tenant_id"] for e in everything}) >= 2
    assert own and {e["tenant_id"] for e in own} == {tenant_a}
    page = httpx.get(f"{running.url}/admin/v1/audit?limit=2", headers=headers).json()
    older = httpx.get(
        f"{running.url}/admin/v1/audit?limit=2&cursor={page['next_cursor']}", headers=headers
    ).json()
    assert [e["seq"] for e in older["entries"]] == [
        page["next_cursor"] - 1,
        page["next_cursor"] - 2,
    ]
    verified = cli("audit", "verify", env=env)
    assert "ok" in verified.stdout
    exported = cli("audit", "export", env=env).stdout.splitlines()
    assert json.loads(exported[0])["type"] == "public_key"
    assert any(json.loads(line)["type"] == "checkpoint" for line in exported)
    listed = json.loads(cli("audit", "list", "--tenant", "audit-a", "--json", env=env).stdout)
    assert {e["tenant_id"] for e in listed} == {tenant_a}


INFER_BODY = json.dumps(
    {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}
).encode()
PREDICT_BODY = json.dumps({"instances": [[0.0] * 64]}).encode()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize(
    ("path", "body"),
    [("/v2/models/digits/infer", INFER_BODY), ("/v1/models/digits:predict", PREDICT_BODY)],
    ids=["v2-infer", "tfs-predict"],
)
def test_crafted_token_on_inference_routes(case: TokenCase, path, body, ctx, server) -> None:
    """The same table on inference: attacks are 401; controls run the model (or lack its scope)."""
    running, _ = server
    value = f"Bearer {case.make(ctx)}".strip().encode()
    reply = httpx.post(
        running.url + path,
        content=body,
        headers={"Authorization": value, "Content-Type": "application/json"},
    )
    assert reply.status_code != 500
    if case.outcome is Outcome.ACCEPT:
        # Tenant tokens with `infer` run tenant acme's digits model; platform tokens may not infer.
        assert reply.status_code in (200, 403), (case.name, reply.text)
    else:
        assert reply.status_code == 401, (case.name, reply.text)
        assert reply.json()["error"] in (case.message, BEARER_GRAMMAR), case.name


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_crafted_token_on_grpc_model_infer(case: TokenCase, ctx, server) -> None:
    """The same table through the gRPC guard on ModelInfer and ModelMetadata."""
    import grpc

    from protos import inference_pb2, inference_pb2_grpc

    running, _ = server
    request = inference_pb2.ModelInferRequest(model_name="digits")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(bytes(256))
    token = case.make(ctx)
    # gRPC metadata must be printable ASCII: a client cannot send what it cannot encode.
    value = f"Bearer {token}".strip().encode("ascii", "replace").decode()
    with grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        outcomes = []
        for call, message in (
            (stub.ModelInfer, request),
            (stub.ModelMetadata, inference_pb2.ModelMetadataRequest(name="digits")),
        ):
            try:
                call(message, metadata=[("authorization", value)], timeout=10)
                outcomes.append(("OK", ""))
            except grpc.RpcError as exc:
                outcomes.append((exc.code().name, exc.details()))
    for code, details in outcomes:
        assert code != "INTERNAL", (case.name, details)
        if case.outcome is Outcome.ACCEPT:
            assert code in ("OK", "PERMISSION_DENIED"), (case.name, code, details)
        else:
            assert code == "UNAUTHENTICATED", (case.name, code, details)


def test_signing_key_rotation_through_the_cli(tmp_path) -> None:
    """A rotation by the CLI reaches the running server: old tokens keep working, JWKS moves on."""
    import time

    env = server_env(tmp_path)
    cli("init", env=env)
    created = json.loads(
        cli("clients", "create", "--role", "platform-admin", "--json", env=env).stdout
    )
    running = start_server(env, tmp_path / "server.log")
    try:
        before = httpx.get(f"{running.url}/.well-known/jwks.json").json()["keys"]
        old_token = _token(running, created["client_id"], created["client_secret"]).json()[
            "access_token"
        ]
        old_kid = json.loads(base64.urlsafe_b64decode(old_token.split(".")[0] + "=="))["kid"]
        rotated = json.loads(cli("keys", "rotate-signing", "--json", env=env).stdout)
        states = {k["kid"]: k["state"] for k in rotated}
        assert states[old_kid] == "previous"
        new_primary = next(kid for kid, state in states.items() if state == "primary")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            keys = httpx.get(f"{running.url}/.well-known/jwks.json").json()["keys"]
            if {k["kid"] for k in keys} == set(states):
                break
            time.sleep(0.5)
        assert {k["kid"] for k in keys} == set(states)  # next, primary and previous published
        assert {k["kid"] for k in before} < {k["kid"] for k in keys} | {old_kid}
        # The token signed before the rotation still works; new ones use the new primary.
        headers = {"Authorization": f"Bearer {old_token}"}
        assert httpx.get(running.url + ADMIN_ROUTE, headers=headers).status_code == 200
        new_token = _token(running, created["client_id"], created["client_secret"]).json()[
            "access_token"
        ]
        assert (
            json.loads(base64.urlsafe_b64decode(new_token.split(".")[0] + "=="))["kid"]
            == new_primary
        )
    finally:
        running.stop()
