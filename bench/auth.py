"""Cost of authentication: token verification (cache hit and miss) and issuance.

    python bench/auth.py [--seconds 2]

Measured through the server's own ``AccessControl`` on a real SQLite
registry, so the figures include what a call pays: Bearer parsing, the
verifier cache, deny-list checks and ``authorize``. Target: a cache hit
under 20 µs.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/auth.py`, this file's folder comes first on sys.path and
# this module would shadow the `auth` package it measures.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import argparse
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable

from auth import Scope
from server.bootstrap import build_container, build_services, ensure_schema
from server.settings import load_settings


def _per_call_us(fn: Callable[[], object], *, seconds: float) -> float:
    timer = timeit.Timer(fn)
    number, took = timer.autorange()  # at least 0.2 s per run
    runs = timer.repeat(repeat=max(3, min(7, int(seconds / took))), number=number)
    return statistics.median(runs) / number * 1e6


def main() -> None:
    """Measure and print a results table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(data_dir=Path(tmp))
        container = build_container(settings, create_keys=True)
        ensure_schema(container.engine, settings)
        services = build_services(container)
        tenant = services.tenants.create(None, "bench")
        client = services.tenants.create_client(None, tenant=tenant.name, role="tenant-client")
        access = services.access

        def issue() -> str:
            return access.issue_token(
                client_id=client.client_id, client_secret=client.client_secret, scope=None
            ).token

        header = f"Bearer {issue()}"
        admin = services.tenants.create_client(None, tenant=None, role="platform-admin")
        admin_header = (
            "Bearer "
            + access.issue_token(
                client_id=admin.client_id, client_secret=admin.client_secret, scope=None
            ).token
        )
        hit = _per_call_us(lambda: access.authenticate(header), seconds=args.seconds)
        check = _per_call_us(
            lambda: access.check("tenants.manage", admin_header), seconds=args.seconds
        )
        fresh = [f"Bearer {issue()}" for _ in range(2000)]
        started = time.perf_counter()
        for value in fresh:
            access.authenticate(value)
        miss = (time.perf_counter() - started) / len(fresh) * 1e6
        started = time.perf_counter()
        count = 0
        while time.perf_counter() - started < args.seconds:
            issue()
            count += 1
        issue_rate = count / (time.perf_counter() - started)
        if Scope.INFER not in access.authenticate(header).scopes:
            raise SystemExit("the measured token lost its scope")
        container.close()

    print("| measurement | value |")
    print("|---|---:|")
    print(f"| verify, cache hit (Bearer parse + cache + deny-list) | {hit:.1f} µs |")
    print(f"| authorize one call (policy table + verify, cache hit) | {check:.1f} µs |")
    print(f"| verify, cache miss (ES256 signature + claims) | {miss:.1f} µs |")
    issuance = "token issuance incl. client lookup, secret check, audit record"
    print(f"| {issuance} | {issue_rate:,.0f} tokens/s |")
    print(f"\ntarget cache hit < 20 µs: {hit:.1f} µs -> {'met' if hit < 20 else 'MISSED'}")


if __name__ == "__main__":
    main()
