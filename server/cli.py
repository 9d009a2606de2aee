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
import uvloop
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from auth import AuthError
from server import schema
from server.bootstrap import Container, Services, build_container, build_services, ensure_schema
from server.cli_audit import app as audit_app
from server.cli_keys import register as register_key_commands
from server.cli_models import app as models_app
from server.cli_push import register as register_push_command
from server.demo.setup import DemoClient, ensure_demo, how_to_call
from server.errors import StartupError
from server.logs import configure_logging
from server.service.errors import ServiceError
from server.settings import ConfigFileError, Settings, is_host_port, load_settings
from storage import StorageError

if TYPE_CHECKING:
    from collections.abc import Iterator

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])
db_app = typer.Typer(no_args_is_help=True, help="Database schema migrations.")
tenants_app = typer.Typer(no_args_is_help=True, help="Create, list, suspend and delete tenants.")
clients_app = typer.Typer(
    no_args_is_help=True, help="API clients (service accounts) and their secrets."
)
keys_app = typer.Typer(no_args_is_help=True, help="Key rotation.")
app.add_typer(db_app, name="db")
app.add_typer(tenants_app, name="tenants")
app.add_typer(clients_app, name="clients")
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
app.add_typer(audit_app, name="audit")

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
    except (StartupError, StorageError, ServiceError, AuthError) as exc:
        _fail(getattr(exc, "message", str(exc)))
    finally:
        container.close()


@contextmanager
def _services() -> Iterator[Services]:
    with _container(migrate=True) as container:
        yield build_services(container)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# --- init and serve -----------------------------------------------------------
@app.command()
def init(
    if_missing: Annotated[
        bool, typer.Option("--if-missing", help="Do nothing when already initialised.")
    ] = False,
    demo: Annotated[
        bool, typer.Option("--demo", help="Also create the demo tenant, client and digits model.")
    ] = False,
) -> None:
    """Create the data directory, the master key (if none) and the schema."""
    settings = _settings()
    key_file = settings.resolved_master_key_file
    already = settings.master_key is not None or key_file.exists()
    admin = None
    with console.status("initialising data directory..."), _container(create_keys=True) as c:
        schema.upgrade(c.engine)
        revision = schema.current_revision(c.engine)
        services = build_services(c)
        if not services.tenants.list_clients(None, tenant=None):
            admin = services.tenants.create_client(
                None, tenant=None, role="platform-admin", name="first platform admin"
            )
        demo_client = ensure_demo(settings, services) if demo else None
    if already and if_missing and admin is None:
        console.print(f"data directory {settings.data_dir} already initialised (schema {revision})")
        _print_demo(settings, demo_client)
        return
    console.print(f"[green]initialised[/] {settings.data_dir} (schema {revision})")
    if not already:
        console.print(
            f"master key written to {key_file} (mode 0600): back it up; "
            "without it no model can be unsealed"
        )
    if admin is not None:
        console.print(
            "platform admin client created; its secret is shown [bold]only now[/]:\n"
            f"  client_id:     {admin.client_id}\n  client_secret: {admin.client_secret}"
        )
    _print_demo(settings, demo_client)


def _print_demo(settings: Settings, client: DemoClient | None) -> None:
    if client is not None:
        console.print(
            "\n" + how_to_call(settings, client), highlight=False, soft_wrap=True, markup=False
        )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    rest_port: Annotated[int | None, typer.Option(help="REST port.")] = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port.")] = None,
    workers: Annotated[int | None, typer.Option(help="Local worker processes.")] = None,
    gateways: Annotated[
        int | None, typer.Option(help="Gateway processes sharing the ports (one per core).")
    ] = None,
) -> None:
    """Run the gateway (REST and gRPC) until SIGTERM."""
    from server.runner import run_gateway  # noqa: PLC0415 - keeps other commands light

    settings = _settings(
        host=host, rest_port=rest_port, grpc_port=grpc_port, workers=workers, gateways=gateways
    )
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    try:
        container = build_container(settings, create_keys=True)
        ensure_schema(container.engine, settings)
        services = build_services(container)
    except (StartupError, StorageError) as exc:
        _fail(getattr(exc, "message", str(exc)))
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run_gateway(container, services))
    except StartupError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot start: {exc}")
    finally:
        container.close()


