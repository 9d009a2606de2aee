"""Runs the REST and gRPC front ends in one event loop, with graceful shutdown.

On SIGTERM or SIGINT both stop accepting new work, in-flight calls get
``shutdown_grace_seconds`` to finish, then the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import uvicorn
from starlette.concurrency import run_in_threadpool

from server.grpc.server import GrpcGateway
from server.metrics import Metrics
from server.pool.pool import WorkerPool
from server.rest.app import create_app
from server.service.health import HealthService
from server.service.inference import InferenceService
from server.service.limits import TenantLimits

if TYPE_CHECKING:
    from collections.abc import Iterator

    from server.bootstrap import Container, Services

log = structlog.get_logger(__name__)
SIGNING_KEY_RELOAD_SECONDS = 5.0


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: the runner owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Gateway:
    """The REST and gRPC servers of one gateway process."""

    def __init__(self, container: Container, services: Services) -> None:
        settings = container.settings
        self.container = container
        self.services = services
        self.metrics = Metrics()
        self.health = HealthService(container.engine)
        # Unix socket paths must stay under ~100 bytes, so not under a deep data_dir;
        # mkdtemp makes the directory private (0700) to this user.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="sealserve-"))
        self.pool = WorkerPool(
            settings, workers=max(1, settings.workers), socket_dir=self.socket_dir
        )
        self.metrics.watch_pool(self.pool)
        limits = TenantLimits(
            max_concurrency=settings.tenant_max_concurrency,
            rate=settings.tenant_rate_limit,
            burst=settings.tenant_rate_burst,
            on_limited=lambda tenant, reason: self.metrics.limited.labels(tenant, reason).inc(),
        )
        self.inference = InferenceService(
            resolver=services.resolver,
            backend=self.pool,
            max_request_bytes=settings.max_request_bytes,
            timeout=settings.infer_timeout_seconds,
            limits=limits,
            metrics=self.metrics,
            recorder=services.recorder if settings.audit_inference else None,
        )
        self.app = create_app(
            settings=settings,
            services=services,
            inference=self.inference,
            health_service=self.health,
            metrics=self.metrics,
        )
        self.grpc = GrpcGateway(
            health_service=self.health, access=services.access, inference=self.inference
        )
        self.grpc_port = self.grpc.bind(f"{settings.host}:{settings.grpc_port}")
        config = uvicorn.Config(
            self.app,
            host=settings.host,
            port=settings.rest_port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        )
        self.http = _UvicornServer(config)
        self.stopping = asyncio.Event()

    @property
    def rest_port(self) -> int:
        """The bound REST port (useful when configured as 0)."""
        servers: Any = self.http.servers
        return int(servers[0].sockets[0].getsockname()[1])

    async def serve(self) -> None:
        """Serve until ``stop()`` is called or a signal arrives."""
        self.services.access.deny.start()
        self.services.recorder.start()
        await self.pool.start()
        await self.services.supervisor.start()
        await self.grpc.start()
        key_reload = asyncio.create_task(self._reload_signing_keys())
        http_task = asyncio.create_task(self.http.serve())
        while not self.http.started:
            if http_task.done():
                await http_task  # re-raise why it could not start
                return
            await asyncio.sleep(0.01)
        log.info(
            "sealserve listening",
            rest=f"http://{self.container.settings.host}:{self.rest_port}",
            grpc=f"{self.container.settings.host}:{self.grpc_port}",
        )
        await self.stopping.wait()
        log.info("shutting down", grace_seconds=self.container.settings.shutdown_grace_seconds)
        self.http.should_exit = True
        key_reload.cancel()
        grace = self.container.settings.shutdown_grace_seconds
        await asyncio.gather(http_task, self.grpc.stop(grace))
        # Running intake jobs are killed and queued again: they would outlast any grace.
        await self.services.supervisor.stop()
        await self.pool.stop(grace)
        await self.services.recorder.stop()
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        self.services.access.deny.stop()
        log.info("stopped")

    async def _reload_signing_keys(self) -> None:
        # A rotation made by another gateway or the CLI reaches this one within
        # the interval: JWKS, issuance and verification follow the stored keys.
        while True:
            await asyncio.sleep(SIGNING_KEY_RELOAD_SECONDS)
            try:
                await run_in_threadpool(self.services.signing_keys.load)
            except Exception:
                log.warning("signing key reload failed", exc_info=True)

    def stop(self) -> None:
        """Ask the gateway to shut down gracefully."""
        self.stopping.set()


async def run_gateway(container: Container, services: Services) -> None:
    """Run one gateway until SIGTERM/SIGINT."""
    gateway = Gateway(container, services)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gateway.stop)
    await gateway.serve()
