"""The local inference hop: ``InferRequest``/``InferResponse`` in length-prefixed frames.

gRPC is what a worker speaks for control (``Ping``, ``Status``, ``Load``)
and what a remote caller can use for ``Infer``. Between a gateway and the
workers it spawned on the same host, though, a gRPC round trip cost several
times what a small model's invocation does (HTTP/2 framing, per-call
objects and callbacks on both ends), so inference takes a plainer road: the
same protobuf messages, each in one frame, over a second Unix socket in the
same private directory, many calls in flight on one connection.

A frame is ``length:u32 | id:u64 | kind:u8`` (big-endian) and ``length``
bytes of payload. Requests are ``kind`` 0 with a serialized ``InferRequest``,
or ``kind`` 2 when inputs of ``DETACHED_BYTES`` or more travel beside the
message instead of inside it (``server.pool.messages.call_to_pb``):

    proto_length:u32 | InferRequest | count:u32 | count x (call:u32 input:u32 size:u64) | bytes

each entry naming an input the message left empty, whose ``size`` bytes
follow in the order of the entries. A protobuf message copies its bytes
fields when built, nested and serialized; a large input sent beside it is
written from the request body's own memory and read straight into one
buffer in the worker, whose inputs are views of it. An answer carries the
request's ``id`` and either ``kind`` 0 with a serialized ``InferResponse`` or
``kind`` 1 (the worker is draining: try another) with no payload. Answers
may come back in any order.

The calls' own deadlines travel inside the messages (``timeout_ms``), as
with gRPC; the gateway also stops waiting at the RPC's deadline. A lost
connection fails every call waiting on it with ``WorkerGone``, which the
pool retries on another worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import struct
from pathlib import Path
from typing import TYPE_CHECKING, cast

import structlog
from google.protobuf.message import DecodeError

from protos import worker_pb2
from server.pool.dispatcher import WorkerGone
from server.service.errors import DeadlineExceeded

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from server.pool.messages import Attached, Buffer, Detached

log = structlog.get_logger(__name__)

_HEADER = struct.Struct(">IQB")
_COUNT = struct.Struct(">I")
_ENTRY = struct.Struct(">IIQ")
REQUEST, REQUEST_DETACHED = 0, 2
ANSWER, DRAINING = 0, 1
STAGING_BYTES = 256 * 1024
"""A connection's read buffer; larger frames are read into one of their own."""
KEPT_BYTES = 32 * 1024 * 1024
"""Large-frame buffers a connection keeps, in all, to read later frames into."""
MAX_FRAME_BYTES = 64 * 1024 * 1024
"""Largest payload either side accepts (the gateway's own request limits are smaller)."""


def frames_path(socket_path: str | Path) -> Path:
    """The inference socket next to a worker's gRPC socket ``socket_path``."""
    path = Path(str(socket_path).removeprefix("unix:"))
    return path.with_name(path.name + ".infer")


def _private_buffer(size: int) -> mmap.mmap:
    """``size`` bytes of private anonymous memory, in huge pages where the kernel offers them.

    ``mmap``'s default, a shared mapping, is backed by shmem and handed out
    one 4 KiB page fault at a time: writing 7 MiB into a fresh one cost 5.8-6.8
    ms of CPU here, against 3.5 ms for private memory and 0.53-0.57 ms for
    private memory in 2 MiB pages (0.23 ms into one already written).
    """
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):  # Linux only; elsewhere, 4 KiB pages
        with contextlib.suppress(OSError):  # a kernel built without transparent huge pages
            buffer.madvise(mmap.MADV_HUGEPAGE)
    return buffer


def _unreferenced(buffer: mmap.mmap) -> bool:
    """Whether no view of ``buffer`` is left anywhere.

    An mmap refuses to be resized while views of it exist; resizing one to
    its own size changes nothing otherwise.
    """
    try:
        buffer.resize(len(buffer))
    except (BufferError, OSError, SystemError):  # viewed, or resizing unsupported here
        return False
    return True


