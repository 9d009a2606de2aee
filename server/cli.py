"""The ``sealserve`` command line.

Commands parse their arguments, build what they need through
``server.bootstrap`` and call the registry or services; no business logic
lives here. Every listing takes ``--json`` for scripts.
"""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path  # noqa: TC003 - typer reads the annotation at runtime
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from server import schema
from server.bootstrap import Container, build_container, ensure_schema
from server.errors import StartupError
from server.logs import configure_logging
from server.settings import ConfigFileError, Settings, load_settings
from storage import StorageError

if TYPE_CHECKING:
    from collections.abc import Iterator

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])
db_app = typer.Typer(no_args_is_help=True, help="Database schema migrations.")
tenants_app = typer.Typer(no_args_is_help=True, help="Create, list, suspend and delete tenants.")
app.add_typer(db_app, name="db")
app.add_typer(tenants_app, name="tenants")

console = Console()
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


class _State:
    config: Path | None = None


@app.callback()
def _root(
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML or JSON settings file.")
    ] = None,
) -> None:
    _State.config = config


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(_State.config, **{k: v for k, v in overrides.items() if v is not None})
    except ConfigFileError as exc:
        _fail(str(exc))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        _fail(f"invalid settings: {problems}")


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@contextmanager
def _container(*, create_keys: bool = False, migrate: bool = False) -> Iterator[Container]:
    settings = _settings()
    configure_logging(level="WARNING", fmt=settings.log_format)
    try:
        container = build_container(settings, create_keys=create_keys)
    except StartupError as exc:
        _fail(str(exc))
    try:
        if migrate:
            ensure_schema(container.engine, settings)
        yield container
    except (StartupError, StorageError) as exc:
        _fail(getattr(exc, "message", str(exc)))
    finally:
        container.close()


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# --- init and serve -----------------------------------------------------------
@app.command()
def init(
    if_missing: Annotated[
        bool, typer.Option("--if-missing", help="Do nothing when already initialised.")
    ] = False,
) -> None:
    """Create the data directory, the master key (if none) and the schema."""
    settings = _settings()
    key_file = settings.resolved_master_key_file
    already = settings.master_key is not None or key_file.exists()
    with console.status("initialising data directory..."), _container(create_keys=True) as c:
        schema.upgrade(c.engine)
        revision = schema.current_revision(c.engine)
    if already and if_missing:
        console.print(f"data directory {settings.data_dir} already initialised (schema {revision})")
        return
    console.print(f"[green]initialised[/] {settings.data_dir} (schema {revision})")
    if not already:
        console.print(
            f"master key written to {key_file} (mode 0600): back it up; "
            "without it no model can be unsealed"
        )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    rest_port: Annotated[int | None, typer.Option(help="REST port.")] = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port.")] = None,
    workers: Annotated[int | None, typer.Option(help="Local worker processes.")] = None,
) -> None:
    """Run the gateway (REST and gRPC) until SIGTERM."""
    from server.runner import run_gateway  # noqa: PLC0415 - keeps other commands light

    settings = _settings(host=host, rest_port=rest_port, grpc_port=grpc_port, workers=workers)
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    try:
        container = build_container(settings, create_keys=True)
        ensure_schema(container.engine, settings)
    except StartupError as exc:
        _fail(str(exc))
    try:
        asyncio.run(run_gateway(container))
    except OSError as exc:
        _fail(f"cannot start: {exc}")
    finally:
        container.close()


# --- db -----------------------------------------------------------------------
@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Upgrade the schema (default: to the newest revision)."""
    with console.status(f"upgrading schema to {revision}..."), _container() as c:
        schema.upgrade(c.engine, revision)
        console.print(f"schema at {schema.current_revision(c.engine)}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target, e.g. base.")]) -> None:
    """Downgrade the schema to REVISION (``base`` removes every table)."""
    with console.status(f"downgrading schema to {revision}..."), _container() as c:
        schema.downgrade(c.engine, revision)
        console.print(f"schema at {schema.current_revision(c.engine) or 'base'}")


@db_app.command("current")
def db_current(as_json: JsonFlag = False) -> None:
    """Show the schema revision and whether it is current."""
    with _container() as c:
        current, head = schema.current_revision(c.engine), schema.head_revision(c.engine)
        info = {"current": current, "head": head, "up_to_date": current == head}
    if as_json:
        _print_json(info)
    else:
        state = "[green]up to date[/]" if info["up_to_date"] else "[yellow]out of date[/]"
        console.print(f"schema {info['current'] or 'empty'} (head {info['head']}): {state}")


# --- tenants ------------------------------------------------------------------
@tenants_app.command("create")
def tenants_create(name: str, as_json: JsonFlag = False) -> None:
    """Create a tenant (and its first key)."""
    with _container(migrate=True) as c:
        tenant = c.registry.create_tenant(name)
    if as_json:
        _print_json(asdict(tenant))
    else:
        console.print(f"[green]created[/] tenant {tenant.name} ({tenant.id})")


@tenants_app.command("list")
def tenants_list(as_json: JsonFlag = False) -> None:
    """List tenants."""
    with _container(migrate=True) as c:
        tenants = c.registry.list_tenants()
    if as_json:
        _print_json([asdict(t) for t in tenants])
        return
    table = Table("name", "id", "state", "created")
    for t in tenants:
        table.add_row(t.name, t.id, t.state, t.created_at.isoformat(timespec="seconds"))
    console.print(table)


@tenants_app.command("suspend")
def tenants_suspend(name: str) -> None:
    """Suspend a tenant: its tokens stop working at once."""
    with _container(migrate=True) as c:
        c.registry.set_tenant_state(name, "suspended")
    console.print(f"tenant {name} suspended")


@tenants_app.command("resume")
def tenants_resume(name: str) -> None:
    """Reinstate a suspended tenant."""
    with _container(migrate=True) as c:
        c.registry.set_tenant_state(name, "active")
    console.print(f"tenant {name} active")


@tenants_app.command("delete")
def tenants_delete(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a tenant, destroying its keys: its models become unreadable everywhere."""
    if not yes:
        typer.confirm(
            f"Delete tenant {name} and destroy its keys? This cannot be undone", abort=True
        )
    with _container(migrate=True) as c:
        c.registry.delete_tenant(name)
    console.print(f"tenant {name} deleted; its keys are destroyed")


def main() -> None:
    """Console-script entry point."""
    app()
