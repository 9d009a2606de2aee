"""A running server with two tenants and their models, for the inference suites."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.digits import DEMO_MODEL
from tests.servers import cli, server_env, start_server


def token_for(url: str, client_id: str, secret: str) -> str:
    """An access token for a client, from the real token endpoint."""
    reply = httpx.post(
        f"{url}/v1/auth/token", auth=(client_id, secret), data={"grant_type": "client_credentials"}
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["access_token"]


def auth_header(tokens: dict[str, str], tenant: str = "demo") -> dict[str, str]:
    """The Authorization header of one tenant's token."""
    return {"Authorization": f"Bearer {tokens[tenant]}"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """`init --demo` + `serve` (as `make run`), and a tenant 'other' owning model 'secret'.

    Yields ``(server, env, tokens)``; tokens: ``demo`` (tenant-client of the
    demo tenant) and ``other`` (tenant-admin of 'other').
    """
    data_dir = tmp_path_factory.mktemp("stack")
    env = server_env(
        data_dir,
        SEALSERVE_WORKERS="2",
        SEALSERVE_MAX_REQUEST_BYTES=str(2 * 1024 * 1024),
        SEALSERVE_MAX_MODEL_BYTES=str(4 * 1024 * 1024),
    )
    cli("init", "--demo", env=env)
    cli("tenants", "create", "other", env=env)
    other = json.loads(
        cli(
            "clients", "create", "--tenant", "other", "--role", "tenant-admin", "--json", env=env
        ).stdout
    )
    cli("models", "push", str(DEMO_MODEL), "--name", "secret", "--tenant", "other", env=env)
    running = start_server(env, data_dir / "server.log")
    demo = json.loads((data_dir / "demo-client.json").read_text())
    tokens = {
        "demo": token_for(running.url, demo["client_id"], demo["client_secret"]),
        "other": token_for(running.url, other["client_id"], other["client_secret"]),
    }
    yield running, env, tokens
    running.stop()
