"""The corked HTTP protocol: one send per response, and HTTP/1.1 exactly as uvicorn speaks it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING, Any

import pytest
import uvicorn
import uvloop

from server.rest.fastpath import EarlyAnswer
from server.rest.protocol import (
    WHOLE_BODY_BYTES,
    CorkedHttpToolsProtocol,
    CorkedTransport,
    gateway_protocol,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class _Collect(asyncio.Protocol):
    """The peer: every chunk it receives, and whether it saw EOF."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        del exc
        if not self.closed.done():
            self.closed.set_result(None)


@contextlib.asynccontextmanager
async def _pair() -> AsyncIterator[tuple[CorkedTransport, _Collect]]:
    """A corked transport over a real socket pair, and the protocol reading the other end."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    peer = _Collect()
    peer_transport, _ = await loop.connect_accepted_socket(lambda: peer, theirs)
    try:
        yield CorkedTransport(transport, loop), peer  # type: ignore[arg-type]
    finally:
        transport.close()
        peer_transport.close()


async def _turns(count: int = 5) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """Run a coroutine on the standard loop and on uvloop (what the gateway uses)."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(coroutine: Any) -> Any:
        with asyncio.Runner(loop_factory=factory) as loop_runner:
            return loop_runner.run(coroutine)

    return runner


def test_writes_in_one_turn_leave_together_at_its_end(run) -> None:
    """Nothing is sent during the turn; then everything, in order, in one piece."""

    async def scenario() -> None:
        async with _pair() as (corked, peer):
            corked.write(b"HTTP/1.1 200 OK\r\n")
            corked.write(bytearray(b"content-length: 2\r\n\r\n"))
            corked.writelines([b"o", b"k"])
            assert corked.get_write_buffer_size() == 17 + 21 + 2
            await asyncio.sleep(0.05)  # the turn ended long ago: the peer has it
            assert peer.chunks == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
            assert corked.get_write_buffer_size() == 0
            corked.write(b"next")
            await asyncio.sleep(0.05)
            assert peer.chunks[-1] == b"next"

    run(scenario())


def test_close_sends_what_is_held_and_abort_drops_it(run) -> None:
    """``close`` flushes before closing; ``abort`` discards; a late flush sends nothing."""

    async def scenario() -> None:
        async with _pair() as (corked, peer):
            corked.write(b"last words")
            corked.close()
            await asyncio.wait_for(peer.closed, 5)
            assert b"".join(peer.chunks) == b"last words"
            assert corked.is_closing()
        async with _pair() as (corked, peer):
            corked.write(b"never sent")
            corked.abort()
            await asyncio.wait_for(peer.closed, 5)
            await _turns()
            assert peer.chunks == []

    run(scenario())


SEEN: list[str] = []
"""Paths the app was called for, in order."""


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echo the body (or ``size`` bytes of ``x`` for GET /big?size=N), as two ASGI messages.

    ``/slow`` answers after 0.2 s.
    """
    assert scope["type"] == "http"
    SEEN.append(scope["path"])
    if scope["path"] == "/slow":
        await asyncio.sleep(0.2)
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/big":
        body = b"x" * int(scope["query_string"].split(b"=")[1])
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def _server(
    protocol: type[CorkedHttpToolsProtocol] = CorkedHttpToolsProtocol, app: Any = _app
) -> AsyncIterator[int]:
    """uvicorn with the corked protocol on a loopback port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, http=protocol, log_config=None, lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task


