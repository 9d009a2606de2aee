"""The inference worker process: a ``Worker`` gRPC service over LiteRT.

``sealserve serve`` spawns one per CPU on Unix sockets (``server.pool.pool``);
``sealserve worker`` runs the same code on another host, on TCP with mutual
TLS (``server.pool.remote``). The worker reads
sealed models from the registry itself, so plaintext model bytes never cross
a socket.

Signals: SIGINT is ignored, because a Ctrl-C in a terminal reaches the whole
process group and only the parent decides when workers stop. SIGTERM drains:
new RPCs are refused (``UNAVAILABLE``, which the pool retries elsewhere),
running calls get ``shutdown_grace_seconds``, then the process exits. A
worker started by the pool (``--settings-json -``) also exits when its parent
does, whichever way the parent ends.

The service itself (calls, loads, status, batching) is
``server.pool.worker_service``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import signal
import sys
from typing import TYPE_CHECKING

import grpc
import structlog
import uvloop

from protos import worker_pb2_grpc
from server.pool.cache import ModelCache
from server.pool.frames import FrameServer, frames_path
from server.pool.worker_service import BatchPolicy, WorkerService, fitted_response

if TYPE_CHECKING:
    from collections.abc import Callable

    from server.pool.remote import TlsFiles
    from server.settings import Settings

log = structlog.get_logger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest Infer request or response; the gateway enforces its own, smaller, limits first."""

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]

_PR_SET_PDEATHSIG = 1


def create_server(
    service: WorkerService, address: str, credentials: grpc.ServerCredentials | None = None
) -> grpc.aio.Server:
    """A ``grpc.aio`` server with ``service`` bound to ``address`` (``unix:PATH`` or host:port).

    With ``credentials`` the port speaks TLS; without, it must be a Unix socket.
    """
    server = grpc.aio.server(options=GRPC_OPTIONS)
    worker_pb2_grpc.add_WorkerServicer_to_server(service, server)
    if credentials is None and not address.startswith("unix:"):
        msg = f"a worker listens on TCP ({address}) only with TLS"
        raise ValueError(msg)
    port = (
        server.add_insecure_port(address)
        if credentials is None
        else server.add_secure_port(address, credentials)
    )
    if port == 0:
        msg = f"cannot listen on {address}"
        raise OSError(msg)
    return server


async def serve(
    address: str,
    settings: Settings,
    *,
    parent_lifeline: bool = False,
    tls: TlsFiles | None = None,
    stop_on_interrupt: bool = False,
) -> None:
    """Serve until SIGTERM (or, with ``parent_lifeline``, until stdin closes).

    ``address`` is ``unix:PATH`` for a local worker (gRPC plus the framed
    connection beside it), or ``host:port`` with ``tls`` for a remote one
    (gRPC only, clients must present a certificate from the CA in ``tls``).
    ``stop_on_interrupt``: SIGINT drains too (a worker run on its own, not by a pool).
    """
    from server.bootstrap import build_container  # noqa: PLC0415 - keeps `import` of this module light

    container = build_container(settings)
    registry = container.registry
    cache = ModelCache(
        open_model=lambda key: registry.open_version(key.tenant_id, key.version_id),
        read_batching=lambda key: registry.version_batching(key.tenant_id, key.version_id),
        budget_bytes=settings.worker_memory_budget_mb * 1024 * 1024,
    )
    service = WorkerService(cache=cache, batching=BatchPolicy.from_settings(settings))
    server = create_server(service, address, None if tls is None else tls.server_credentials())
    frames = (
        FrameServer(service.infer_queued, answer_now=service.answer_now, refit=fitted_response)
        if tls is None
        else None
    )
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    grace = settings.shutdown_grace_seconds

    def stop(*, orphaned: bool = False) -> None:
        nonlocal grace
        if orphaned:
            grace = 0.0  # nobody is left to read the answers
        stopping.set()

    loop.add_signal_handler(signal.SIGTERM, stop)
    if parent_lifeline:
        await loop.connect_read_pipe(lambda: _Lifeline(lambda: stop(orphaned=True)), sys.stdin)
    if stop_on_interrupt:
        loop.add_signal_handler(signal.SIGINT, stop)
    if frames is not None:
        await frames.start(frames_path(address))  # before Ping answers: ready means both
    await server.start()
    log.info("worker listening", address=address, pid=os.getpid(), instance_id=service.instance_id)
    await stopping.wait()
    service.draining = True
    log.info("worker stopping", grace_seconds=grace)
    await asyncio.gather(
        server.stop(grace), frames.stop(grace) if frames is not None else asyncio.sleep(0)
    )
    service.close()
    container.close()


class _Lifeline(asyncio.Protocol):
    """Reads stdin, which only the parent can write: EOF means the parent is gone."""

    def __init__(self, on_eof: Callable[[], None]) -> None:
        self._on_eof = on_eof

    def data_received(self, data: bytes) -> None:
        del data  # the parent writes nothing after the settings line

    def connection_lost(self, exc: Exception | None) -> None:
        del exc
        self._on_eof()


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL us when the parent exits, even by SIGKILL.

    A parent that died before this call is caught by the stdin lifeline
    instead (its pipe is already closed, so the read returns EOF at once).
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("cannot set the parent-death signal", errno=ctypes.get_errno())


def main(socket_path: str, settings_json: str, *, parent_lifeline: bool = False) -> None:
    """Run one worker on ``unix:{socket_path}`` with settings as the parent resolved them."""
    from server.logs import configure_logging  # noqa: PLC0415 - see serve()
    from server.settings import Settings  # noqa: PLC0415 - see serve()

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent_lifeline:
        die_with_parent()
    settings = Settings.model_validate_json(settings_json)
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    structlog.contextvars.bind_contextvars(worker_pid=os.getpid())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(f"unix:{socket_path}", settings, parent_lifeline=parent_lifeline))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m server.pool.worker", description="Run one sealserve inference worker."
    )
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    parser.add_argument(
        "--settings-json",
        required=True,
        help="the server settings as JSON, or '-' to read one line from stdin and then "
        "exit when stdin closes (how the pool starts workers: secrets stay out of argv)",
    )
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    args = _parse(argv)
    if args.settings_json == "-":
        line = sys.stdin.buffer.readline()
        if not line:
            return  # the parent is already gone
        main(args.socket, line.decode(), parent_lifeline=True)
    else:
        main(args.socket, args.settings_json)


if __name__ == "__main__":
    run()
