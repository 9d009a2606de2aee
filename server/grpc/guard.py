"""The gRPC gateway's one guard: policy check before the servicer, error table after.

Every registered method's handler is wrapped once, the first time a call
names it, so no RPC can skip authentication or leave with an unmapped
error. (A ``grpc.aio`` interceptor does the same per call, at the price of
a coroutine chain and a fresh handler for every call.) The authenticated
principal is handed to servicers through a context variable set for that
call only.
"""

from __future__ import annotations

import itertools
import os
import re
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from server.policy import grpc_operation
from server.status import log_if_hidden, public_message, spec_for

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from auth import Principal
    from server.service.access import AccessControl

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_principal: ContextVar[Principal | None] = ContextVar("grpc_principal", default=None)


def current_principal() -> Principal | None:
    """The principal of the gRPC call being served (``None`` for public methods)."""
    return _principal.get()


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    """End the call with the status the error table gives ``exc``."""
    spec = spec_for(exc)
    log_if_hidden(exc, spec)
    context.set_trailing_metadata((("error-code", spec.public_code),))
    await context.abort(grpc.StatusCode[spec.grpc], public_message(exc, spec))


_ID_PREFIX, _IDS = os.urandom(6).hex(), itertools.count(1)
"""Fresh request ids: unique per process start, 32 hex digits like a uuid, no syscall."""


def _bind_call_context(context: grpc.aio.ServicerContext[Any, Any], incoming: str) -> None:
    """Give this call's log lines and audit records a request id and the peer address."""
    peer = context.peer() or ""
    structlog.contextvars.bind_contextvars(
        request_id=incoming if _SAFE_ID.match(incoming) else f"{_ID_PREFIX}{next(_IDS):020x}",
        client_addr=peer.split(":")[1] if peer.startswith("ipv") else peer or None,
    )


def _code_name(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The status a servicer aborted with (it called ``context.abort`` itself)."""
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def _credentials(context: grpc.aio.ServicerContext[Any, Any]) -> tuple[str | None, str]:
    """The call's ``authorization`` and ``x-request-id`` metadata (``None`` and "" if absent)."""
    authorization, request_id = None, ""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            authorization = str(value)
        elif key == "x-request-id":
            request_id = str(value)
    return authorization, request_id


class GatewayGuard:
    """Authenticate and authorize by the policy table; map errors by the error table."""

    def __init__(
        self, access: AccessControl, *, on_done: Callable[[str, str], None] | None = None
    ) -> None:
        self._access = access
        self._on_done = on_done
        """Told each finished call's method and status code name (for ``/metrics``)."""

    def wrap(
        self,
        handler: grpc.RpcMethodHandler,
        method: str,
        deserializer: Callable[[bytes], Any] | None = None,
    ) -> grpc.RpcMethodHandler | None:
        """``handler`` of ``method`` (``/package.Service/Method``), guarded.

        ``deserializer`` replaces the handler's own request deserializer.

        ``None`` (served as UNIMPLEMENTED) for a client-streaming method: none is
        served, and one the guard cannot wrap must not run unguarded.
        """
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method),
                request_deserializer=deserializer or handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            # The one streaming method served, grpc_health's Watch, writes its
            # answers with ``context.write``: awaited like a unary handler. (A
            # servicer that yielded instead would fail its first call loudly.)
            return grpc.unary_stream_rpc_method_handler(
                self._unary(handler.unary_stream, method),
                request_deserializer=deserializer or handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return None

    async def _enter(
        self, context: grpc.aio.ServicerContext[Any, Any], operation: str | None
    ) -> Token[Principal | None]:
        """Bind the call's log context, check the policy, hand the principal on."""
        authorization, request_id = _credentials(context)
        _bind_call_context(context, request_id)
        principal = await self._access.authorize_call(operation, authorization)
        return _principal.set(principal)

    def _unary(self, inner: Callable[..., Any], method: str) -> Callable[..., Awaitable[Any]]:
        operation, on_done = grpc_operation(method), self._on_done

        async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            code, token = "OK", None
            try:
                token = await self._enter(context, operation)
                return await inner(request, context)
            except grpc.aio.AbortError:
                code = _code_name(context)
                raise
            except Exception as exc:  # noqa: BLE001 - every failure leaves through the table
                code = spec_for(exc).grpc
                await abort_with(context, exc)
            finally:
                if token is not None:
                    _principal.reset(token)
                if on_done is not None:
                    on_done(method, code)

        return behavior


class GuardedHandlers(grpc.GenericRpcHandler):  # type: ignore[misc]
    """The methods of ``inner``'s handlers, each behind ``guard``, wrapped on first use."""

    def __init__(
        self,
        inner: Sequence[grpc.GenericRpcHandler],
        guard: GatewayGuard,
        deserializers: Mapping[str, Callable[[bytes], Any]] | None = None,
    ) -> None:
        self._inner = inner
        self._guard = guard
        self._deserializers = deserializers or {}
        """Request deserializers by method, in place of the generated ones."""
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}
        """Registered methods only: a name nobody serves is not remembered."""

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        """The guarded handler of the call's method; ``None`` (UNIMPLEMENTED) if unknown."""
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        for handlers in self._inner:
            found = handlers.service(handler_call_details)
            if found is not None:
                wrapped = self._guard.wrap(found, method, self._deserializers.get(method))
                if wrapped is not None:
                    self._wrapped[method] = wrapped
                return wrapped
        return None


class Registrar:
    """What the generated ``add_*_to_server`` functions get instead of the server.

    They register a generic handler (and, with newer grpcio, the same methods
    again as "registered" ones). This keeps the generic handlers so that
    ``GuardedHandlers`` can put them behind the guard on the real server: no
    method reaches the server unguarded.
    """

    def __init__(self) -> None:
        self.handlers: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        """Keep ``handlers`` for ``GuardedHandlers``."""
        self.handlers.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        """Already served through the generic handler of the same service."""
        del service, handlers
