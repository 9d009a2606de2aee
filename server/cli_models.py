"""``sealserve models ...``: push, list, label, batching settings and delete models.

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
from storage import BatchSettings, StorageError

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator

T = TypeVar("T")

app = typer.Typer(no_args_is_help=True, help="Push, list, label, set batching and delete models.")
console = Console()
err = Console(stderr=True)

Url = Annotated[str | None, typer.Option("--url", envvar="SEALSERVE_URL", help="Server base URL.")]
Token = Annotated[
    str | None,
    typer.Option("--token", envvar="SEALSERVE_TOKEN", help="Bearer token.", show_default=False),
]
Tenant = Annotated[str | None, typer.Option("--tenant", help="Tenant (operator mode, no --url).")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
MaxBatch = Annotated[
    int | None,
    typer.Option("--max-batch", help="Most rows per invocation for this version (1-1024)."),
]
BatchDelay = Annotated[
    float | None,
    typer.Option("--batch-delay-ms", help="Longest a call waits to fill a batch (0-1000 ms)."),
]
NoBatching = Annotated[bool, typer.Option("--no-batching", help="Batching off for this version.")]


def _batch_settings(
    max_batch: int | None, delay_ms: float | None, *, off: bool
) -> BatchSettings | None:
    """The version's batching settings from the flags (None: none given, server defaults)."""
    if off and (max_batch is not None or delay_ms is not None):
        _fail("--no-batching cannot be combined with --max-batch or --batch-delay-ms")
    try:
        settings = BatchSettings(
            enabled=False if off else None, max_batch_size=max_batch, max_queue_delay_ms=delay_ms
        )
    except StorageError as exc:
        _fail(
            exc.message.replace("batching.max_batch_size", "--max-batch").replace(
                "batching.max_queue_delay_ms", "--batch-delay-ms"
            )
        )
    return None if settings.is_default else settings


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
    max_batch: MaxBatch = None,
    batch_delay_ms: BatchDelay = None,
    no_batching: NoBatching = False,
    url: Url = None,
    token: Token = None,
    tenant: Tenant = None,
    as_json: JsonFlag = False,
) -> None:
    """Upload a model as the next version of NAME, compressing it as asked, and show its report.

    Anything but a bare .tflite is a job on the server: the upload has a
    progress bar, then the job is followed to its end and its report printed.
    Batching flags are stored with a .tflite version as it is sealed; for a
    job they are set on the version once it is ready (so they need --wait).
    """
    batching = _batch_settings(max_batch, batch_delay_ms, off=no_batching)
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
    if upload.is_job and batching is not None and not wait:
        _fail("batching flags on a compression job need --wait: they are set on the new version")
    if url:
        with _remote(url, token) as client:
            if not upload.is_job:
                _print_version(_push_tflite(client, name, file, batching), as_json=as_json)
                return
            with _progress_bar() as progress:
                reply = post_form(client, name, upload, progress=progress)
            job = _check(reply)
            if wait:
                job = follow(lambda: _check(client.get(job["links"]["self"])), console=err)
            if batching is not None and job["state"] == "ready":
                _check(client.patch(_version_path(name, job["version"]), json=_patch(batching)))
    else:
        with _operator(tenant) as (services, principal):
            if not upload.is_job:
                with console.status(f"checking and sealing {file.name}..."):
                    info = _run(
                        services.models.upload_tflite(principal, name, file, batching=batching)
                    )
                _print_version(
                    {"model": info.model_name, "version": info.version, "state": info.state},
                    as_json=as_json,
                )
                return
            job = _run_locally(services, principal, name, upload, wait=wait)
            if batching is not None and job["state"] == "ready":
                _run(services.models.set_batching(principal, name, job["version"], batching))
    _print_job(job, as_json=as_json)


def _version_path(name: str, version: int) -> str:
    return f"/admin/v1/models/{name}/versions/{version}"


def _patch(batching: BatchSettings | None) -> dict[str, Any]:
    return {"batching": batching.to_dict() if batching else None}


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


def _push_tflite(
    client: httpx.Client, name: str, file: Path, batching: BatchSettings | None
) -> Any:
    params: dict[str, Any] = dict((batching or BatchSettings()).to_dict())
    if params.pop("enabled", None) is False:
        params["batching"] = "off"
    with _progress_bar() as progress:
        task = progress.add_task(f"uploading {file.name}", total=file.stat().st_size)
        reply = client.post(
            f"/admin/v1/models/{name}/versions",
            params=params,
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


@app.command("batching")
def batching_command(
    name: str,
    version: int,
    max_batch: MaxBatch = None,
    batch_delay_ms: BatchDelay = None,
    no_batching: NoBatching = False,
    default: Annotated[
        bool, typer.Option("--default", help="Back to the server's batching settings.")
    ] = False,
    url: Url = None,
    token: Token = None,
    tenant: Tenant = None,
    as_json: JsonFlag = False,
) -> None:
    """Show or set VERSION of model NAME's batching settings (no flags: show them).

    The flags given replace the version's settings as a whole; a flag left
    out follows the server's default. Workers apply a change when they next
    load the version.
    """
    batching = _batch_settings(max_batch, batch_delay_ms, off=no_batching)
    if default and batching is not None:
        _fail("--default cannot be combined with other batching flags")
    change = default or batching is not None
    if url:
        with _remote(url, token) as client:
            if change:
                found = _check(client.patch(_version_path(name, version), json=_patch(batching)))
            else:
                document = _check(client.get(f"/admin/v1/models/{name}"))
                found = next((v for v in document["versions"] if v["version"] == version), None)
                if found is None:
                    _fail(f"model '{name}' has no version '{version}'")
            current = found["batching"]
    else:
        with _operator(tenant) as (services, principal):
            if change:
                info = _run(services.models.set_batching(principal, name, version, batching))
            else:
                model = _run(services.models.get_model(principal, name))
                info = next((v for v in model.versions if v.version == version), None)
                if info is None:
                    _fail(f"model '{name}' has no version '{version}'")
            current = info.batching.to_dict() if info.batching else None
    if as_json:
        sys.stdout.write(
            json.dumps({"model": name, "version": version, "batching": current}) + "\n"
        )
        return
    console.print(f"{name} version {version}: batching {_describe(current)}")


def _describe(batching: dict[str, Any] | None) -> str:
    if not batching:
        return "as the server's defaults"
    if batching.get("enabled") is False:
        return "off"
    parts = [
        f"max batch {batching.get('max_batch_size', 'default')}",
        f"queue delay {batching.get('max_queue_delay_ms', 'default')} ms",
    ]
    return ", ".join(parts)
