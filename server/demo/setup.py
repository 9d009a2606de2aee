"""The ``make run`` demo: a ``demo`` tenant, a client, the digits model, and how to call it.

Development only. The demo client's credentials are kept in
``<data dir>/demo-client.json`` (mode 0600) so every ``make run`` can print
commands that work when pasted; production never creates this file.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from auth import Principal, Scope
from storage import NotFound

if TYPE_CHECKING:
    from server.bootstrap import Services
    from server.settings import Settings

DEMO_TENANT = "demo"
DEMO_MODEL = "digits"
CREDENTIALS_FILE = "demo-client.json"
REQUEST_FILE = "demo-request.json"

# One 8x8 image of a handwritten "7" from scikit-learn's bundled digits data
# (sample 7; pixel values 0..16); the model takes them scaled to 0..1.
SAMPLE_DIGIT = 7
# fmt: off
SAMPLE_PIXELS = (
    0, 0, 7, 8, 13, 16, 15, 1, 0, 0, 7, 7, 4, 11, 12, 0, 0, 0, 0, 0, 8, 13, 1, 0,
    0, 4, 8, 8, 15, 15, 6, 0, 0, 2, 11, 15, 15, 4, 0, 0, 0, 0, 0, 16, 5, 0, 0, 0,
    0, 0, 9, 15, 1, 0, 0, 0, 0, 0, 13, 5, 0, 0, 0, 0,
)
# fmt: on


@dataclass(frozen=True)
class DemoClient:
    """The demo tenant's client credentials."""

    client_id: str
    client_secret: str


def demo_request() -> dict[str, object]:
    """An Open Inference Protocol request for the sample digit."""
    return {
        "id": "demo-1",
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": [1, 64],
                "data": [round(p / 16, 4) for p in SAMPLE_PIXELS],
            }
        ],
    }


def operator_principal(tenant_id: str) -> Principal:
    """The operator at the command line, acting inside one tenant's models."""
    return Principal(
        subject="operator",
        tenant_id=tenant_id,
        scopes=frozenset({Scope.MODELS_READ, Scope.MODELS_WRITE}),
        client_id=None,
        token_id="cli",  # noqa: S106 - an id, not a secret
        expires_at=0,
        issuer="sealserve-cli",
    )


def ensure_demo(settings: Settings, services: Services) -> DemoClient:
    """Create what is missing of the demo tenant, client, model and request file."""
    data_dir = settings.data_dir
    try:
        tenant = services.tenants.get(None, DEMO_TENANT)
    except NotFound:
        tenant = services.tenants.create(None, DEMO_TENANT)
    credentials = data_dir / CREDENTIALS_FILE
    if credentials.exists():
        stored = json.loads(credentials.read_text())
        client = DemoClient(stored["client_id"], stored["client_secret"])
    else:
        created = services.tenants.create_client(
            None, tenant=DEMO_TENANT, role="tenant-client", name="demo"
        )
        client = DemoClient(created.client_id, created.client_secret)
        fd = os.open(credentials, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(
                {"client_id": client.client_id, "client_secret": client.client_secret}, handle
            )
    operator = operator_principal(tenant.id)
    models = asyncio.run(services.models.list_models(operator))
    if not any(m.name == DEMO_MODEL for m in models):
        model_file = resources.files("server.demo").joinpath("digits.tflite")
        with resources.as_file(model_file) as path:
            asyncio.run(services.models.upload_tflite(operator, DEMO_MODEL, Path(path)))
    (data_dir / REQUEST_FILE).write_text(json.dumps(demo_request()))
    return client


def how_to_call(settings: Settings, client: DemoClient) -> str:
    """Ready-to-paste commands: get a token, infer over REST, the same over gRPC."""
    rest = f"http://{settings.host}:{settings.rest_port}"
    grpc_target = f"{settings.host}:{settings.grpc_port}"
    request_file = settings.data_dir / REQUEST_FILE
    return (
        "Call the demo digits model (tenant 'demo'):\n\n"
        f"  TOKEN=$(curl -s -u '{client.client_id}:{client.client_secret}' "
        f"-d grant_type=client_credentials {rest}/v1/auth/token "
        "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')\n"
        f"  curl -s -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' "
        f"-d @{request_file} {rest}/v2/models/{DEMO_MODEL}/infer\n"
        f'  .venv/bin/python -m server.demo.grpc_client --target {grpc_target} --token "$TOKEN"\n'
        f"\nThe sample is a handwritten {SAMPLE_DIGIT}: the highest of the 10 probabilities "
        f"should be at index {SAMPLE_DIGIT}.\n"
    )
