"""``sealserve models ...``: push, list, label and delete models.

Two ways to reach the registry: through a running server with a bearer token
(``--url``/``--token`` or ``SEALSERVE_URL``/``SEALSERVE_TOKEN``), as a tenant's
admin would; or, without ``--url``, directly on the data directory with
``--tenant``, as an operator holding the master key would.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from auth import AuthError
from compress import CompressionError
from server.cli_intake import FlagError, Upload, build_options, follow, post_form, report_tables
from server.demo.setup import operator_principal
from server.service.errors import ServiceError
from server.service.jobs import job_document
from storage import StorageError

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator

T = TypeVar("T")

app = typer.Typer(no_args_is_help=True, help="Push, list, label and delete models.")
console = Console()
err = Console(stderr=True)

Url = Annotated[str | None, typer.Option("--url", envvar="SEALSERVE_URL", help="Server base URL.")]
Token = Annotated[
    str | None,
    typer.Option("--token", envvar="SEALSERVE_TOKEN", help="Bearer token.", show_default=False),
]
Tenant = Annotated[str | None, typer.Option("--tenant", help="Tenant (operator mode, no --url).")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


def _remote(url: str, token: str | None) -> httpx.Client:
    if not token:
        _fail("--token (or SEALSERVE_TOKEN) is required with --url")
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=300)


def _check(reply: httpx.Response) -> Any:
    if reply.status_code >= 400:  # noqa: PLR2004
        try:
            message = reply.json().get("error", reply.text)
        except ValueError:
            message = reply.text
        _fail(f"{reply.status_code}: {message}")
    return reply.json() if reply.content else None


@contextmanager
def _operator(tenant: str | None) -> Iterator[tuple[Any, Any]]:
    """Services and an operator principal for ``tenant`` on the local data directory."""
    from server.cli import _services  # noqa: PLC0415 - the CLI's own wiring

    if not tenant:
        _fail("give --url (and a token) or, for operator mode, --tenant")
    with _services() as services:
        try:
            tenant_id = services.tenants.get(None, tenant).id
        except StorageError as exc:
            _fail(exc.message)
        yield services, operator_principal(tenant_id)


def _run(call: Coroutine[Any, Any, T]) -> T:
    """Run one service call; its error becomes one clear line, no trace."""
    try:
        return asyncio.run(call)
    except (ServiceError, StorageError, AuthError, CompressionError) as exc:
        _fail(exc.message)


def _chunks(path: Path, progress: Progress, task: Any) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            progress.update(task, advance=len(chunk))
            yield chunk


def _data_option(flag: str, what: str) -> Any:
    return typer.Option(flag, exists=True, dir_okay=False, help=what)


@app.command("push")
def push(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, help="A .keras, SavedModel .zip/.tar.gz or .tflite file."
        ),
    ],
    name: Annotated[str, typer.Option("--name", help="Model name.")],
    quantize: Annotated[
        str | None, typer.Option("--quantize", help="int8 | float16 | dynamic | none")
    ] = None,
    prune: Annotated[
        float | None, typer.Option("--prune", help="Prune to this sparsity (0.8 or 80).")
    ] = None,
    clip: Annotated[
        float | None, typer.Option("--clip", help="Clip weights at this percentile (e.g. 99.9).")
    ] = None,
    cut: Annotated[int | None, typer.Option("--cut", help="Remove up to K layers.")] = None,
    distill: Annotated[
        str | None,
        typer.Option(
            "--distill", help="Student: mlp-small, mlp-medium, cnn-tiny, or a .keras file."
        ),
    ] = None,
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option("--max-accuracy-drop", help="Fail the version past this drop (points)."),
    ] = None,
    calibration_data: Annotated[
        Path | None, _data_option("--calibration-data", ".npz with x, for int8 calibration.")
    ] = None,
    eval_data: Annotated[
        Path | None, _data_option("--eval-data", ".npz with x and y, to measure the result.")
    ] = None,
    train_data: Annotated[
        Path | None, _data_option("--train-data", ".npz with x and y, to fine-tune or distill.")
    ] = None,
    options_json: Annotated[
        str | None, typer.Option("--options-json", help="Options object; flags override it.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the job.")] = True,
    url: Url = None,
    token: Token = None,
    tenant: Tenant = None,
    as_json: JsonFlag = False,
) -> None:
    """Upload a model as the next version of NAME, compressing it as asked, and show its report.

    Anything but a bare .tflite is a job on the server: the upload has a
    progress bar, then the job is followed to its end and its report printed.
    """
    student = Path(distill) if distill and distill.lower().endswith(".keras") else None
    if student is not None and not student.is_file():
        _fail(f"--distill: no such file {student}")
    try:
        options = build_options(
            options_json=options_json,
            quantize=quantize,
            prune=prune,
            clip=clip,
            cut=cut,
            distill=distill,
            student_uploaded=student is not None,
            max_accuracy_drop=max_accuracy_drop,
        )
    except FlagError as exc:
        _fail(str(exc))
    parts = {
        "model": file,
        "calibration": calibration_data,
        "evaluation": eval_data,
        "training": train_data,
        "student": student,
    }
    upload = Upload({k: v for k, v in parts.items() if v is not None}, options)
    if url:
        with _remote(url, token) as client:
            if not upload.is_job:
                _print_version(_push_tflite(client, name, file), as_json=as_json)
                return
            with _progress_bar() as progress:
                reply = post_form(client, name, upload, progress=progress)
            job = _check(reply)
            if wait:
                job = follow(lambda: _check(client.get(job["links"]["self"])), console=err)
    else:
        with _operator(tenant) as (services, principal):
            if not upload.is_job:
                with console.status(f"checking and sealing {file.name}..."):
                    info = _run(services.models.upload_tflite(principal, name, file))
                _print_version(
                    {"model": info.model_name, "version": info.version, "state": info.state},
                    as_json=as_json,
                )
                return
            job = _run_locally(services, principal, name, upload, wait=wait)
    _print_job(job, as_json=as_json)


def _print_version(version: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(version, indent=2) + "\n")
    else:
        console.print(
            f"[green]pushed[/] {version['model']} version {version['version']} ({version['state']})"
        )


def _print_job(job: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(job, indent=2) + "\n")
    elif job["state"] == "ready":
        console.print(f"[green]ready[/] {job['model']} version {job['version']}")
    elif job["state"] == "failed":
        console.print(f"[bold red]failed[/] {job['model']}: {job['error']}")
    else:
        console.print(f"job {job['id']} {job['state']}: follow it at {job['links']['self']}")
    if not as_json:
        for table in report_tables(job):
            console.print(table)
    if job["state"] == "failed":
        raise typer.Exit(1)


def _progress_bar() -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=True,
    )


def _push_tflite(client: httpx.Client, name: str, file: Path) -> Any:
    with _progress_bar() as progress:
        task = progress.add_task(f"uploading {file.name}", total=file.stat().st_size)
        reply = client.post(
            f"/admin/v1/models/{name}/versions",
            content=_chunks(file, progress, task),
            headers={"Content-Type": "application/octet-stream"},
        )
    return _check(reply)


def _run_locally(
    services: Any, principal: Any, name: str, upload: Upload, *, wait: bool
) -> dict[str, Any]:
    """Queue the job on the data directory and run it in a child process of this command."""
    staged = services.jobs.new_upload()
    try:
        for part, path in upload.files.items():
            shutil.copyfile(path, staged.path(services.jobs.staged_name(part, path.name)))
        record = _run(
            services.jobs.submit(
                principal,
                name,
                staged,
                files={part: path.name for part, path in upload.files.items()},
                options=json.dumps(upload.options),
            )
        )
    except BaseException:
        services.jobs.discard(staged)
        raise

    def fetch() -> dict[str, Any]:
        return job_document(_run(services.jobs.get(principal, record.id)))

    if not wait:
        return fetch()
    # The job runs in a thread's event loop (its own child process does the work);
    # if a server on this data directory claims it first, it runs there instead.
    runner = threading.Thread(
        target=lambda: asyncio.run(services.supervisor.run_now(record.id)), daemon=True
    )
    runner.start()
    job = follow(fetch, console=err)
    runner.join()
    return job


@app.command("list")
def list_models(
    url: Url = None, token: Token = None, tenant: Tenant = None, as_json: JsonFlag = False
) -> None:
    """List models with their versions and labels."""
    if url:
        with _remote(url, token) as client:
            models = _check(client.get("/admin/v1/models"))["models"]
    else:
        with _operator(tenant) as (services, principal):
            found = _run(services.models.list_models(principal))
        models = [
            {
                "name": m.name,
                "labels": m.labels,
                "versions": [
                    {"version": v.version, "state": v.state, "size": v.size_plain}
                    for v in m.versions
                ],
            }
            for m in found
        ]
    if as_json:
        sys.stdout.write(json.dumps(models, indent=2) + "\n")
        return
    table = Table("model", "version", "state", "size", "labels")
    for model in models:
        for version in model["versions"]:
            labels = [k for k, v in model["labels"].items() if v == version["version"]]
            table.add_row(
                model["name"],
                str(version["version"]),
                version["state"],
                str(version["size"]),
                ", ".join(labels),
            )
    console.print(table)


@app.command("label")
def label(
    name: str,
    label_name: Annotated[str, typer.Argument(metavar="LABEL")],
    version: int,
    url: Url = None,
    token: Token = None,
    tenant: Tenant = None,
) -> None:
    """Point LABEL (stable, canary, any name) at VERSION of model NAME."""
    if url:
        with _remote(url, token) as client:
            _check(
                client.put(
                    f"/admin/v1/models/{name}/labels/{label_name}", json={"version": version}
                )
            )
    else:
        with _operator(tenant) as (services, principal):
            _run(services.models.set_label(principal, name, label_name, version))
    console.print(f"{name}:{label_name} -> version {version}")


@app.command("delete")
def delete(
    name: str,
    version: Annotated[int | None, typer.Option("--version", help="Only this version.")] = None,
    url: Url = None,
    token: Token = None,
    tenant: Tenant = None,
) -> None:
    """Delete a model, or one version of it."""
    path = f"/admin/v1/models/{name}" + (f"/versions/{version}" if version else "")
    if url:
        with _remote(url, token) as client:
            _check(client.delete(path))
    else:
        with _operator(tenant) as (services, principal):
            if version:
                _run(services.models.delete_version(principal, name, version))
            else:
                _run(services.models.delete_model(principal, name))
    console.print(f"deleted {name}" + (f" version {version}" if version else ""))
