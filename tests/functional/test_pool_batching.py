"""Batching settings per model version, through a real server: set, checked, scoped, audited, used.

One server with one worker; the demo tenant holds the digits model three
times: ``solo`` pushed by the operator with ``--no-batching``, ``grouped``
uploaded over REST with ``?max_batch_size=8`` and then given a 20 ms queue
delay by ``sealserve models batching`` (before any worker loaded it), and
``plain`` with no settings. Tenant ``other`` has an admin of its own.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import numpy as np
import pytest

from tests.digits import DEMO_MODEL, digits_test_split, in_process_probabilities
from tests.functional.conftest import token_for
from tests.models import widening_model
from tests.servers import cli, server_env, start_server

CONCURRENCY = 32
ROUNDS = 4


def _admin(tenant: str, env: dict[str, str]) -> dict[str, str]:
    return json.loads(
        cli(
            "clients", "create", "--tenant", tenant, "--role", "tenant-admin", "--json", env=env
        ).stdout
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The server, its environment, and tokens: ``admin`` and ``client`` of demo, ``other``."""
    data_dir = tmp_path_factory.mktemp("batching")
    env = server_env(data_dir, SEALSERVE_WORKERS="1", SEALSERVE_LOG_LEVEL="WARNING")
    cli("init", "--demo", env=env)
    admin = _admin("demo", env)
    cli("tenants", "create", "other", env=env)
    other = _admin("other", env)
    pushed = cli(
        "models",
        "push",
        str(DEMO_MODEL),
        "--name",
        "solo",
        "--tenant",
        "demo",
        "--no-batching",
        "--json",
        env=env,
    )
    assert json.loads(pushed.stdout)["version"] == 1
    running = start_server(env, data_dir / "server.log")
    client = json.loads((data_dir / "demo-client.json").read_text())
    tokens = {
        "admin": token_for(running.url, admin["client_id"], admin["client_secret"]),
        "client": token_for(running.url, client["client_id"], client["client_secret"]),
        "other": token_for(running.url, other["client_id"], other["client_secret"]),
    }
    for name, params in (("grouped", {"max_batch_size": "8"}), ("plain", {})):
        reply = httpx.post(
            f"{running.url}/admin/v1/models/{name}/versions",
            params=params,
            content=DEMO_MODEL.read_bytes(),
            headers={**_auth(tokens, "admin"), "Content-Type": "application/octet-stream"},
            timeout=60,
        )
        assert reply.status_code == 201, reply.text
    yield running, env, tokens
    running.stop()


def _auth(tokens: dict[str, str], who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[who]}"}


def _versions(url: str, tokens: dict[str, str], name: str) -> list[dict]:
    reply = httpx.get(f"{url}/admin/v1/models/{name}", headers=_auth(tokens, "admin"))
    assert reply.status_code == 200, reply.text
    return reply.json()["versions"]


def _patch(url: str, tokens: dict[str, str], who: str, path: str, body: object) -> httpx.Response:
    return httpx.patch(f"{url}/admin/v1/models/{path}", json=body, headers=_auth(tokens, who))


def test_settings_are_set_at_upload_and_changed_by_the_cli(served) -> None:
    """Push flags and upload query are stored; the CLI shows and replaces them over REST."""
    server, env, tokens = served
    assert _versions(server.url, tokens, "solo")[0]["batching"] == {"enabled": False}
    assert _versions(server.url, tokens, "plain")[0]["batching"] is None
    remote = ("--url", server.url, "--token", tokens["admin"], "--json")
    shown = json.loads(cli("models", "batching", "grouped", "1", *remote, env=env).stdout)
    assert shown["batching"] == {"max_batch_size": 8}
    changed = cli(
        "models",
        "batching",
        "grouped",
        "1",
        "--max-batch",
        "8",
        "--batch-delay-ms",
        "20",
        *remote,
        env=env,
    )
    assert json.loads(changed.stdout)["batching"] == {"max_batch_size": 8, "max_queue_delay_ms": 20}
    assert _versions(server.url, tokens, "grouped")[0]["batching"] == {
        "max_batch_size": 8,
        "max_queue_delay_ms": 20.0,
    }
    refused = cli(
        "models", "batching", "grouped", "1", "--max-batch", "0", *remote, env=env, check=False
    )
    assert refused.returncode == 1
    assert "--max-batch must be an integer from 1 to 1024" in refused.stderr


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"batching": {"max_batch_size": 0}}, "batching.max_batch_size"),
        ({"batching": {"max_batch_size": 1025}}, "batching.max_batch_size"),
        ({"batching": {"max_batch_size": "8"}}, "batching.max_batch_size"),
        ({"batching": {"max_queue_delay_ms": -1}}, "batching.max_queue_delay_ms"),
        ({"batching": {"max_queue_delay_ms": 1000.1}}, "batching.max_queue_delay_ms"),
        ({"batching": {"enabled": "off"}}, "batching.enabled"),
        ({"batching": {"enabled": False, "max_batch_size": 4}}, "batching.enabled"),
        ({"batching": {"max_batch": 4}}, "batching.max_batch"),
        ({}, "batching"),
        ({"batching": {}, "state": "ready"}, "state"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(served, body: dict, named: str) -> None:
    """Out-of-range, mistyped, contradictory or unknown settings: 400 naming the field."""
    server, _, tokens = served
    reply = _patch(server.url, tokens, "admin", "plain/versions/1", body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["code"] == "invalid_request"
    assert named in reply.json()["error"]
    assert _versions(server.url, tokens, "plain")[0]["batching"] is None


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"max_batch_size": "2000"}, "max_batch_size"),
        ({"max_queue_delay_ms": "nan"}, "max_queue_delay_ms"),
        ({"batching": "maybe"}, "batching"),
        ({"batching": "off", "max_batch_size": "4"}, "batching.enabled"),
    ],
)
def test_bad_upload_settings_are_refused_and_store_nothing(
    served, params: dict, named: str
) -> None:
    """The upload's query settings are checked like the body's; a refused upload makes no version."""
    server, _, tokens = served
    reply = httpx.post(
        f"{server.url}/admin/v1/models/refused/versions",
        params=params,
        content=DEMO_MODEL.read_bytes(),
        headers={**_auth(tokens, "admin"), "Content-Type": "application/octet-stream"},
    )
    assert reply.status_code == 400, reply.text
    assert named in reply.json()["error"]
    missing = httpx.get(f"{server.url}/admin/v1/models/refused", headers=_auth(tokens, "admin"))
    assert missing.status_code == 404


