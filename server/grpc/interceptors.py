"""The one gRPC interceptor: policy check before the servicer, error table after.

It wraps every registered method's handler, so no RPC can skip
authentication or leave with an unmapped error. The authenticated principal
is handed to servicers through a context variable set for that call only.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from server.policy import grpc_operation
from server.status import public_message, spec_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from auth import Principal
    from server.service.access import AccessControl

log = structlog.get_logger(__name__)
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_principal: ContextVar[Principal | None] = ContextVar("grpc_principal", default=None)


def current_principal() -> Principal | None:
    """The principal of the gRPC call being served (``None`` for public methods)."""
    return _principal.get()


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    """End the call with the status the error table gives ``exc``."""
    spec = spec_for(exc)
    if not spec.expose_message:
        log.error(
            "unhandled error",
            error_type=type(exc).__name__,
            detail=getattr(exc, "detail", None),
            exc_info=exc,
        )
    context.set_trailing_metadata((("error-code", spec.public_code),))
    await context.abort(grpc.StatusCode[spec.grpc], public_message(exc, spec))


_ID_PREFIX, _IDS = os.urandom(6).hex(), itertools.count(1)
"""Fresh request ids: unique per process start, 32 hex digits like a uuid, no syscall."""


def _bind_call_context(
    context: grpc.aio.ServicerContext[Any, Any], metadata: Sequence[tuple[str, Any]]
) -> None:
    """Give this call's log lines and audit records a request id and the peer address."""
    incoming = next((str(value) for key, value in metadata if key == "x-request-id"), "")
    peer = context.peer() or ""
    structlog.contextvars.bind_contextvars(
        request_id=incoming if _SAFE_ID.match(incoming) else f"{_ID_PREFIX}{next(_IDS):020x}",
        client_addr=peer.split(":")[1] if peer.startswith("ipv") else peer or None,
    )


def _code_name(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The status a servicer aborted with (it called ``context.abort`` itself)."""
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


class GatewayInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticate and authorize by the policy table; map errors by the error table."""

    def __init__(
        self, access: AccessControl, *, on_done: Callable[[str, str], None] | None = None
    ) -> None:
        self._access = access
        self._on_done = on_done
        """Told each finished call's method and status code name (for ``/metrics``)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wrap the method's handler (unknown methods fall through to UNIMPLEMENTED)."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        metadata = handler_call_details.invocation_metadata or ()
        authorization = next(
            (str(value) for key, value in metadata if key == "authorization"), None
        )
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, authorization, metadata),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, method, authorization, metadata),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # no streaming-request methods are served

    @contextlib.asynccontextmanager
    async def _guarded(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        method: str,
        authorization: str | None,
        metadata: Sequence[tuple[str, Any]],
    ) -> AsyncIterator[None]:
        """One call's frame, for unary and streaming answers alike.

        Binds its log context, checks the policy, hands the principal to the
        servicer, sends every error through the table (``abort`` raises, so a
        refused call never reaches the servicer) and counts it in ``/metrics``.
        """
        _bind_call_context(context, metadata)
        code = "OK"
        token = None
        try:
            try:
                principal = await self._access.authorize_call(grpc_operation(method), authorization)
                token = _principal.set(principal)
                yield
            except grpc.aio.AbortError:
                code = _code_name(context)
                raise
            except Exception as exc:  # noqa: BLE001 - every failure leaves through the table
                code = spec_for(exc).grpc
                await abort_with(context, exc)
        finally:
            if token is not None:
                _principal.reset(token)
            if self._on_done is not None:
                self._on_done(method, code)

    def _unary(
        self,
        inner: Callable[..., Any],
        method: str,
        authorization: str | None,
        metadata: Sequence[tuple[str, Any]],
    ) -> Callable[..., Awaitable[Any]]:
        async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with self._guarded(context, method, authorization, metadata):
                return await inner(request, context)

        return behavior

    def _stream(
        self,
        inner: Callable[..., AsyncIterator[Any]],
        method: str,
        authorization: str | None,
        metadata: Sequence[tuple[str, Any]],
    ) -> Callable[..., AsyncIterator[Any]]:
        async def behavior(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async with self._guarded(context, method, authorization, metadata):
                async for item in inner(request, context):
                    yield item

        return behavior
