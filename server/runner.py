"""Runs the REST and gRPC front ends in one event loop, with graceful shutdown.

On SIGTERM or SIGINT both stop accepting new work, in-flight calls get
``shutdown_grace_seconds`` to finish, then the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import structlog
import uvicorn
from starlette.concurrency import run_in_threadpool

from server import affinity
from server.errors import StartupError
from server.grpc.server import GrpcGateway
from server.metrics import Metrics
from server.pool.pool import WorkerPool
from server.pool.remote import TlsFiles, TlsFilesError
from server.replicas import Replicas, all_listening, mark_listening
from server.rest.app import create_app
from server.rest.balance import BalancerCollector, ConnectionBalancer
from server.rest.fastpath import InferenceFastPath
from server.rest.protocol import CorkedHttpToolsProtocol, gateway_protocol
from server.service.health import HealthService
from server.service.inference import InferenceService
from server.service.limits import SharedTenantTable, TenantLimits

if TYPE_CHECKING:
    from collections.abc import Iterator

    from server.bootstrap import Container, Services
    from server.settings import Settings

log = structlog.get_logger(__name__)
SIGNING_KEY_RELOAD_SECONDS = 5.0
GIL_SWITCH_SECONDS = 0.0005
GC_THRESHOLDS = (50_000, 50, 100)


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: the runner owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Gateway:
    """The REST and gRPC servers of one gateway process.

    With ``settings.gateways`` above one, the first (``index`` 0) is the
    primary: it binds the ports, starts the others (``server.replicas``) on
    the same ports, and alone runs the intake job supervisor.
    """

    def __init__(
        self,
        container: Container,
        services: Services,
        *,
        index: int = 0,
        shared_dir: Path | None = None,
        cpus: list[int] | None = None,
    ) -> None:
        settings = container.settings
        self.container = container
        self.cpus = cpus
        """The CPUs the server was started with, when its gateways are pinned to them."""
        self.services = services
        self.index = index
        self.shared = settings.gateways > 1
        self.shared_dir = shared_dir
        if self.shared and shared_dir is None:
            # The primary's: metrics of every gateway process meet here.
            self.shared_dir = Path(tempfile.mkdtemp(prefix="sealserve-gateways-"))
        self.metrics = Metrics(shared_dir=self.shared_dir, gateway=index)
        self.health = HealthService(
            container.engine,
            gateways_listening=(
                functools.partial(all_listening, self.shared_dir, settings.gateways)
                if self.shared_dir is not None
                else None
            ),
        )
        # Unix socket paths must stay under ~100 bytes, so not under a deep data_dir;
        # mkdtemp makes the directory private (0700) to this user.
        # A replica's goes inside the primary's shared directory, so it is removed
        # with it even when the replica is killed and cannot clean up after itself.
        self.socket_dir = Path(
            tempfile.mkdtemp(prefix="sealserve-", dir=shared_dir if index > 0 else None)
        )
        self.pool = WorkerPool(
            settings,
            workers=(
                worker_share(settings.workers, settings.gateways, index)
                if settings.workers or not settings.remote_workers
                else 0
            ),
            socket_dir=self.socket_dir,
            remote=settings.remote_workers,
            tls=_worker_tls(settings),
        )
        self.metrics.watch_pool(self.pool)
        self.replicas: Replicas | None = None
        limits = TenantLimits(
            max_concurrency=settings.tenant_max_concurrency,
            rate=settings.tenant_rate_limit,
            burst=settings.tenant_rate_burst,
            on_limited=self.metrics.count_limited,
            # With shared ports a tenant's calls land on any gateway: the limits are the host's.
            shared=(
                SharedTenantTable(self.shared_dir / "tenant-limits", gateway=index)
                if self.shared_dir is not None
                and (settings.tenant_max_concurrency or settings.tenant_rate_limit)
                else None
            ),
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
            health_service=self.health,
            access=services.access,
            inference=self.inference,
            reuse_port=self.shared,
            on_done=self.metrics.count_grpc,
        )
        self.grpc_port = settings.grpc_port
        if index == 0:
            # Before any worker starts, so a taken port fails the start at once.
            self.grpc_port = self.grpc.bind(f"{settings.host}:{settings.grpc_port}")
        self.rest_socket: socket.socket | None = None
        self.balancer = (
            ConnectionBalancer(self.shared_dir, index, settings.gateways)
            if self.shared_dir is not None
            else None
        )
        if self.balancer is not None:
            self.metrics.registry.register(BalancerCollector(self.balancer))
        self._adopting: set[asyncio.Task[Any]] = set()
        fastpath = InferenceFastPath(
            self.app, access=services.access, inference=self.inference, metrics=self.metrics
        )
        config = uvicorn.Config(
            fastpath,
            host=settings.host,
            port=settings.rest_port,
            log_config=None,
            access_log=False,
            lifespan="off",
            http=gateway_protocol(fastpath.refuse_now, self.balancer, fastpath.body_limit),
            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
            timeout_keep_alive=settings.http_keepalive_seconds,
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
        settings = self.container.settings
        self.services.access.deny.start()
        self.services.recorder.start()
        await self.pool.start()
        try:
            opened = await self._open()
        except BaseException:
            await self.pool.stop(0)  # its workers (and a spare still starting) end before it
            raise
        if opened is None:
            await self.pool.stop(0)
            return
        key_reload, http_task = opened
        log.info(
            "sealserve listening" if self.index == 0 else "gateway process listening",
            rest=f"http://{settings.host}:{self.rest_port}",
            grpc=f"{settings.host}:{self.grpc_port}",
            gateway=self.index,
            gateways=settings.gateways,
        )
        if self.balancer is not None:
            self.balancer.start(asyncio.get_running_loop(), self._adopt)
        if self.shared_dir is not None:
            mark_listening(self.shared_dir, self.index)
        await self.stopping.wait()
        log.info("shutting down", grace_seconds=settings.shutdown_grace_seconds)
        if self.balancer is not None:
            self.balancer.stop()
            # What it took on its way in must reach uvicorn's connections before
            # the shutdown closes them.
            await asyncio.gather(*self._adopting, return_exceptions=True)
            await asyncio.sleep(0)
        self.http.should_exit = True
        key_reload.cancel()
        grace = settings.shutdown_grace_seconds
        replicas = self.replicas.stop(grace) if self.replicas is not None else asyncio.sleep(0)
        await asyncio.gather(http_task, self.grpc.stop(grace), replicas)
        # Running intake jobs are killed and queued again: they would outlast any grace.
        await self.services.supervisor.stop()
        await self.pool.stop(grace)
        await self.services.recorder.stop()
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        if self.index == 0 and self.shared_dir is not None:
            shutil.rmtree(self.shared_dir, ignore_errors=True)
        self.services.access.deny.stop()
        log.info("stopped")

    async def _open(self) -> tuple[asyncio.Task[None], asyncio.Task[None]] | None:
        """Start the jobs (primary) and the gRPC and REST servers: (key reload, HTTP) tasks.

        ``None`` if the HTTP server ended before it started without saying why.
        """
        settings = self.container.settings
        if self.index == 0:
            await self.services.supervisor.start()
        else:
            # A replica joins the shared gRPC port only now, like the REST one below: the
            # kernel would hand it connections while its workers start, stalling them.
            self.grpc.bind(f"{settings.host}:{settings.grpc_port}")
        await self.grpc.start()
        # Bound only now, when this process can answer: with shared ports the
        # kernel hands connections to every listening socket of the group.
        self.rest_socket = listen(settings.host, settings.rest_port, reuse_port=self.shared)
        if self.shared and self.index == 0:
            self.replicas = Replicas(
                settings.model_copy(
                    update={
                        "rest_port": self.rest_socket.getsockname()[1],
                        "grpc_port": self.grpc_port,
                    }
                ),
                shared_dir=self.shared_dir,
                cpus=self.cpus,
            )
            self.replicas.start()
        key_reload = asyncio.create_task(self._reload_signing_keys())
        http_task = asyncio.create_task(self.http.serve(sockets=[self.rest_socket]))
        while not self.http.started:
            if http_task.done():
                key_reload.cancel()
                await http_task  # re-raise why it could not start
                return None
            await asyncio.sleep(0.01)
        return key_reload, http_task

    def _adopt(self, connection: socket.socket, sender: int | None) -> None:
        """Serve a connection another gateway accepted and passed here."""
        server, loop = self.http, asyncio.get_running_loop()
        config = server.config

        def protocol() -> asyncio.Protocol:
            made = cast("type[CorkedHttpToolsProtocol]", config.http_protocol_class)(
                config=config, server_state=server.server_state, app_state=server.lifespan.state
            )
            made.handed_in = True
            return made

        async def adopt() -> None:
            try:
                await loop.connect_accepted_socket(protocol, connection)
            except (OSError, ValueError):
                log.warning("cannot serve a handed-over connection", exc_info=True)
                connection.close()
            except BaseException:
                connection.close()
                raise
            finally:
                if self.balancer is not None:
                    # Counted here now (or gone): no longer on its way from the sender.
                    self.balancer.taken(sender)

        task = loop.create_task(adopt())
        self._adopting.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._adopting.discard)

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


def _worker_tls(settings: Settings) -> TlsFiles | None:
    """The gateway's side of mutual TLS with remote workers, when it has any."""
    files = settings.worker_tls_files
    if not settings.remote_workers or files is None:
        return None
    try:
        return TlsFiles(files)
    except TlsFilesError as exc:
        raise StartupError(str(exc)) from None


