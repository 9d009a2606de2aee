"""``sealserve audit ...``: list, export and verify the audit log (operator, on the database)."""

from __future__ import annotations

import json
import sys
from pathlib import Path  # noqa: TC003 - typer reads the annotation at runtime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True, help="Review, export and verify the audit log.")
console = Console()
err = Console(stderr=True)


@app.command("list")
def list_entries(
    tenant: Annotated[str | None, typer.Option(help="Tenant name.")] = None,
    actor: Annotated[str | None, typer.Option(help="Subject or client id.")] = None,
    action: Annotated[str | None, typer.Option(help="e.g. model.upload, auth.failure")] = None,
    resource: Annotated[str | None, typer.Option()] = None,
    outcome: Annotated[str | None, typer.Option(help="success, failure or denied")] = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601 time")] = None,
    until: Annotated[str | None, typer.Option(help="ISO 8601 time")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Newest entries first, filtered."""
    from server.cli import _services  # noqa: PLC0415 - the CLI's own wiring

    with _services() as services:
        tenant_id = services.tenants.get(None, tenant).id if tenant else None
        entries = services.audit.list(
            None,
            tenant_id=tenant_id,
            limit=limit,
            actor=actor,
            action=action,
            resource=resource,
            outcome=outcome,
            since=since,
            until=until,
        )
    if as_json:
        sys.stdout.write(json.dumps(entries, indent=2) + "\n")
        return
    table = Table("seq", "time", "actor", "tenant", "action", "resource", "outcome")
    for entry in entries:
        table.add_row(
            str(entry["seq"]),
            entry["ts"][:19],
            entry["actor_subject"] or "",
            (entry["tenant_id"] or "")[:8],
            entry["action"],
            entry["resource"],
            entry["outcome"],
        )
    console.print(table)


@app.command("export")
def export(
    since: Annotated[int, typer.Option(help="Only entries after this sequence number.")] = 0,
) -> None:
    """Write the log as JSON lines (public key, entries, signed checkpoints) to stdout."""
    from server.cli import _services  # noqa: PLC0415

    with _services() as services, err.status("exporting audit log..."):
        audit = services.identities.audit
        audit.checkpoint_now()  # sign the current head, so the export pins the tail
        for line in audit.export(since_seq=since):
            sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")


@app.command("verify")
def verify(
    from_export: Annotated[
        Path | None,
        typer.Option(
            "--from-export",
            exists=True,
            dir_okay=False,
            help="An earlier export whose checkpoints the log must still match.",
        ),
    ] = None,
) -> None:
    """Check the whole chain (and an export's checkpoints); exit 1 naming the first bad entry."""
    from server.cli import _services  # noqa: PLC0415

    exported = []
    if from_export is not None:
        with from_export.open(encoding="utf-8") as handle:
            exported = [json.loads(line) for line in handle if line.strip()]
    with _services() as services, err.status("verifying audit log..."):
        result = services.identities.audit.verify(exported=exported)
    if result.ok:
        console.print(f"[green]ok[/]: {result.entries} entries, chain and checkpoints intact")
        return
    err.print(f"[bold red]audit log broken[/] at entry {result.first_bad_seq}: {result.reason}")
    raise typer.Exit(1)
