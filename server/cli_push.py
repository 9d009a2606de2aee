"""``sealserve models push``: upload a model, as a job when it is to be compressed.

A bare ``.tflite`` is checked and sealed at once; anything else (a Keras or
SavedModel file, or compression asked for) becomes an intake job whose
upload shows a progress bar and which is then followed to its end. Through a
running server (``--url``) or, as an operator, on the data directory.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from server.cli_intake import FlagError, Upload, build_options, follow, post_form, report_tables
from server.cli_models import (
    BatchDelay,
    JsonFlag,
    MaxBatch,
    NoBatching,
    Tenant,
    Token,
    Url,
    batch_settings,
    batching_patch,
    check,
    console,
    err,
    fail,
    operator,
    remote,
    run_call,
    version_path,
)
from server.service.jobs import job_document
from storage import BatchSettings

if TYPE_CHECKING:
    from collections.abc import Iterator

    import httpx


def _chunks(path: Path, progress: Progress, task: Any) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            progress.update(task, advance=len(chunk))
            yield chunk


def _data_option(flag: str, what: str) -> Any:
    return typer.Option(flag, exists=True, dir_okay=False, help=what)


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
    batching = batch_settings(max_batch, batch_delay_ms, off=no_batching)
    student = Path(distill) if distill and distill.lower().endswith(".keras") else None
    if student is not None and not student.is_file():
        fail(f"--distill: no such file {student}")
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
        fail(str(exc))
    parts = {
        "model": file,
        "calibration": calibration_data,
        "evaluation": eval_data,
        "training": train_data,
        "student": student,
    }
    upload = Upload({k: v for k, v in parts.items() if v is not None}, options)
    if upload.is_job and batching is not None and not wait:
        fail("batching flags on a compression job need --wait: they are set on the new version")
    if url:
        with remote(url, token) as client:
            if not upload.is_job:
                _print_version(_push_tflite(client, name, file, batching), as_json=as_json)
                return
            with _progress_bar() as progress:
                reply = post_form(client, name, upload, progress=progress)
            job = check(reply)
            if wait:
                job = follow(lambda: check(client.get(job["links"]["self"])), console=err)
            if batching is not None and job["state"] == "ready":
                check(
                    client.patch(version_path(name, job["version"]), json=batching_patch(batching))
                )
    else:
        with operator(tenant) as (services, principal):
            if not upload.is_job:
                with console.status(f"checking and sealing {file.name}..."):
                    info = run_call(
                        services.models.upload_tflite(principal, name, file, batching=batching)
                    )
                _print_version(
                    {"model": info.model_name, "version": info.version, "state": info.state},
                    as_json=as_json,
                )
                return
            job = _run_locally(services, principal, name, upload, wait=wait)
            if batching is not None and job["state"] == "ready":
                run_call(services.models.set_batching(principal, name, job["version"], batching))
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
    return check(reply)


def _run_locally(
    services: Any, principal: Any, name: str, upload: Upload, *, wait: bool
) -> dict[str, Any]:
    """Queue the job on the data directory and run it in a child process of this command."""
    staged = services.jobs.new_upload()
    try:
        for part, path in upload.files.items():
            shutil.copyfile(path, staged.path(services.jobs.staged_name(part, path.name)))
        record = run_call(
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
        return job_document(run_call(services.jobs.get(principal, record.id)))

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


def register(models_app: typer.Typer) -> None:
    """Add ``push`` to the ``models`` group."""
    models_app.command("push")(push)
