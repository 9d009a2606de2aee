"""Hostile uploads through a real server: each refused with a clear message, nothing left behind.

Cheap checks (format by name, magic bytes, sizes, options) refuse at upload
time with a 4xx; the rest (archives, Keras configs, SavedModel graphs) is
opened only in the job process, whose job then fails with the reason. Either
way no version is made, no file lands outside the job's staging directory,
and staging is empty once the jobs are over.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
import zipfile
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.functional.conftest import token_for
from tests.servers import cli, server_env, start_server
from tests.unit.compress.conftest import save_hostile_saved_model, save_lambda_model, zip_directory

if TYPE_CHECKING:
    from pathlib import Path

LIMIT = 1024 * 1024
ESCAPED = "escaped-by-upload.txt"


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _tar_info(name: str, kind: bytes = tarfile.REGTYPE, **fields) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def _hostile_files(root: Path) -> tuple[dict[str, Path], Path]:
    """Every archive and model the server must refuse in the job, by upload name; a benign zip."""
    root.mkdir()
    files = {"lambda": save_lambda_model(root / "lambda.keras")}
    for behaviour in ("read_file", "write_file", "py_function"):
        directory = save_hostile_saved_model(root / behaviour / "saved_model", behaviour)
        files[behaviour] = zip_directory(directory, root / f"{behaviour}.zip")
    slip = root / "slip.zip"
    with zipfile.ZipFile(slip, "w") as archive:
        archive.writestr("saved_model.pb", b"graph")
        archive.writestr(f"../../{ESCAPED}", b"owned")
    files["zip_slip"] = slip
    files["tar_symlink"] = _tar(
        root / "symlink.tar.gz",
        [
            (_tar_info("model/saved_model.pb"), b"graph"),
            (_tar_info("model/variables", tarfile.SYMTYPE, linkname="/etc"), None),
        ],
    )
    files["tar_device"] = _tar(
        root / "device.tar.gz",
        [
            (_tar_info("model/saved_model.pb"), b"graph"),
            (_tar_info("model/null", tarfile.CHRTYPE, devmajor=1, devminor=3), None),
        ],
    )
    bomb = root / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("saved_model.pb", b"graph")
        archive.writestr("variables/variables.data-00000-of-00001", bytes(200 * 1024 * 1024))
    files["zip_bomb"] = bomb
    benign = save_hostile_saved_model(root / "benign" / "saved_model", "none")
    return files, zip_directory(benign, root / "benign.zip")


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    """A server with a 1 MiB upload limit, a tenant admin's token, and the hostile files."""
    root = tmp_path_factory.mktemp("refusals")
    data_dir = root / "data"
    env = server_env(data_dir, SEALSERVE_MAX_MODEL_BYTES=str(LIMIT), SEALSERVE_JOBS_CONCURRENCY="2")
    cli("init", env=env)
    cli("tenants", "create", "acme", env=env)
    client = json.loads(
        cli(
            "clients", "create", "--tenant", "acme", "--role", "tenant-admin", "--json", env=env
        ).stdout
    )
    files, benign = _hostile_files(root / "files")
    running = start_server(env, data_dir / "server.log")
    token = token_for(running.url, client["client_id"], client["client_secret"])
    yield running.url, {"Authorization": f"Bearer {token}"}, {**files, "benign": benign}, root
    running.stop()


def _upload(url: str, headers: dict, name: str, filename: str, content: bytes) -> httpx.Response:
    return httpx.post(
        f"{url}/admin/v1/models/{name}/versions",
        files={"model": (filename, content)},
        headers=headers,
        timeout=60,
    )


def _wait(url: str, headers: dict, job_id: str) -> dict:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/admin/v1/jobs/{job_id}", headers=headers).json()
        if job["state"] in ("ready", "failed"):
            return job
        time.sleep(0.3)
    pytest.fail(f"job {job_id} did not finish: {job}")


# upload name -> the start of the job's error
JOB_REFUSALS = {
    "lambda": "Lambda layers are not accepted",
    "read_file": "the SavedModel uses op 'ReadFile'",
    "write_file": "the SavedModel uses op 'WriteFile'",
    "py_function": "the SavedModel uses op 'EagerPyFunc'",
    "zip_slip": "an archive entry path leaves the archive",
    "tar_symlink": "the archive contains a symbolic link",
    "tar_device": "the archive contains a device file",
    "zip_bomb": "the archive expands more than 100 times",
}


def test_hostile_models_and_archives_fail_their_jobs_with_the_reason(refusals) -> None:
    """Lambda, file and Python ops, ../ entries, links, devices, bombs: failed jobs, no version."""
    url, headers, files, _ = refusals
    jobs = {}
    for name, path in files.items():
        if name == "benign":
            continue
        reply = _upload(url, headers, name.replace("_", "-"), path.name, path.read_bytes())
        assert reply.status_code == 202, (name, reply.text)
        jobs[name] = reply.json()["id"]
    for name, job_id in jobs.items():
        job = _wait(url, headers, job_id)
        assert job["state"] == "failed", (name, job)
        assert job["error"].startswith(JOB_REFUSALS[name]), (name, job["error"])
        assert job["version"] is None
        assert job["result"] is None
        model = httpx.get(f"{url}/admin/v1/models/{name.replace('_', '-')}", headers=headers)
        assert model.status_code == 404, (name, model.text)