def test_another_tenants_version_is_not_found_like_a_missing_one(served) -> None:
    """Tenant 'other' gets the very answer a missing model gives; a reader may not change it."""
    server, _, tokens = served
    body = {"batching": {"enabled": False}}
    foreign = _patch(server.url, tokens, "other", "grouped/versions/1", body)
    missing = _patch(server.url, tokens, "admin", "grouped-not-here/versions/1", body)
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["code"] == missing.json()["code"] == "not_found"
    assert foreign.json()["error"] == missing.json()["error"].replace("grouped-not-here", "grouped")
    no_version = _patch(server.url, tokens, "admin", "grouped/versions/9", body)
    assert no_version.status_code == 404
    assert _patch(server.url, tokens, "client", "grouped/versions/1", body).status_code == 403
    assert _versions(server.url, tokens, "grouped")[0]["batching"] != {"enabled": False}


def test_changes_are_in_the_tenants_audit_log(served) -> None:
    """A PATCH, then a reset to the defaults, each leave one entry with before and after."""
    server, _, tokens = served
    first = _patch(server.url, tokens, "admin", "plain/versions/1", {"batching": {"enabled": True}})
    assert first.status_code == 200, first.text
    assert first.json()["batching"] == {"enabled": True}
    reset = _patch(server.url, tokens, "admin", "plain/versions/1", {"batching": None})
    assert reset.json()["batching"] is None
    entries = httpx.get(
        f"{server.url}/admin/v1/audit",
        params={"action": "model.batching", "resource": "model:plain@1"},
        headers=_auth(tokens, "admin"),
    ).json()["entries"]
    assert [e["details"] for e in entries] == [
        {"before": {"enabled": True}, "after": None},
        {"before": None, "after": {"enabled": True}},
    ]
    others = httpx.get(
        f"{server.url}/admin/v1/audit",
        params={"action": "model.batching"},
        headers=_auth(tokens, "other"),
    ).json()["entries"]
    assert others == []


def _histograms(metrics: str) -> dict[str, dict[str, float]]:
    """``sealserve_batch_size`` by model name: invocations per bucket bound, and ``rows``."""
    found: dict[str, dict[str, float]] = {}
    for kind, labels, value in re.findall(
        r"^sealserve_batch_size_(bucket|sum)\{([^}]*)\} (\S+)$", metrics, re.MULTILINE
    ):
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        found.setdefault(pairs["model"], {})[pairs["le"] if kind == "bucket" else "rows"] = float(
            value
        )
    return found


