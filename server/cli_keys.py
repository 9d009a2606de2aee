"""``sealserve keys ...``: tenant and master key rotation (operator, on the database).

Registered on the ``keys`` group next to ``rotate-signing`` by ``server.cli``.
Progress goes to stderr, results to stdout (``--json`` for scripts). Key ids
are printed; key material never is.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path  # noqa: TC003 - typer reads the annotation at runtime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from storage.crypto.master import (
    MasterKeyError,
    create_master_key_file,
    load_master_key_file,
)
from storage.errors import KeyUnavailable
from storage.rotation import KeyRotation

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from server.bootstrap import Container

console = Console()
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
LimitOption = Annotated[
    int | None,
    typer.Option(
        "--limit",
        min=0,
        help="Stop after re-wrapping this many keys; run again to finish "
        "(every model stays readable).",
    ),
]
BatchOption = Annotated[int, typer.Option("--batch-size", min=1, help="Keys per transaction.")]


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@contextmanager
def _rotation(batch_size: int) -> Iterator[tuple[Container, KeyRotation]]:
    from server.cli import _container  # noqa: PLC0415 - the CLI's own wiring

    with _container(migrate=True) as container:
        yield (
            container,
            KeyRotation(
                session_factory=container.sessions,
                master_keys=container.master_keys,
                audit=container.registry.audit,
                batch_size=batch_size,
            ),
        )


@contextmanager
def _progress(what: str, *, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr, fed ``(done, total)``; nothing when ``quiet``."""
    if quiet:
        yield lambda _done, _total: None
        return
    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(what, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def rotate_tenant(
    tenant: Annotated[str, typer.Argument(help="Tenant name.")],
    limit: LimitOption = None,
    batch_size: BatchOption = 100,
    as_json: JsonFlag = False,
) -> None:
    """New key version for TENANT; its data keys are re-wrapped, then the old version destroyed.

    Online: gateways and workers keep serving. No model data is re-encrypted.
    An interrupted run (or one stopped by --limit) is finished by the next.
    """
    with (
        _rotation(batch_size) as (_, rotation),
        _progress("re-wrapping data keys", quiet=as_json) as progress,
    ):
        result = rotation.rotate_tenant(tenant, limit=limit, progress=progress)
    if as_json:
        _print_json({**asdict(result), "complete": result.complete})
        return
    prefix = "finished the interrupted rotation: " if result.resumed else ""
    if result.complete:
        destroyed = ", ".join(f"v{v}" for v in result.destroyed) or "none"
        console.print(
            f"tenant {result.tenant}: {prefix}key v{result.version} is current; "
            f"{result.rewrapped} data keys re-wrapped; destroyed {destroyed}"
        )
    else:
        console.print(
            f"tenant {result.tenant}: {prefix}key v{result.version} is current; stopped after "
            f"{result.rewrapped} data keys, {result.remaining} remain under the old version "
            "(still readable); run the command again to finish"
        )


def rotate_master(
    new_key_file: Annotated[
        Path, typer.Option("--new-key-file", help="The new master key (see keys new-master-key).")
    ],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Re-wrap even though the configured key source lacks the new key "
            "(only when no gateway or worker is running).",
        ),
    ] = False,
    limit: LimitOption = None,
    batch_size: BatchOption = 100,
    as_json: JsonFlag = False,
) -> None:
    """Re-wrap every tenant key, server secret and signing key under a new master key.

    For no downtime, first give every process the new key (first line of the
    key file, old key below it) — see README "Rotating keys". Safe to re-run:
    it re-wraps only what is not yet under the new key.
    """
    try:
        target = load_master_key_file(new_key_file, require_private=True)
    except MasterKeyError as exc:
        err.print(f"[bold red]error:[/] {exc.message}")
        raise typer.Exit(1) from None
    with _rotation(batch_size) as (container, rotation):
        try:
            container.master_keys.get(target.key_id)
        except KeyUnavailable:
            if not force:
                err.print(
                    f"[bold red]error:[/] the configured master key source does not hold the new "
                    f"key {target.key_id}: running gateways and workers configured the same way "
                    "could not unseal once it is re-wrapped. Put it first in the key file, keeping "
                    "the old key below it (README, 'Rotating keys'), or pass --force if every "
                    "process is stopped."
                )
                raise typer.Exit(1) from None
        with _progress("re-wrapping master-wrapped keys", quiet=as_json) as progress:
            result = rotation.rotate_master(target, limit=limit, progress=progress)
    if as_json:
        _print_json({**asdict(result), "complete": result.complete})
        return
    counts = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in result.rewrapped.items())
    if result.complete:
        old = ", ".join(result.previous) or "none"
        console.print(
            f"every key is now wrapped by master key {result.key_id} (re-wrapped {counts}). "
            f"Once every gateway and worker runs with the new key first, remove the old key(s) "
            f"({old}) from the key source and destroy them."
        )
    else:
        console.print(
            f"stopped after re-wrapping {counts}; {result.remaining} rows are still under the "
            "old key (still readable with it); run the command again to finish"
        )


def new_master_key(
    path: Annotated[Path, typer.Argument(help="File to create (mode 0600, never overwritten).")],
    as_json: JsonFlag = False,
) -> None:
    """Generate a new master key into PATH and print its key id (never the key)."""
    try:
        key = create_master_key_file(path)
    except FileExistsError:
        err.print(f"[bold red]error:[/] {path} already exists; it is never overwritten")
        raise typer.Exit(1) from None
    if as_json:
        _print_json({"path": str(path), "key_id": key.key_id})
        return
    console.print(f"new master key {key.key_id} written to {path} (mode 0600); back it up")


def master_status(as_json: JsonFlag = False) -> None:
    """Which master key ids wrap how many keys, and which of them this configuration holds."""
    with _rotation(100) as (container, rotation):
        usage = rotation.master_key_usage()
        primary = container.master_keys.primary.key_id
        held = set(container.master_keys.key_ids)
    rows: list[dict[str, Any]] = [
        {"key_id": k, "rows": usage.get(k, 0), "configured": k in held, "primary": k == primary}
        for k in sorted(set(usage) | held)
    ]
    if as_json:
        _print_json(rows)
        return
    table = Table("master key id", "wrapped keys", "configured", "primary")
    for row in rows:
        table.add_row(
            row["key_id"],
            str(row["rows"]),
            "yes" if row["configured"] else "[red]no[/]",
            "yes" if row["primary"] else "",
        )
    console.print(table)


def register(keys_app: typer.Typer) -> None:
    """Add these commands to the ``keys`` group."""
    keys_app.command("rotate-tenant")(rotate_tenant)
    keys_app.command("rotate-master")(rotate_master)
    keys_app.command("new-master-key")(new_master_key)
    keys_app.command("master-status")(master_status)
