"""``inference.GRPCInferenceService``: the same service calls as the REST routes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from auth import Unauthenticated
from protos import inference_pb2 as pb
from protos import inference_pb2_grpc
from server.grpc import converters
from server.grpc.guard import current_principal

if TYPE_CHECKING:
    from auth import Principal
    from server.service.health import HealthService
    from server.service.inference import InferenceService

Context = Any  # grpc.aio.ServicerContext


def _principal() -> Principal:
    principal = current_principal()
    if principal is None:  # a protected method reached without a principal: wiring bug
        raise Unauthenticated
    return principal


class InferenceServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Adapts gRPC calls to ``InferenceService``; errors leave through the guard."""

    def __init__(self, *, inference: InferenceService, health: HealthService) -> None:
        self._inference = inference
        self._health = health

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        """The process answers."""
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        """Database reachable and migrated."""
        return pb.ServerReadyResponse(ready=await run_in_threadpool(self._health.ready))

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        """Name, version, extensions."""
        data = self._inference.server_metadata()
        return pb.ServerMetadataResponse(
            name=data["name"], version=data["version"], extensions=data["extensions"]
        )

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        """Whether the version can serve."""
        ready = await self._inference.model_ready(
            _principal(), request.name, request.version or None
        )
        return pb.ModelReadyResponse(ready=ready)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        """The version's stored signature."""
        data = await self._inference.model_metadata(
            _principal(), request.name, request.version or None
        )
        return converters.model_metadata(data)

    async def ModelInfer(
        self, request: converters.ReceivedInfer, context: Context
    ) -> pb.ModelInferResponse:
        """Run one inference (the request decoded by ``converters.receive_infer``)."""
        principal = _principal()
        message = request.message
        model, ref = message.model_name, message.model_version or None
        with self._inference.admit(principal, model, ref) as admission:
            parsed = converters.infer_request(message, request.raw)
            answer = await self._inference.infer(principal, model, ref, parsed, admission=admission)
        return converters.infer_response(answer)


DESERIALIZERS = {"/inference.GRPCInferenceService/ModelInfer": converters.receive_infer}
"""Methods whose requests are decoded otherwise than the generated code does."""


def add_to_server(servicer: InferenceServicer, server: Any) -> Any:
    """Register the servicer with ``server`` (a ``Registrar``); returns its service descriptor."""
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    return pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