async def _load(url: str, token: str, models: tuple[str, ...]) -> list[str]:
    """ROUNDS rounds of CONCURRENCY concurrent one-row calls to each model; the wrong answers."""
    x, _ = digits_test_split()
    expected = in_process_probabilities()
    wrong: list[str] = []

    async def one(http: httpx.AsyncClient, model: str, row: int) -> None:
        body = {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": x[row].tolist()}
            ]
        }
        reply = await http.post(
            f"{url}/v2/models/{model}/infer",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        if reply.status_code != 200:
            wrong.append(f"{model}: {reply.status_code} {reply.text[:200]}")
            return
        got = np.asarray(reply.json()["outputs"][0]["data"], dtype=np.float32)
        if not np.allclose(got, expected[row], atol=1e-6):
            wrong.append(f"{model}: wrong outputs for row {row}")

    limits = httpx.Limits(max_connections=CONCURRENCY * len(models))
    async with httpx.AsyncClient(limits=limits) as http:
        for _ in range(ROUNDS):
            await asyncio.gather(*(one(http, m, row) for m in models for row in range(CONCURRENCY)))
    return wrong


def test_worker_batches_each_version_by_its_settings(served) -> None:
    """Under concurrent calls: 'solo' runs only batches of 1; 'grouped' runs batches of 2-8."""
    server, _, tokens = served
    calls = ROUNDS * CONCURRENCY
    assert asyncio.run(_load(server.url, tokens["client"], ("solo", "grouped"))) == []
    histograms: dict[str, dict[str, float]] = {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # the gateway refreshes worker status every second
        histograms = _histograms(httpx.get(f"{server.url}/metrics").text)
        if all(histograms.get(m, {}).get("rows") == calls for m in ("solo", "grouped")):
            break
        time.sleep(0.2)
    solo, grouped = histograms["solo"], histograms["grouped"]
    assert solo["rows"] == calls
    assert solo["1"] == solo["+Inf"] == calls  # one invocation per call, each of one row
    assert grouped["rows"] == calls
    assert grouped["8"] == grouped["+Inf"]  # never more than 8 rows at once
    # Some invocations ran several calls. (How many depends on how fast the
    # gateway hands calls over, which on a shared machine varies a lot.)
    assert grouped["1"] < grouped["+Inf"] < calls


def _binary_call(
    tokens: dict[str, str], x: np.ndarray, name: str, output: str
) -> tuple[bytes, dict[str, str]]:
    """A binary-tensor call's body (JSON head, then ``x``'s bytes) and its HTTP headers."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": output, "parameters": {"binary_data": True}}],
        }
    ).encode()
    headers = {
        **_auth(tokens, "client"),
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return header + x.tobytes(), headers


def _all_at_once(url: str, body: bytes, headers: dict[str, str], count: int) -> list[np.ndarray]:
    """``count`` identical calls sent together; each answer's output, once all are 200."""

    async def calls() -> list[httpx.Response]:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=count)) as http:
            return await asyncio.gather(
                *(http.post(url, content=body, headers=headers, timeout=60) for _ in range(count))
            )

    replies = asyncio.run(calls())
    assert [f"{r.status_code} {r.text[:200]}" for r in replies if r.status_code != 200] == []
    outputs = []
    for reply in replies:
        length = int(reply.headers["Inference-Header-Content-Length"])
        outputs.append(np.frombuffer(reply.content[length:], dtype="<f4"))
    return outputs


def test_concurrent_large_calls_to_one_worker_all_succeed(served) -> None:
    """24 calls of 4 MiB at once to the one worker: the gateway splits them into trips.

    Queued together they would make one 96 MiB message, past the worker's
    64 MiB frame limit, and every one of them would fail.
    """
    server, _, tokens = served
    x, _ = digits_test_split()
    repeats = 37  # 450 rows x 37 = 16,650 rows of 64 float32: 4.1 MiB per call
    rows = np.tile(x, (repeats, 1))
    expected = np.tile(in_process_probabilities(), (repeats, 1))
    body, headers = _binary_call(tokens, rows, "input", "probabilities")
    for got in _all_at_once(f"{server.url}/v2/models/plain/infer", body, headers, 24):
        np.testing.assert_allclose(got.reshape(expected.shape), expected, atol=1e-5)


WIDENING = 8


@pytest.fixture(scope="module")
def wide(served) -> None:
    """``wide``: a model answering each input row repeated ``WIDENING`` times."""
    server, _, tokens = served
    reply = httpx.post(
        f"{server.url}/admin/v1/models/wide/versions",
        content=widening_model(WIDENING),
        headers={**_auth(tokens, "admin"), "Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert reply.status_code == 201, reply.text


@pytest.mark.usefixtures("wide")
def test_answers_larger_than_a_frame_come_back_in_several_trips(served) -> None:
    """24 one-row calls of 1 MiB at once, each answered with 8 MiB, to the one worker.

    The inputs of a trip are capped, but its answers come back together: 24 of
    these in one trip would make a 192 MiB answer, past the worker's 64 MiB
    frame limit. The worker answers what fits, and the gateway sends the
    others again, each alone.
    """
    server, _, tokens = served
    x = np.random.default_rng(7).random((1, 256 * 1024), dtype=np.float32)
    body, headers = _binary_call(tokens, x, "x", "y")
    expected = np.tile(x, (1, WIDENING))
    for got in _all_at_once(f"{server.url}/v2/models/wide/infer", body, headers, 24):
        np.testing.assert_array_equal(got.reshape(expected.shape), expected)


@pytest.mark.usefixtures("wide")
def test_a_call_whose_answer_alone_is_too_large_fails_naming_the_sizes(served) -> None:
    """8 MiB in, 64 MiB out: past what one answer carries, so 400 and the sizes, not a 503."""
    server, _, tokens = served
    body, headers = _binary_call(tokens, np.ones((1, 2 * 1024 * 1024), np.float32), "x", "y")
    reply = httpx.post(
        f"{server.url}/v2/models/wide/infer", content=body, headers=headers, timeout=60
    )
    assert reply.status_code == 400, reply.text
    assert "one answer carries; ask for fewer rows or outputs" in reply.json()["error"]
