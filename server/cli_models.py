"""``sealserve models ...``: push, list, label and delete models.

Two ways to reach the registry: through a running server with a bearer token
(``--url``/``--token`` or ``SEALSERVE_URL``/``SEALSERVE_TOKEN``), as a tenant's
admin would; or, without ``--url``, directly on the data directory with
``--tenant``, as an operator holding the master key would.
"""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import contextmanager
from pathlib import Path  # noqa: TC003 - typer reads the annotation at runtime
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from auth import AuthError
from server.demo.setup import operator_principal
from server.service.errors import ServiceError
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
    except (ServiceError, StorageError, AuthError) as exc:
        _fail(exc.message)


def _chunks(path: Path, progress: Progress, task: Any) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            progress.update(task, advance=len(chunk))
            yield chunk


@app.command("push")
def push(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A .tflite file.")],
    name: Annotated[str, typer.Option("--name", help="Model name.")],
    url: Url = None,
    token: Token = None,
    tenant: Tenant = None,
    as_json: JsonFlag = False,
) -> None:
    """Upload a model file as the next version of NAME (with a progress bar)."""
    if url:
        with (
            _remote(url, token) as client,
            Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=err,
                transient=True,
            ) as progress,
        ):
            task = progress.add_task(f"uploading {file.name}", total=file.stat().st_size)
            reply = client.post(
                f"/admin/v1/models/{name}/versions",
                content=_chunks(file, progress, task),
                headers={"Content-Type": "application/octet-stream"},
            )
        version = _check(reply)
    else:
        with (
            _operator(tenant) as (services, principal),
            console.status(f"checking and sealing {file.name}..."),
        ):
            info = _run(services.models.upload_tflite(principal, name, file))
        version = {"model": info.model_name, "version": info.version, "state": info.state}
    if as_json:
        sys.stdout.write(json.dumps(version, indent=2) + "\n")
    else:
        console.print(
            f"[green]pushed[/] {version['model']} version {version['version']} ({version['state']})"
        )


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