def worker_share(workers: int, gateways: int, index: int) -> int:
    """How many of ``workers`` gateway ``index`` of ``gateways`` runs (at least one)."""
    return max(1, workers // gateways + (1 if index < workers % gateways else 0))


def listen(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A listening TCP socket for the REST server (shared by every gateway when ``reuse_port``)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


async def run_gateway(
    container: Container,
    services: Services,
    *,
    index: int = 0,
    shared_dir: Path | None = None,
    cpus: list[int] | None = None,
) -> None:
    """Run one gateway process until SIGTERM/SIGINT.

    ``cpus``: the CPUs the primary was started with, for a replica whose
    gateways are pinned (``settings.gateway_cpu_affinity``); the primary
    reads its own.
    """
    settings = container.settings
    if settings.gateway_cpu_affinity:
        cpus = cpus or affinity.allowed_cpus()
        # Before the workers start: they inherit the CPUs.
        affinity.pin(affinity.cpus_for(cpus, index, settings.gateways), allowed=cpus)
    # Background threads (audit writes, deny-list and resolution refreshes) hand
    # the interpreter back to the event loop after 0.5 ms rather than 5 ms: a
    # call's latency should not wait out a bookkeeping thread's time slice.
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    gateway = Gateway(container, services, index=index, shared_dir=shared_dir, cpus=cpus)
    # What start-up built lives as long as the process: out of the collector's way
    # (gc.freeze), and young collections rarer, so a full one does not stall calls.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gateway.stop)
    await gateway.serve()
