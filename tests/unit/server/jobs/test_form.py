"""spool_form: multipart uploads streamed part by part to our own file names, under limits."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI, Request

from server.rest.body import spool_form
from server.rest.errors import install_error_handlers


@pytest.fixture
def client(make_intake, tmp_path):
    """An app whose one route spools a form into ``tmp_path/upload`` (1000 B per file, 100 kB in all)."""
    intake = make_intake(max_model_bytes=1000, intake_max_data_bytes=1000)
    directory = tmp_path / "upload"
    directory.mkdir()
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/form")
    async def form(request: Request) -> dict:
        parsed = await spool_form(request, plan=intake.service, directory=directory, limit=100_000)
        return {"files": parsed.files, "fields": parsed.fields}

    return _Client(app), directory


class _Client:
    """Posts to the app in process (httpx's ASGI transport), one event loop per call."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    def post(self, path: str, **kwargs) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self._app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                return await http.post(path, **kwargs)

        return asyncio.run(call())


def test_parts_are_written_under_our_names_and_options_kept_in_memory(client) -> None:
    """The client's file name never becomes a path; only its suffix tells the format."""
    http, directory = client
    reply = http.post(
        "/form",
        files={
            "model": ("../../../etc/evil.keras", b"PK\x03\x04model"),
            "evaluation": ("/abs/eval.npz", b"PK\x03\x04data"),
            "options": (None, '{"quantization": "dynamic"}'),
        },
    )
    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "files": {"model": "../../../etc/evil.keras", "evaluation": "/abs/eval.npz"},
        "fields": {"options": '{"quantization": "dynamic"}'},
    }
    assert sorted(p.name for p in directory.iterdir()) == ["evaluation.npz", "model.keras"]
    assert (directory / "model.keras").read_bytes() == b"PK\x03\x04model"
    assert (directory / "model.keras").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("files", "status", "message"),
    [
        ({"model": ("m.keras", bytes(1001))}, 413, "form part 'model' exceeds the limit of 1000"),
        ({"training": ("t.npz", bytes(1001))}, 413, "form part 'training' exceeds the limit"),
        ({"options": (None, "x" * 70_000)}, 413, "form part 'options' exceeds the limit"),
        ({"weights": ("w.bin", b"1")}, 400, "unknown form part 'weights'"),
        ({"model": ("m.pkl", b"1")}, 400, "pickled files are not accepted"),
        ({"model": (None, b"1")}, 400, "the model part needs a file name"),
        ({"student": ("s.h5", b"1")}, 400, "the student part must be a .keras file"),
        ({"options": (None, b"\xff\xfe")}, 400, "form part 'options' is not UTF-8 text"),
    ],
)
def test_refused_parts(client, files, status, message) -> None:
    """Each refusal is a clear 4xx, raised while the body streams."""
    http, _ = client
    reply = http.post("/form", files=files)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"].startswith(message)


def test_malformed_bodies_are_refused(client) -> None:
    """A repeated part, a body cut short, a missing boundary, a body over the whole limit."""
    http, directory = client
    part = b'--b\r\nContent-Disposition: form-data; name="model"; filename="m.keras"\r\n\r\nPK\r\n'
    cases = [
        (
            part + part + b"--b--\r\n",
            "multipart/form-data; boundary=b",
            400,
            "form part 'model' was sent twice",
        ),
        (part[:-4], "multipart/form-data; boundary=b", 400, "the multipart body is incomplete"),
        (
            part + b"--b--\r\n",
            "multipart/form-data",
            400,
            "the multipart/form-data Content-Type needs",
        ),
        (
            bytes(100_001),
            "multipart/form-data; boundary=b",
            413,
            "upload exceeds the limit of 100000",
        ),
        (
            b"--b\r\nX-Nothing: 1\r\n\r\nPK\r\n--b--\r\n",
            "multipart/form-data; boundary=b",
            400,
            "every form part needs",
        ),
    ]
    for body, content_type, status, message in cases:
        for leftover in directory.iterdir():  # the route's caller removes a refused upload
            leftover.unlink()
        reply = http.post("/form", content=body, headers={"Content-Type": content_type})
        assert reply.status_code == status, (message, reply.text)
        assert reply.json()["error"].startswith(message)
