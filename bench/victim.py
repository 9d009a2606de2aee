"""The fairness run's victim: a paced HTTP client that keeps every call's latency.

    python bench/victim.py URL PATH TOKEN BODY_FILE RATE CONNECTIONS SECONDS

``wrk`` reports percentiles per run only, and one run's p99 at a few
hundred calls a minute comes from its five slowest calls. This client keeps
each latency, so the benchmark can pool the rounds of one condition into one
p99 over thousands of calls. It sends ``RATE`` calls a second in all over
``CONNECTIONS`` keep-alive connections, each on its own fixed schedule (a
call that comes back late delays only its own connection's next call), and
prints one JSON object: ``{"latencies_ms": [...], "failed": N}``. At the
victim's rate it needs a few percent of one core, on uvloop.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import uvloop


async def _answer(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response with a Content-Length; its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def _connection(
    host: str, port: int, request: bytes, *, interval: float, offset: float, seconds: float
) -> tuple[list[float], int]:
    reader, writer = await asyncio.open_connection(host, port)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    failed = 0
    start = loop.time() + offset
    until = start + seconds
    due = start
    try:
        while due < until:
            await asyncio.sleep(max(0.0, due - loop.time()))
            sent = time.perf_counter()
            writer.write(request)
            status = await _answer(reader)
            latencies.append((time.perf_counter() - sent) * 1000)
            failed += status != 200
            due += interval
    finally:
        writer.close()
    return latencies, failed


async def run(
    url: str, path: str, token: str, body: bytes, *, rate: float, connections: int, seconds: float
) -> dict[str, object]:
    """Pace ``rate`` calls a second over ``connections`` for ``seconds``; latencies and failures."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\nauthorization: Bearer {token}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body
    interval = connections / rate
    outcomes = await asyncio.gather(
        *(
            _connection(
                host,
                port,
                request,
                interval=interval,
                offset=interval * i / connections,
                seconds=seconds,
            )
            for i in range(connections)
        )
    )
    return {
        "latencies_ms": [latency for latencies, _ in outcomes for latency in latencies],
        "failed": sum(failed for _, failed in outcomes),
    }


def main() -> None:
    """Command-line entry point (see the module docstring)."""
    url, path, token, body_file, rate, connections, seconds = sys.argv[1:8]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(
            run(
                url,
                path,
                token,
                Path(body_file).read_bytes(),
                rate=float(rate),
                connections=int(connections),
                seconds=float(seconds),
            )
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