@app.command()
def worker(
    listen: Annotated[
        str, typer.Option(help="host:port to listen on, e.g. 0.0.0.0:8100 (TCP, mutual TLS).")
    ],
) -> None:
    """Run one inference worker for gateways on other hosts until SIGTERM or Ctrl-C.

    It reads sealed models from the registry (SEALSERVE_DATABASE_URL) and
    unseals them with the master key, like a local worker, and accepts only
    clients with a certificate from SEALSERVE_WORKER_TLS_CA. Gateways list it
    in SEALSERVE_REMOTE_WORKERS.
    """
    from server.pool.remote import TlsFiles, TlsFilesError  # noqa: PLC0415 - see serve()
    from server.pool.worker import serve as serve_worker  # noqa: PLC0415 - see serve()

    if not is_host_port(listen):
        _fail(f"--listen {listen!r} is not host:port")
    settings = _settings()
    files = settings.worker_tls_files
    if files is None:
        _fail(
            "a remote worker needs mutual TLS: set SEALSERVE_WORKER_TLS_CERT, "
            "SEALSERVE_WORKER_TLS_KEY and SEALSERVE_WORKER_TLS_CA"
        )
    try:
        tls = TlsFiles(files)
    except TlsFilesError as exc:
        _fail(str(exc))
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve_worker(listen, settings, tls=tls, stop_on_interrupt=True))
    except (StartupError, StorageError) as exc:
        _fail(getattr(exc, "message", str(exc)))
    except OSError as exc:
        _fail(f"cannot start: {exc}")


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
    with _services() as s:
        tenant = s.tenants.create(None, name)
    if as_json:
        _print_json(asdict(tenant))
    else:
        console.print(f"[green]created[/] tenant {tenant.name} ({tenant.id})")


@tenants_app.command("list")
def tenants_list(as_json: JsonFlag = False) -> None:
    """List tenants."""
    with _services() as s:
        tenants = s.tenants.list_tenants(None)
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
    with _services() as s:
        s.tenants.set_state(None, name, "suspended")
    console.print(f"tenant {name} suspended")


@tenants_app.command("resume")
def tenants_resume(name: str) -> None:
    """Reinstate a suspended tenant."""
    with _services() as s:
        s.tenants.set_state(None, name, "active")
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
    with _services() as s:
        s.tenants.delete(None, name)
    console.print(f"tenant {name} deleted; its keys are destroyed")


# --- clients ------------------------------------------------------------------
TenantOption = Annotated[
    str | None, typer.Option("--tenant", help="Tenant name; omit for a platform client.")
]


@clients_app.command("create")
def clients_create(
    role: Annotated[
        str, typer.Option("--role", help="platform-admin, auditor, tenant-admin, tenant-client")
    ],
    tenant: TenantOption = None,
    name: Annotated[str, typer.Option(help="A label for people.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Create a client; its secret is printed once and cannot be shown again."""
    with _services() as s:
        client = s.tenants.create_client(None, tenant=tenant, role=role, name=name)
    if as_json:
        _print_json(asdict(client))
        return
    console.print(
        f"[green]created[/] {client.role} client for {client.tenant or 'the platform'}; "
        "the secret is shown [bold]only now[/]:\n"
        f"  client_id:     {client.client_id}\n  client_secret: {client.client_secret}"
    )


@clients_app.command("list")
def clients_list(tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """List a tenant's clients (or the platform's); secrets are never shown."""
    with _services() as s:
        clients = s.tenants.list_clients(None, tenant=tenant)
    rows = [
        {k: v for k, v in asdict(c).items() if k not in ("secret_hash", "tenant_id")}
        for c in clients
    ]
    if as_json:
        _print_json(rows)
        return
    table = Table("client_id", "role", "name", "created", "revoked")
    for c in clients:
        table.add_row(
            c.client_id,
            c.role,
            c.name,
            c.created_at.isoformat(timespec="seconds"),
            c.revoked_at.isoformat(timespec="seconds") if c.revoked_at else "",
        )
    console.print(table)


@clients_app.command("revoke")
def clients_revoke(client_id: str, tenant: TenantOption = None) -> None:
    """Revoke a client: no new tokens, and its current tokens stop working."""
    with _services() as s:
        s.tenants.revoke_client(None, tenant=tenant, client_id=client_id)
    console.print(f"client {client_id} revoked")


# --- keys -------------------------------------------------------------------------
@keys_app.command("rotate-signing")
def keys_rotate_signing(as_json: JsonFlag = False) -> None:
    """Move the token signing keys one step: next → primary → previous → retired."""
    with console.status("rotating signing keys..."), _services() as s:
        keys = s.signing_keys.rotate().keys
    summary = [{"kid": k.kid, "alg": str(k.alg), "state": str(k.state)} for k in keys]
    if as_json:
        _print_json(summary)
        return
    table = Table("kid", "alg", "state")
    for row in summary:
        table.add_row(row["kid"], row["alg"], row["state"])
    console.print(table)


register_key_commands(keys_app)
register_push_command(models_app)


def main() -> None:
    """Console-script entry point."""
    app()
