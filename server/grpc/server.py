"""The gRPC server factory and its health reporting."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from starlette.concurrency import run_in_threadpool

from server.grpc.guard import GatewayGuard, GuardedHandlers, Registrar
from server.grpc.servicers import DESERIALIZERS, InferenceServicer, add_to_server

if TYPE_CHECKING:
    from collections.abc import Callable

    from server.service.access import AccessControl
    from server.service.health import HealthService
    from server.service.inference import InferenceService

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class GrpcGateway:
    """A ``grpc.aio`` server plus the task that keeps its health status current."""

    def __init__(
        self,
        *,
        health_service: HealthService,
        access: AccessControl,
        inference: InferenceService,
        poll_seconds: float = 2.0,
        reuse_port: bool = False,
        on_done: Callable[[str, str], None] | None = None,
    ) -> None:
        self.server = grpc.aio.server(
            options=[
                # Shared only among this server's own gateway processes; otherwise
                # a second server on the same port must fail, not split the traffic.
                ("grpc.so_reuseport", 1 if reuse_port else 0),
                # Above the verifier's 8 KiB token limit, so an over-long token is
                # refused by the same rule (UNAUTHENTICATED) on both transports.
                ("grpc.max_metadata_size", 16 * 1024),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ],
        )
        self._health_service = health_service
        self._poll_seconds = poll_seconds
        self.health = health.aio.HealthServicer()
        # Services register with the registrar, never with the server itself, so
        # that each of their methods is reached through the guard only.
        registrar = Registrar()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registrar)
        self.services: list[Any] = [
            health_pb2.DESCRIPTOR.services_by_name["Health"],
            add_to_server(InferenceServicer(inference=inference, health=health_service), registrar),
        ]
        guard = GatewayGuard(access, on_done=on_done)
        self.server.add_generic_rpc_handlers(
            [GuardedHandlers(registrar.handlers, guard, DESERIALIZERS)]
        )
        self._task: asyncio.Task[None] | None = None

    def bind(self, address: str) -> int:
        """Listen on ``address`` (``host:port``; port 0 picks one) and return the port."""
        try:
            port = int(self.server.add_insecure_port(address))
        except RuntimeError:  # how grpcio reports a failed bind (older releases returned 0)
            port = 0
        if port == 0:
            msg = f"cannot listen for gRPC on {address}"
            raise OSError(msg)
        return port

    @property
    def method_names(self) -> list[str]:
        """Every registered method as ``/package.Service/Method`` (for the policy check)."""
        return [
            f"/{service.full_name}/{method.name}"
            for service in self.services
            for method in service.methods
        ]

    async def start(self) -> None:
        """Start serving and reporting health."""
        await self._refresh_health()
        await self.server.start()
        self._task = asyncio.create_task(self._poll_health())

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, let in-flight calls finish for ``grace`` seconds, stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)

    async def _refresh_health(self) -> None:
        ready = await run_in_threadpool(self._health_service.ready)
        await self.health.set("", SERVING if ready else NOT_SERVING)

    async def _poll_health(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            await self._refresh_health()
