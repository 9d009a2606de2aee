"""``sealserve models ...``: list, label, batching settings and delete models.

``push`` is ``server.cli_push``'s; this module holds the group, its options
and the helpers both use.

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
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import httpx
import typer
from rich.console import Console
from rich.table import Table

from auth import AuthError
from compress import CompressionError
from server.demo.setup import operator_principal
from server.service.errors import ServiceError
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


def batch_settings(
    max_batch: int | None, delay_ms: float | None, *, off: bool
) -> BatchSettings | None:
    """The version's batching settings from the flags (None: none given, server defaults)."""
    if off and (max_batch is not None or delay_ms is not None):
        fail("--no-batching cannot be combined with --max-batch or --batch-delay-ms")
    try:
        settings = BatchSettings(
            enabled=False if off else None, max_batch_size=max_batch, max_queue_delay_ms=delay_ms
        )
    except StorageError as exc:
        fail(
            exc.message.replace("batching.max_batch_size", "--max-batch").replace(
                "batching.max_queue_delay_ms", "--batch-delay-ms"
            )
        )
    return None if settings.is_default else settings


def fail(message: str) -> NoReturn:
    """Print one error line and exit 1 (no trace)."""
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


def remote(url: str, token: str | None) -> httpx.Client:
    """A client for the server at ``url`` with the bearer token (required)."""
    if not token:
        fail("--token (or SEALSERVE_TOKEN) is required with --url")
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=300)


def check(reply: httpx.Response) -> Any:
    """The reply's JSON; an error status exits with the server's message."""
    if reply.status_code >= 400:  # noqa: PLR2004
        try:
            message = reply.json().get("error", reply.text)
        except ValueError:
            message = reply.text
        fail(f"{reply.status_code}: {message}")
    return reply.json() if reply.content else None


@contextmanager
def operator(tenant: str | None) -> Iterator[tuple[Any, Any]]:
    """Services and an operator principal for ``tenant`` on the local data directory."""
    from server.cli import _services  # noqa: PLC0415 - the CLI's own wiring

    if not tenant:
        fail("give --url (and a token) or, for operator mode, --tenant")
    with _services() as services:
        try:
            tenant_id = services.tenants.get(None, tenant).id
        except StorageError as exc:
            fail(exc.message)
        yield services, operator_principal(tenant_id)


def run_call(call: Coroutine[Any, Any, T]) -> T:
    """Run one service call; its error becomes one clear line, no trace."""
    try:
        return asyncio.run(call)
    except (ServiceError, StorageError, AuthError, CompressionError) as exc:
        fail(exc.message)


def version_path(name: str, version: int) -> str:
    """The admin API path of one model version."""
    return f"/admin/v1/models/{name}/versions/{version}"


def batching_patch(batching: BatchSettings | None) -> dict[str, Any]:
    """The PATCH body that sets a version's batching (``None``: the server's defaults)."""
    return {"batching": batching.to_dict() if batching else None}


@app.command("list")
def list_models(
    url: Url = None, token: Token = None, tenant: Tenant = None, as_json: JsonFlag = False
) -> None:
    """List models with their versions and labels."""
    if url:
        with remote(url, token) as client:
            models = check(client.get("/admin/v1/models"))["models"]
    else:
        with operator(tenant) as (services, principal):
            found = run_call(services.models.list_models(principal))
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
        with remote(url, token) as client:
            check(
                client.put(
                    f"/admin/v1/models/{name}/labels/{label_name}", json={"version": version}
                )
            )
    else:
        with operator(tenant) as (services, principal):
            run_call(services.models.set_label(principal, name, label_name, version))
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
        with remote(url, token) as client:
            check(client.delete(path))
    else:
        with operator(tenant) as (services, principal):
            if version:
                run_call(services.models.delete_version(principal, name, version))
            else:
                run_call(services.models.delete_model(principal, name))
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
    batching = batch_settings(max_batch, batch_delay_ms, off=no_batching)
    if default and batching is not None:
        fail("--default cannot be combined with other batching flags")
    change = default or batching is not None
    if url:
        with remote(url, token) as client:
            if change:
                found = check(
                    client.patch(version_path(name, version), json=batching_patch(batching))
                )
            else:
                document = check(client.get(f"/admin/v1/models/{name}"))
                found = next((v for v in document["versions"] if v["version"] == version), None)
                if found is None:
                    fail(f"model '{name}' has no version '{version}'")
            current = found["batching"]
    else:
        with operator(tenant) as (services, principal):
            if change:
                info = run_call(services.models.set_batching(principal, name, version, batching))
            else:
                model = run_call(services.models.get_model(principal, name))
                info = next((v for v in model.versions if v.version == version), None)
                if info is None:
                    fail(f"model '{name}' has no version '{version}'")
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