async def _exchange(port: int, data: bytes, *, until: bytes, limit: float = 5) -> bytes:
    """Send ``data`` on a new connection and read until ``until`` appears ``count`` times."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    received = b""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limit):
            while until not in received:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                received += chunk
    writer.close()
    return received


def test_http_through_the_corked_protocol(run) -> None:
    """Pipelining, 100-continue, connection close and a large body all work as in uvicorn."""

    async def scenario() -> None:
        async with _server() as port:
            # Two requests in one packet: two answers, in order.
            pipelined = await _exchange(
                port,
                b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nfirst"
                b"POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 6\r\n\r\nsecond",
                until=b"second",
            )
            assert pipelined.count(b"HTTP/1.1 200 OK") == 2
            assert pipelined.index(b"first") < pipelined.index(b"second")

            # Expect: 100-continue is answered before the body is sent.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /c HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n"
            )
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert interim.startswith(b"HTTP/1.1 100 Continue")
            writer.write(b"body")
            final = await asyncio.wait_for(reader.readuntil(b"body"), 5)
            assert final.startswith(b"HTTP/1.1 200 OK")
            writer.close()

            # Connection: close: the answer, then the server closes.
            closing = await _exchange(
                port, b"GET /d HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n", until=b"\0"
            )
            assert closing.startswith(b"HTTP/1.1 200 OK")
            assert b"connection: close" in closing.lower()

            # A body far larger than a socket buffer arrives whole.
            size = 4 * 1024 * 1024
            big = await _exchange(
                port,
                f"GET /big?size={size} HTTP/1.1\r\nhost: x\r\n\r\n".encode(),
                until=b"\0",
                limit=3,
            )
            head, _, body = big.partition(b"\r\n\r\n")
            assert f"content-length: {size}".encode() in head
            assert body == b"x" * size

    run(scenario())


def _refuse(scope: Any) -> EarlyAnswer | None:
    """Answer ``/refuse*`` from the head: 429, body ``no``; fail on ``/broken``."""
    if scope["path"] == "/broken":
        msg = "a bug in the early answer"
        raise RuntimeError(msg)
    if not scope["path"].startswith("/refuse"):
        return None
    return EarlyAnswer(429, [(b"content-type", b"text/plain"), (b"content-length", b"2")], b"no")


def test_early_answers_leave_before_the_body_and_keep_the_connection(run) -> None:
    """An early answer needs no body and no task; the connection then serves the next request.

    In order behind a pipelined request still running, and never for a client
    waiting for 100 Continue, which would otherwise never send its body.
    """

    async def scenario() -> None:
        SEEN.clear()
        async with _server(gateway_protocol(_refuse)) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /refuse HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n")
            refused = await asyncio.wait_for(reader.readuntil(b"no"), 5)
            assert refused.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
            assert b"\r\ndate: " in refused  # uvicorn's default headers, as on every answer
            # The refused body arrives late, with the next request behind it.
            writer.write(b"0123456789POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nfirst")
            served = await asyncio.wait_for(reader.readuntil(b"first"), 5)
            assert served.startswith(b"HTTP/1.1 200 OK")
            writer.close()
            assert SEEN == ["/a"]

            pipelined = await _exchange(
                port,
                b"POST /slow HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n\r\nslow"
                b"POST /refuse HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
                until=b"\r\n\r\nno",
            )
            assert pipelined.index(b"200 OK") < pipelined.index(b"slow")
            assert pipelined.index(b"slow") < pipelined.index(b"429 Too Many Requests")

            waiting = await _exchange(
                port,
                b"POST /refuse-later HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n"
                b"expect: 100-continue\r\n\r\n",
                until=b"100 Continue",
            )
            assert waiting.startswith(b"HTTP/1.1 100 Continue")

            closing = await _exchange(
                port,
                b"POST /refuse HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n"
                b"connection: close\r\n\r\n",
                until=b"\0",
            )
            assert closing.startswith(b"HTTP/1.1 429")
            assert closing.endswith(b"connection: close\r\n\r\nno")  # and then the EOF

            # An early answer that fails leaves the request to the app.
            broken = await _exchange(
                port,
                b"POST /broken HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nok",
                until=b"\r\n\r\nok",
            )
            assert broken.startswith(b"HTTP/1.1 200 OK")
            assert SEEN == ["/a", "/slow", "/refuse-later", "/broken"]

    run(scenario())


RECEIVED: dict[str, list[tuple[int, bool] | str]] = {}
"""What the recording app got for each path: ``(body bytes, more_body)`` per message."""
WHOLE_LIMIT = 2 * 1024 * 1024


async def _recording_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Read the body as it comes, noting each message; answer with its length."""
    messages = RECEIVED.setdefault(scope["path"], [])
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            messages.append("disconnect")
            return
        size += len(message.get("body", b""))
        messages.append((len(message.get("body", b"")), message.get("more_body", False)))
        if not message.get("more_body"):
            break
    body = str(size).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _no_early_answer(scope: Any) -> EarlyAnswer | None:
    """Every request goes the ordinary way."""
    del scope
    return None


