"""Seal and unseal throughput and peak memory, on SQLite and PostgreSQL.

    python bench/seal.py [--sizes 1 10 100] [--postgres URL]

Each measurement runs in a fresh process (after one warm-up unseal of a tiny
model, so the connection and compiled queries are warm as in a running worker)
so peak RSS (ru_maxrss) belongs to that one operation: ``rss_delta`` is the
peak minus the process's RSS just before the operation started. Models are
random bytes (incompressible, the worst case for zstd) sealed from a file with
the default 1 MiB segments.
Targets: unseal >= 300 MB/s on SQLite; sealing 100 MB raises peak RSS < 32 MB.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from server import schema
from storage import MasterKey, MasterKeyRing, Registry, make_engine, make_session_factory
from storage.db import normalize_url

MB = 1_000_000
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


def _rss_now() -> int:
    with open("/proc/self/statm") as statm:  # noqa: PTH123 - tiny procfs read
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child(op: str, url: str, size_mb: int, workdir: Path) -> dict[str, float]:
    """One measurement, in this (fresh) process."""
    key = MasterKey.from_bytes(bytes.fromhex((workdir / "key.hex").read_text()))
    engine = make_engine(url)
    registry = Registry(
        session_factory=make_session_factory(engine), master_keys=MasterKeyRing(key)
    )
    ids = json.loads((workdir / "ids.json").read_text()) if (workdir / "ids.json").exists() else {}
    source = workdir / f"model-{size_mb}.bin"
    # Warm the connection and the compiled queries, as a running worker has them:
    # the figure is steady-state throughput, not process start-up.
    registry.open_version(ids["tenant"], ids["warmup"])
    before = _rss_now()
    started = time.perf_counter()
    if op == "seal":
        with source.open("rb") as handle:
            info = registry.put_version(
                tenant_id=ids["tenant"], model_name=f"m{size_mb}", source=handle, format="tflite"
            )
        seconds = time.perf_counter() - started
        ids[str(size_mb)] = info.id
        (workdir / "ids.json").write_text(json.dumps(ids))
    else:
        # Median of several runs: a single 1 MB unseal takes a few ms and is noisy.
        timings = []
        for _ in range(max(3, 50 // size_mb)):
            started = time.perf_counter()
            data = registry.open_version(ids["tenant"], ids[str(size_mb)])
            timings.append(time.perf_counter() - started)
            if len(data) != size_mb * MB:
                msg = "unsealed size mismatch"
                raise SystemExit(msg)
            del data
        seconds = statistics.median(timings)
    engine.dispose()
    return {
        "seconds": seconds,
        "mb_s": size_mb * MB / seconds / MB,
        "rss_delta_mb": (_peak_rss() - before) / 2**20,
    }


def _prepare(url: str, workdir: Path, sizes: list[int]) -> None:
    key = os.urandom(32)
    (workdir / "key.hex").write_text(key.hex())
    engine = make_engine(url)
    schema.upgrade(engine)
    registry = Registry(
        session_factory=make_session_factory(engine),
        master_keys=MasterKeyRing(MasterKey.from_bytes(key)),
    )
    tenant = registry.create_tenant("bench")
    warmup = registry.put_version(
        tenant_id=tenant.id, model_name="warmup", source=io.BytesIO(b"w"), format="tflite"
    )
    (workdir / "ids.json").write_text(json.dumps({"tenant": tenant.id, "warmup": warmup.id}))
    engine.dispose()
    for size in sizes:
        with (workdir / f"model-{size}.bin").open("wb") as handle:
            for _ in range(size):
                handle.write(os.urandom(MB))


def _run_child(op: str, url: str, size: int, workdir: Path) -> dict[str, float]:
    out = subprocess.run(  # noqa: S603 - this same script
        [
            sys.executable,
            __file__,
            "--child",
            op,
            "--url",
            url,
            "--size",
            str(size),
            "--workdir",
            str(workdir),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _postgres_db(admin_url: str) -> tuple[str, str] | None:
    name = f"sealserve_bench_{uuid.uuid4().hex[:8]}"
    try:
        admin = create_engine(normalize_url(admin_url), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception as exc:  # noqa: BLE001 - report and skip the backend
        print(f"PostgreSQL unavailable ({type(exc).__name__}); skipping it", file=sys.stderr)
        return None
    return make_url(normalize_url(admin_url)).set(database=name).render_as_string(
        hide_password=False
    ), name


def _drop_postgres_db(admin_url: str, name: str) -> None:
    admin = create_engine(normalize_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def main() -> None:
    """Run every (backend, size) pair and print a results table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument(
        "--postgres", default=os.environ.get("SEALSERVE_TEST_POSTGRES_URL", DEFAULT_PG)
    )
    parser.add_argument("--child", choices=["seal", "unseal"])
    parser.add_argument("--url")
    parser.add_argument("--size", type=int)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.url, args.size, args.workdir)))
        return

    rows = []
    with tempfile.TemporaryDirectory(prefix="sealbench-") as tmp:
        backends: list[tuple[str, str, str | None]] = [
            ("sqlite", f"sqlite:///{tmp}/bench.db", None)
        ]
        pg = _postgres_db(args.postgres)
        if pg:
            backends.append(("postgresql", pg[0], pg[1]))
        try:
            for backend, url, _ in backends:
                workdir = Path(tmp) / backend
                workdir.mkdir()
                _prepare(url, workdir, args.sizes)
                for size in args.sizes:
                    seal = _run_child("seal", url, size, workdir)
                    unseal = _run_child("unseal", url, size, workdir)
                    rows.append((backend, size, seal, unseal))
                    print(
                        f"{backend:10} {size:4} MB  seal {seal['mb_s']:7.1f} MB/s"
                        f"  unseal {unseal['mb_s']:7.1f} MB/s",
                        file=sys.stderr,
                    )
        finally:
            for _, _, name in backends:
                if name:
                    _drop_postgres_db(args.postgres, name)

    print(
        "\n| backend | size | seal MB/s | seal peak RSS +MiB | unseal MB/s | unseal peak RSS +MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for backend, size, seal, unseal in rows:
        print(
            f"| {backend} | {size} MB | {seal['mb_s']:.0f} | {seal['rss_delta_mb']:.1f} "
            f"| {unseal['mb_s']:.0f} | {unseal['rss_delta_mb']:.1f} |"
        )
    sqlite_unseal = min(u["mb_s"] for b, _, _, u in rows if b == "sqlite")
    seal_rss = max(s["rss_delta_mb"] for _, size, s, _ in rows if size == max(args.sizes))
    print(
        f"\ntarget unseal >= 300 MB/s on SQLite: slowest {sqlite_unseal:.0f} MB/s "
        f"-> {'met' if sqlite_unseal >= 300 else 'MISSED'}"
    )
    print(
        f"target sealing {max(args.sizes)} MB raises peak RSS < 32 MiB: worst {seal_rss:.1f} MiB "
        f"-> {'met' if seal_rss < 32 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
