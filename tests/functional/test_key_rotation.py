"""Key rotation through the real CLI beside a running server, on SQLite and PostgreSQL.

The server keeps serving throughout: a model first loaded while a tenant
rotation is half done, or after the master key changed under it, still loads.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.digits import DEMO_MODEL
from tests.functional.conftest import token_for
from tests.functional.databases import server_database  # noqa: F401 - a fixture
from tests.servers import ServerProcess, cli, server_env, start_server

if TYPE_CHECKING:
    from pathlib import Path

ROW = [0.5] * 64


def _infer(url: str, token: str, model: str) -> httpx.Response:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": ROW}]}
    return httpx.post(
        f"{url}/v2/models/{model}/infer",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def _ok(url: str, token: str, model: str) -> None:
    reply = _infer(url, token, model)
    assert reply.status_code == 200, (model, reply.text)


class Deployment:
    """A data directory, its running server and tenant tokens (the server may be restarted)."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.env = env
        self.server: ServerProcess | None = None
        self.tokens: dict[str, str] = {}

    def start(self) -> ServerProcess:
        """Start the server on this data directory."""
        self.server = start_server(self.env, self.data_dir / "server.log")
        return self.server

    def stop(self) -> None:
        """Stop the server if it runs."""
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, server_database):  # noqa: F811 - the fixture above
    """Tenants acme (models m1..m3) and other (m1), tenant-client tokens, a running server."""
    data_dir = tmp_path_factory.mktemp("rotation")
    env = server_env(data_dir, **server_database)
    cli("init", env=env)
    clients = {}
    for tenant, models in (("acme", ("m1", "m2", "m3")), ("other", ("m1",))):
        cli("tenants", "create", tenant, env=env)
        clients[tenant] = json.loads(
            cli(
                "clients", "create", "--tenant", tenant, "--role", "tenant-admin", "--json", env=env
            ).stdout
        )
        for model in models:
            cli("models", "push", str(DEMO_MODEL), "--name", model, "--tenant", tenant, env=env)
    deployed = Deployment(data_dir, env)
    running = deployed.start()
    deployed.tokens = {
        t: token_for(running.url, c["client_id"], c["client_secret"]) for t, c in clients.items()
    }
    yield deployed
    deployed.stop()


def _json(*args: str, env: dict[str, str]) -> dict:
    return json.loads(cli(*args, "--json", env=env).stdout)


def test_rotate_tenant_while_serving(deployment: Deployment) -> None:
    """Half a rotation, a first load, the rest; old version destroyed, every model serves."""
    url, env, tokens = deployment.server.url, deployment.env, deployment.tokens
    _ok(url, tokens["acme"], "m1")  # loaded before the rotation

    partial = _json("keys", "rotate-tenant", "acme", "--limit", "1", "--batch-size", "1", env=env)
    assert (partial["complete"], partial["rewrapped"], partial["remaining"]) == (False, 1, 2)
    _ok(url, tokens["acme"], "m2")  # first loaded mid-rotation

    done = _json("keys", "rotate-tenant", "acme", env=env)
    assert (done["complete"], done["resumed"], done["version"], done["destroyed"]) == (
        True,
        True,
        2,
        [1],
    )
    _ok(url, tokens["acme"], "m3")  # first loaded after the rotation
    _ok(url, tokens["acme"], "m1")
    _ok(url, tokens["other"], "m1")
    text = cli("keys", "rotate-tenant", "other", env=env).stdout
    assert "key v2 is current" in text
    assert "destroyed v1" in text
    _ok(url, tokens["other"], "m1")
    verify = cli("audit", "verify", env=env, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_rotate_master_online_then_old_key_retired(deployment: Deployment) -> None:
    """The documented procedure: new key first in the file, re-wrap, restart without the old key."""
    env, tokens = deployment.env, deployment.tokens
    key_file = deployment.data_dir / "master.key"
    new_file = deployment.data_dir / "new.key"
    old_text = key_file.read_text()
    created = _json("keys", "new-master-key", str(new_file), env=env)
    assert oct(new_file.stat().st_mode & 0o777) == "0o600"

    refused = cli("keys", "rotate-master", "--new-key-file", str(new_file), env=env, check=False)
    assert refused.returncode == 1
    assert "does not hold the new key" in refused.stderr

    # Step 1: the new key first, the old one kept below it (the server is not restarted).
    key_file.write_text(new_file.read_text() + old_text)
    # Step 2: re-wrap.
    result = _json("keys", "rotate-master", "--new-key-file", str(new_file), env=env)
    assert result["complete"]
    assert result["key_id"] == created["key_id"]
    assert result["rewrapped"]["tenant_keys"] == 2
    assert result["rewrapped"]["server_secrets"] >= 1
    assert result["rewrapped"]["signing_keys"] >= 1
    status = _json("keys", "master-status", env=env)
    assert [(r["key_id"], r["primary"]) for r in status if r["rows"]] == [(created["key_id"], True)]

    # The running server meets the new key id and learns it from its key file.
    cli("models", "push", str(DEMO_MODEL), "--name", "m4", "--tenant", "acme", env=env)
    url = deployment.server.url
    _ok(url, tokens["acme"], "m4")
    _ok(url, tokens["other"], "m1")

    # Step 3: only the new key; a restarted server serves everything, tokens included.
    deployment.stop()
    key_file.write_text(new_file.read_text())
    url = deployment.start().url
    for model in ("m1", "m2", "m3", "m4"):
        _ok(url, tokens["acme"], model)
    verify = cli("audit", "verify", env=env, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # The old key alone opens nothing any more.
    key_file.write_text(old_text)
    try:
        stale = cli("audit", "verify", env=env, check=False)
        assert stale.returncode == 1
        assert "not available" in stale.stderr
    finally:
        key_file.write_text(new_file.read_text())
