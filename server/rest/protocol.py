"""uvicorn's HTTP/1.1 protocol with each response leaving in one ``send``.

An ASGI response is two messages, the head and the body, and uvicorn writes
each to the socket as it comes: two system calls per response and, with
``TCP_NODELAY``, two segments that wake the client twice. For a small
model's answer (a few hundred bytes) that second write was a tenth of the
gateway's CPU. ``CorkedHttpToolsProtocol`` hands uvicorn a transport that
holds what is written during one turn of the event loop and sends it at the
end of that turn: the head and body that a handler sends back to back go
out together, and nothing waits longer than the current turn.

It can also answer a request from its head alone, before uvicorn starts a
task for it (``gateway_protocol``'s ``early``): the inference hot path uses
that to refuse a tenant over its rate limit without a task, a body or a
Starlette response (about a third less gateway CPU than a whole ASGI call),
on the event loop that the other tenants' calls share.

With several gateway processes it passes a connection it has just accepted
to a gateway holding fewer (``server.rest.balance``), before reading any of it.

And it hands an inference call's large body to the app in one message once
it is all in (``whole_bodies``), rather than a piece per 64 KiB.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, cast

import structlog
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, MutableMapping

    from uvicorn._types import ASGI3Application
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    from server.rest.balance import ConnectionBalancer
    from server.rest.fastpath import EarlyAnswer

    EarlyAnswers = Callable[[MutableMapping[str, Any]], EarlyAnswer | None]
    BodyLimits = Callable[[MutableMapping[str, Any]], int]

log = structlog.get_logger(__name__)

WHOLE_BODY_BYTES = 256 * 1024
"""A request body declared at least this large may be handed over whole (``whole_bodies``)."""


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int:
    """The ``Content-Length`` of a request not sent in chunks; 0 when there is none."""
    declared = 0
    for name, value in headers:
        if name == b"transfer-encoding":
            return 0
        if name == b"content-length" and value.isdigit():
            declared = int(value)
    return declared


class CorkedTransport:
    """A transport whose writes in one loop turn leave in one write of the real one."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hold ``data`` until the end of this turn of the loop."""
        if self._pending is None:
            self._pending = [bytes(data)]
            self._loop.call_soon(self.flush)
        else:
            self._pending.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        """Hold every chunk (see ``write``)."""
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Send what is held now (called at the end of the turn, and before closing)."""
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def get_write_buffer_size(self) -> int:
        """Bytes not yet sent, held here or in the real transport."""
        held = sum(map(len, self._pending)) if self._pending else 0
        return held + self._transport.get_write_buffer_size()

    def write_eof(self) -> None:
        """Send what is held, then half-close."""
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        """Send what is held, then close (the real transport sends its buffer first)."""
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        """Drop what is held and close at once."""
        self._pending = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        # Everything else (is_closing, get_extra_info, pause_reading, ...) is the real one's.
        return getattr(self._transport, name)


class CorkedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a ``CorkedTransport``."""

    early_answers: ClassVar[EarlyAnswers | None] = None
    """Asked for each request's answer before its task starts (``gateway_protocol``)."""
    balancer: ClassVar[ConnectionBalancer | None] = None
    """Where a connection may go when another gateway holds fewer (``gateway_protocol``)."""
    whole_bodies: ClassVar[BodyLimits | None] = None
    """The body limit of a request whose body its app reads whole, or 0 (``gateway_protocol``).

    Such a body, declared between ``WHOLE_BODY_BYTES`` and that limit, is
    handed over in one message once it is all in. uvicorn otherwise pauses
    the socket every 64 KiB until the app asks for more, and wakes the app
    for each piece: for a 602 KB CNN image, ten pauses, ten wake-ups, ten
    copies out and a join, all on the event loop the other calls share.
    """
    handed_in = False
    """Set on a connection another gateway passed here: it stays."""
    _handed_off = False
    _counted = False
    _whole = False
    """Whether the body being parsed goes to the app whole (``whole_bodies``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Pass the connection to a less loaded gateway, or wrap its transport and keep it."""
        balancer = type(self).balancer
        if balancer is not None:
            if not self.handed_in and balancer.hand_off(transport.get_extra_info("socket")):
                # The other gateway holds the socket now; close only our copy of it.
                self._handed_off = True
                transport.abort()
                return
            balancer.opened()
            self._counted = True
        super().connection_made(CorkedTransport(transport, self.loop))  # type: ignore[arg-type]

    def _uncount(self) -> None:
        balancer = type(self).balancer
        if balancer is not None and self._counted:
            self._counted = False
            balancer.closed()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection (nothing to do for one passed to another gateway)."""
        if self._handed_off:
            return
        self._uncount()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        """Leave the connection to uvicorn's WebSocket protocol, which ends it uncounted."""
        self._uncount()
        super().handle_websocket_upgrade()

    def on_headers_complete(self) -> None:
        """Start the request (uvicorn), then decide whether its body goes over whole."""
        self._whole = False
        super().on_headers_complete()
        limits = type(self).whole_bodies
        cycle = self.cycle
        # A new cycle holds this request's scope (an upgrade starts none).
        if limits is not None and cycle is not None and cycle.scope is self.scope:
            declared = _declared_length(self.headers)
            scope = cast("MutableMapping[str, Any]", self.scope)
            self._whole = WHOLE_BODY_BYTES <= declared <= limits(scope)

    def on_body(self, body: bytes) -> None:
        """Keep a whole body's pieces without pausing or waking the app; else uvicorn's way."""
        if not self._whole:
            super().on_body(body)
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.body += body  # on_message_complete wakes the app once it is all in

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        """Answer from the head alone when ``early_answers`` can; else start the task."""
        early = type(self).early_answers
        # Not for uvicorn's own 503 app, a client waiting for "100 Continue"
        # (it would not send the body the parser expects next), or a client
        # that is not reading its answers (the task would wait for it).
        if (
            early is not None
            and app is self.app
            and not cycle.waiting_for_100_continue
            and not self.flow.write_paused
        ):
            try:
                # A plain dict, which the task gets next: what ``early`` leaves there, it finds.
                answer = early(cast("MutableMapping[str, Any]", cycle.scope))
            except Exception:  # the ordinary path meets it too, and answers it
                log.debug("no early answer", exc_info=True)
                answer = None
            if answer is not None:
                self._answer_now(cycle, answer)
                return
        super()._start_asgi_task(cycle, app)

    def _answer_now(self, cycle: RequestResponseCycle, answer: EarlyAnswer) -> None:
        """Send ``answer`` and end the cycle as uvicorn's own ``send`` would.

        The rest of the request's body, if any, is still parsed and dropped,
        so the connection stays usable for the next request.
        """
        content = [STATUS_LINE[answer.status]]
        for name, value in (*self.server_state.default_headers, *answer.headers):
            content += (name, b": ", value, b"\r\n")
        if not cycle.keep_alive:
            content.append(b"connection: close\r\n")
        content += (b"\r\n", answer.body)
        self.transport.write(b"".join(content))
        cycle.response_started = cycle.response_complete = True
        if not cycle.keep_alive:
            self.transport.close()
        cycle.on_response()


def gateway_protocol(
    early: EarlyAnswers,
    balancer: ConnectionBalancer | None = None,
    whole_bodies: BodyLimits | None = None,
) -> type[CorkedHttpToolsProtocol]:
    """``CorkedHttpToolsProtocol`` asking ``early`` for each request's answer first.

    With a ``balancer``, each accepted connection may go to a less loaded
    gateway; with ``whole_bodies``, the requests it gives a limit get their
    large bodies in one message.
    """
    return type(
        "GatewayHttpProtocol",
        (CorkedHttpToolsProtocol,),
        {
            "early_answers": staticmethod(early),
            "balancer": balancer,
            "whole_bodies": None if whole_bodies is None else staticmethod(whole_bodies),
        },
    )