def test_a_truncated_archive_is_refused_and_the_intact_one_accepted(refusals) -> None:
    """The same SavedModel .zip: cut in half it fails as corrupt; whole it becomes version 1."""
    url, headers, files, _ = refusals
    content = files["benign"].read_bytes()
    cut = _upload(url, headers, "truncated", "model.zip", content[: len(content) // 2])
    whole = _upload(url, headers, "truncated", "model.zip", content)
    assert cut.status_code == whole.status_code == 202, cut.text
    job = _wait(url, headers, cut.json()["id"])
    assert job["state"] == "failed"
    assert job["error"] == "the archive is truncated or corrupt"
    assert job["version"] is None
    job = _wait(url, headers, whole.json()["id"])
    assert (job["state"], job["version"]) == ("ready", 1), job
    assert job["result"]["report"]["source_kind"] == "saved_model_zip"


def test_wrong_magic_bytes_are_refused_at_upload(refusals) -> None:
    """A file whose bytes are not its format's is refused before anything is queued (400)."""
    url, headers, files, _ = refusals
    for filename, content in (
        ("model.keras", b"\x00" * 64),
        ("model.tflite", files["lambda"].read_bytes()),
        ("model.tar.gz", files["zip_slip"].read_bytes()),
        ("model.keras", b"\x89HDF\r\n\x1a\n" + bytes(64)),
    ):
        reply = _upload(url, headers, "magic", filename, content)
        assert reply.status_code == 400, reply.text
        assert reply.json()["code"] == "invalid_request"
        assert "accepted: .keras" in reply.json()["error"]
    pickled = _upload(url, headers, "magic", "model.pkl", b"\x80\x04")
    assert pickled.status_code == 400
    assert pickled.json()["error"].startswith("pickled files are not accepted")
    jobs = httpx.get(f"{url}/admin/v1/jobs", params={"model": "magic"}, headers=headers).json()
    assert jobs == {"jobs": []}


def test_uploads_over_the_limit_are_refused_while_streaming(refusals) -> None:
    """Over 1 MiB: 413 for a form part and for a raw body, nothing queued or kept."""
    url, headers, _, _ = refusals
    big = bytes(LIMIT + 1)
    reply = _upload(url, headers, "big", "model.keras", big)
    assert reply.status_code == 413, reply.text
    assert reply.json()["error"] == f"form part 'model' exceeds the limit of {LIMIT} bytes"

    def stream():  # no Content-Length: the limit must hold while the body arrives
        for _ in range(LIMIT // 65536 + 2):
            yield bytes(65536)

    raw = httpx.post(
        f"{url}/admin/v1/models/big/versions",
        content=stream(),
        headers={**headers, "Content-Type": "application/octet-stream"},
    )
    assert raw.status_code == 413, raw.text


def test_malformed_forms_and_options_are_refused_naming_the_problem(refusals) -> None:
    """Unknown or repeated parts, a cut-off body, bad options: 400s that say what is wrong."""
    url, headers, files, _ = refusals
    keras = files["lambda"].read_bytes()
    route = f"{url}/admin/v1/models/forms/versions"
    unknown = httpx.post(route, files={"modle": ("m.keras", keras)}, headers=headers)
    assert unknown.status_code == 400
    assert unknown.json()["error"].startswith("unknown form part 'modle'")
    missing = httpx.post(route, files={"options": (None, "{}")}, headers=headers)
    assert missing.json()["error"].startswith("the form has no 'model' part")
    options = httpx.post(
        route,
        files={"model": ("m.keras", keras)},
        data={"options": json.dumps({"quantization": "int9", "prune": {"sparsty": 0.5}})},
        headers=headers,
    )
    assert options.status_code == 400
    message = options.json()["error"]
    assert "quantization:" in message
    assert "prune.sparsty: Extra inputs are not permitted" in message
    cut = httpx.post(
        route,
        content=b'--b\r\nContent-Disposition: form-data; name="model"; filename="m.keras"\r\n\r\nPK',
        headers={**headers, "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert cut.status_code == 400
    assert cut.json()["error"] == "the multipart body is incomplete (cut short?)"
    int8 = httpx.post(
        route,
        files={"model": ("m.keras", keras)},
        data={"options": json.dumps({"quantization": "int8"})},
        headers=headers,
    )
    assert int8.json()["error"] == (
        "int8 quantization needs calibration, evaluation or training data"
    )


def test_nothing_is_left_outside_or_inside_staging(refusals) -> None:
    """After every refusal and every failed job: staging is empty, nothing escaped it."""
    url, headers, _, root = refusals
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        jobs = httpx.get(f"{url}/admin/v1/jobs", params={"limit": 500}, headers=headers).json()
        if all(job["state"] in ("ready", "failed") for job in jobs["jobs"]):
            break
        time.sleep(0.3)
    staging = root / "data" / "staging"
    assert [path for path in staging.rglob("*") if path.is_file()] == []
    assert list(root.rglob(ESCAPED)) == []
    assert list(root.rglob("written-by-model")) == []