class _Reader(asyncio.BufferedProtocol):
    """Splits a byte stream into frames and hands each to ``on_frame``.

    Reads into a staging buffer, from which small frames are copied out; a
    frame too large for it gets a buffer of its own that the socket fills
    directly, so a large payload is copied once (by the kernel) on the way in.

    Those buffers are kept (up to ``KEPT_BYTES``) and read into again once
    nothing refers to the frame they held (its inputs are views of it): the
    kernel hands out a fresh mapping's pages one fault at a time, which cost
    a worker more than the copy itself (3.2 against 0.8 ms of CPU to read an
    11-image CNN trip of 6.6 MB). A buffer still referred to is never reused.
    Under load the trips' sizes vary (0.2 to 16 MiB for the CNN) and several
    are held at once, so new buffers are still needed; those are private
    memory in huge pages (``_private_buffer``), which fault in cheaply.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._staging = bytearray(STAGING_BYTES)
        self._view = memoryview(self._staging)
        self._start = 0
        """Where the first unparsed byte of ``_staging`` is."""
        self._end = 0
        """Where the bytes read into ``_staging`` end."""
        self._large: mmap.mmap | None = None
        """The payload being read into a buffer of its own, when there is one.

        Anonymous memory: the kernel hands out zeroed pages as they are first
        written, where ``bytearray(length)`` zeroed the whole frame first (a
        memset of every large frame, 0.4% of the CPU under the CNN load).
        """
        self._length = 0
        """The length of the payload being read into ``_large`` (which can be longer)."""
        self._kept: list[mmap.mmap] = []
        """Large-frame buffers to read later frames into (see the class's docstring)."""
        self._filled = 0
        """How much of ``_large`` has arrived."""
        self._large_head = (0, 0)
        """The ``(id, kind)`` of the frame in ``_large``."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # a stream socket's

    def get_buffer(self, sizehint: int) -> memoryview:
        del sizehint
        if self._large is not None:
            return memoryview(self._large)[self._filled : self._length]
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._large is not None:
            self._filled += nbytes
            if self._filled == self._length:
                payload, self._large = memoryview(self._large)[: self._length], None
                self.on_frame(*self._large_head, payload)
            return
        self._end += nbytes
        self._split()

    def _split(self) -> None:
        staging, size = self._staging, _HEADER.size
        start, end = self._start, self._end
        while end - start >= size:
            length, ident, kind = _HEADER.unpack_from(staging, start)
            if length > MAX_FRAME_BYTES:
                log.warning("frame too large; closing the connection", bytes=length)
                if self.transport is not None:
                    self.transport.abort()
                self._start = self._end = 0
                return
            stop = start + size + length
            if stop <= end:
                self._start = start = stop
                self.on_frame(ident, kind, bytes(self._view[stop - length : stop]))
                continue
            if size + length > len(staging):  # read the rest straight into its own buffer
                large = self._buffer_for(length)
                have = end - start - size
                large[:have] = self._view[start + size : end]
                self._large, self._filled, self._large_head = large, have, (ident, kind)
                self._length = length
                start = end
            break
        if start == end:
            self._start = self._end = 0
        elif start:  # keep the partial frame at the front, with room after it
            self._staging[: end - start] = bytes(self._view[start:end])
            self._start, self._end = 0, end - start

    def _buffer_for(self, length: int) -> mmap.mmap:
        """A buffer of at least ``length`` bytes that nothing refers to."""
        free = [buffer for buffer in self._kept if _unreferenced(buffer)]
        fitting = [buffer for buffer in free if len(buffer) >= length]
        if fitting:
            return min(fitting, key=len)
        # Sizes in powers of two, so that frames of similar sizes share buffers.
        buffer = _private_buffer(1 << (length - 1).bit_length())
        for small in sorted(free, key=len):  # make room: free ones too small to serve it
            if sum(map(len, self._kept)) + len(buffer) <= KEPT_BYTES:
                break
            self._kept.remove(small)
        if sum(map(len, self._kept)) + len(buffer) <= KEPT_BYTES:
            self._kept.append(buffer)
        return buffer

    def on_frame(self, ident: int, kind: int, payload: Buffer) -> None:
        raise NotImplementedError


def encode_request(
    ident: int, request: worker_pb2.InferRequest, detached: Sequence[Detached]
) -> list[Buffer]:
    """A request's frame, as the pieces to write: no detached bytes are copied."""
    message = request.SerializeToString()
    table = [
        _ENTRY.pack(call, position, len(raw))
        for call, inputs in enumerate(detached)
        for position, raw in inputs
    ]
    if not table:
        return [_HEADER.pack(len(message), ident, REQUEST) + message]
    head = b"".join((_COUNT.pack(len(message)), message, _COUNT.pack(len(table)), *table))
    raws = [raw for inputs in detached for _, raw in inputs]
    size = len(head) + sum(len(raw) for raw in raws)
    return [_HEADER.pack(size, ident, REQUEST_DETACHED) + head, *raws]


def decode_request(kind: int, payload: Buffer) -> tuple[worker_pb2.InferRequest, Attached]:
    """A request frame's message and the inputs sent beside it ((call, input) -> bytes).

    Raises ``ValueError`` for a frame that breaks the format, checked before
    anything is handed on (the server then closes the connection: only its
    own gateway talks on this socket).
    """
    if kind == REQUEST:
        return worker_pb2.InferRequest.FromString(payload), {}
    if kind != REQUEST_DETACHED:
        raise ValueError(f"unknown request frame kind {kind}")
    view = memoryview(payload)
    if len(view) < _COUNT.size:
        raise ValueError("detached request frame is truncated")
    (length,) = _COUNT.unpack_from(view, 0)
    offset = _COUNT.size + length
    if offset + _COUNT.size > len(view):
        raise ValueError("detached request frame is truncated")
    try:
        request = worker_pb2.InferRequest.FromString(view[_COUNT.size : offset])
    except DecodeError:
        raise ValueError("detached request frame holds no InferRequest") from None
    (count,) = _COUNT.unpack_from(view, offset)
    offset += _COUNT.size
    data = offset + count * _ENTRY.size
    if data > len(view):
        raise ValueError("detached request frame is truncated")
    attached: Attached = {}
    for _ in range(count):
        call, position, size = _ENTRY.unpack_from(view, offset)
        offset += _ENTRY.size
        if (
            call >= len(request.calls)
            or position >= len(request.calls[call].inputs)
            or request.calls[call].inputs[position].data
            or (call, position) in attached
            or data + size > len(view)
        ):
            raise ValueError("detached input table does not match the message")
        attached[call, position] = view[data : data + size]
        data += size
    if data != len(view):
        raise ValueError("detached inputs do not fill the frame")
    return request, attached


# --- worker side ------------------------------------------------------------------
class _ServerConnection(_Reader):
    def __init__(self, server: FrameServer) -> None:
        super().__init__()
        self._server = server

    def on_frame(self, ident: int, kind: int, payload: Buffer) -> None:
        self._server.started(self, ident, kind, payload)

    def send(self, ident: int, kind: int, payload: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(_HEADER.pack(len(payload), ident, kind) + payload)

    def connection_lost(self, exc: Exception | None) -> None:
        del exc
        self.transport = None
        self._server.connections.discard(self)


class FrameServer:
    """Answers ``InferRequest`` frames with ``handler`` on a Unix socket."""

    def __init__(
        self,
        handler: Callable[[worker_pb2.InferRequest, Attached], Awaitable[worker_pb2.InferResponse]],
        *,
        answer_now: Callable[[worker_pb2.InferRequest, Attached], worker_pb2.InferResponse | None]
        | None = None,
        refit: Callable[[worker_pb2.InferResponse], worker_pb2.InferResponse] | None = None,
    ) -> None:
        self._handler = handler
        self._answer_now = answer_now
        """Answers a request on the spot when it can (no task); ``None`` hands it to ``handler``."""
        self._refit = refit
        """Makes an answer past ``MAX_FRAME_BYTES`` fit; asked only then, after one encoding."""
        self._server: asyncio.AbstractServer | None = None
        self.connections: set[_ServerConnection] = set()
        self._running: set[asyncio.Task[None]] = set()
        self._draining = False

    async def start(self, path: Path) -> None:
        """Listen on ``path`` (replacing a stale socket file)."""
        path.unlink(missing_ok=True)

        def connection() -> _ServerConnection:
            protocol = _ServerConnection(self)
            self.connections.add(protocol)
            return protocol

        self._server = await asyncio.get_running_loop().create_unix_server(connection, str(path))

    def started(
        self, connection: _ServerConnection, ident: int, kind: int, payload: Buffer
    ) -> None:
        """A request frame arrived: answer it now, or in its own task (refuse it when draining)."""
        if self._draining:
            connection.send(ident, DRAINING, b"")
            return
        try:
            request, attached = decode_request(kind, payload)
        except Exception:  # noqa: BLE001 - a peer speaking nonsense loses its connection
            log.warning("undecodable inference frame; closing the connection")
            if connection.transport is not None:
                connection.transport.abort()
            return
        if self._answer_now is not None:
            reply = self._answer_now(request, attached)
            if reply is not None:
                self._send_answer(connection, ident, reply)
                return
        task = asyncio.get_running_loop().create_task(
            self._answer(connection, ident, request, attached)
        )
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _answer(
        self,
        connection: _ServerConnection,
        ident: int,
        request: worker_pb2.InferRequest,
        attached: Attached,
    ) -> None:
        reply = await self._handler(request, attached)
        self._send_answer(connection, ident, reply)

    def _send_answer(
        self, connection: _ServerConnection, ident: int, reply: worker_pb2.InferResponse
    ) -> None:
        payload = reply.SerializeToString()
        if len(payload) > MAX_FRAME_BYTES and self._refit is not None:
            payload = self._refit(reply).SerializeToString()
        connection.send(ident, ANSWER, payload)

    async def stop(self, grace: float) -> None:
        """Take no new calls (callers are told to go elsewhere); give running ones ``grace``."""
        self._draining = True
        if self._server is not None:
            self._server.close()
        if self._running:
            await asyncio.wait(set(self._running), timeout=grace)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()


# --- gateway side -----------------------------------------------------------------
class _ClientConnection(_Reader):
    def __init__(self, channel: FrameChannel) -> None:
        super().__init__()
        self._channel = channel

    def on_frame(self, ident: int, kind: int, payload: Buffer) -> None:
        self._channel.answered(ident, kind, payload)

    def connection_lost(self, exc: Exception | None) -> None:
        del exc
        self._channel.lost(self)


class FrameChannel:
    """One connection to a worker's inference socket, many calls in flight on it.

    Has the shape of the generated stub's ``Infer`` (``server.pool.dispatcher``
    sends through either).
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._connection: _ClientConnection | None = None
        self._connecting: asyncio.Future[_ClientConnection] | None = None
        self._pending: dict[int, asyncio.Future[worker_pb2.InferResponse]] = {}
        self._next_id = 0
        self._closed = False

    async def Infer(  # noqa: N802 - the worker method's name, as on the gRPC stub
        self,
        request: worker_pb2.InferRequest,
        timeout: float,
        detached: Sequence[Detached] = (),
    ) -> worker_pb2.InferResponse:
        """Send ``request`` and wait for its answer, at most ``timeout`` seconds.

        ``detached[i]``: the bytes of call ``i``'s inputs that its message left
        out, sent beside it.

        Raises ``WorkerGone`` when the connection fails or the worker is
        draining, ``DeadlineExceeded`` when no answer came in time.
        """
        connection = self._connection or await self._connect()
        transport = connection.transport
        if transport is None or transport.is_closing():
            raise WorkerGone
        loop = asyncio.get_running_loop()
        self._next_id += 1
        ident = self._next_id
        future: asyncio.Future[worker_pb2.InferResponse] = loop.create_future()
        self._pending[ident] = future
        pieces = encode_request(ident, request, detached)
        if len(pieces) == 1:
            transport.write(pieces[0])
        else:
            transport.writelines(pieces)
        timer = loop.call_later(timeout, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()
            self._pending.pop(ident, None)

    async def _connect(self) -> _ClientConnection:
        if self._closed:
            raise WorkerGone
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _open(self) -> _ClientConnection:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.create_unix_connection(
                lambda: _ClientConnection(self), str(self._path)
            )
        except OSError:
            raise WorkerGone from None
        self._connection = protocol
        return protocol

    def answered(self, ident: int, kind: int, payload: Buffer) -> None:
        """An answer frame arrived: settle the call it belongs to."""
        future = self._pending.get(ident)
        if future is None or future.done():
            return  # timed out meanwhile
        if kind == DRAINING:
            future.set_exception(WorkerGone())
            return
        try:
            future.set_result(worker_pb2.InferResponse.FromString(payload))
        except Exception as exc:  # noqa: BLE001 - an undecodable answer fails its call only
            future.set_exception(exc)

    def lost(self, connection: _ClientConnection) -> None:
        """The connection ended: every call waiting on it fails as retryable."""
        if self._connection is connection:
            self._connection = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(WorkerGone())

    def close(self) -> None:
        """Close the connection; calls still waiting fail with ``WorkerGone``."""
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is not None:
            if connection.transport is not None:
                connection.transport.close()
            self.lost(connection)


def _expire(future: asyncio.Future[worker_pb2.InferResponse]) -> None:
    if not future.done():
        future.set_exception(DeadlineExceeded("the inference call ran out of time"))