def _whole_under(scope: Any) -> int:
    """The body limit ``gateway_protocol`` is given: paths under ``/whole`` have one."""
    return WHOLE_LIMIT if scope["path"].startswith("/whole") else 0


async def _post_slowly(port: int, path: str, size: int, *, send: int | None = None) -> bytes:
    """POST ``size`` declared bytes (``send`` of them, then close) in 64 KiB steps, 5 ms apart."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n\r\n".encode())
    left = size if send is None else send
    while left:
        step = min(left, 65536)
        writer.write(b"z" * step)
        await writer.drain()
        await asyncio.sleep(0.005)
        left -= step
    if send is not None:
        writer.close()
        return b""
    answer = await asyncio.wait_for(reader.readuntil(str(size).encode()), 5)
    writer.close()
    return answer


def test_a_large_body_with_a_limit_reaches_the_app_whole_and_others_in_pieces(run) -> None:
    """One message for a body between ``WHOLE_BODY_BYTES`` and its limit; uvicorn's way otherwise."""
    size = 1024 * 1024

    async def scenario() -> None:
        RECEIVED.clear()
        protocol = gateway_protocol(_no_early_answer, whole_bodies=_whole_under)
        async with _server(protocol, _recording_app) as port:
            assert (await _post_slowly(port, "/whole", size)).startswith(b"HTTP/1.1 200 OK")
            await _post_slowly(port, "/other", size)  # no limit for it
            await _post_slowly(port, "/whole-over", WHOLE_LIMIT + 1)  # past its limit
            await _post_slowly(port, "/whole-small", WHOLE_BODY_BYTES - 1)  # under the threshold

    run(scenario())
    assert RECEIVED["/whole"] == [(size, False)]
    for path, length in (("/other", size), ("/whole-over", WHOLE_LIMIT + 1)):
        pieces = RECEIVED[path]
        assert len(pieces) > 1
        assert sum(piece[0] for piece in pieces if isinstance(piece, tuple)) == length
    assert len(RECEIVED["/whole-small"]) > 1


def test_a_whole_body_cut_short_ends_in_a_disconnect_and_the_next_request_is_served(run) -> None:
    """A client gone mid-body: the app hears so; on another connection a chunked body still works."""

    async def scenario() -> None:
        RECEIVED.clear()
        protocol = gateway_protocol(_no_early_answer, whole_bodies=_whole_under)
        async with _server(protocol, _recording_app) as port:
            await _post_slowly(port, "/whole-cut", 1024 * 1024, send=300 * 1024)
            for _ in range(100):
                if RECEIVED.get("/whole-cut"):
                    break
                await asyncio.sleep(0.01)
            chunked = await _exchange(
                port,
                b"POST /whole-chunked HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n0\r\n\r\n"
                b"POST /whole-next HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nok",
                until=b"\r\n\r\n2",
            )
            assert chunked.count(b"HTTP/1.1 200 OK") == 2

    run(scenario())
    assert RECEIVED["/whole-cut"] == ["disconnect"]
    chunked_pieces = RECEIVED["/whole-chunked"]
    assert sum(piece[0] for piece in chunked_pieces if isinstance(piece, tuple)) == len(b"hello")
    assert RECEIVED["/whole-next"] == [(2, False)]
