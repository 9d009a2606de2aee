"""The framed inference hop over a real Unix socket: multiplexing, draining, loss, deadlines."""

from __future__ import annotations

import asyncio
import ctypes
import shutil
import socket
import struct
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from protos import worker_pb2
from server.pool.dispatcher import WorkerGone
from server.pool.frames import (
    KEPT_BYTES,
    MAX_FRAME_BYTES,
    REQUEST_DETACHED,
    STAGING_BYTES,
    FrameChannel,
    FrameServer,
    _Reader,
    decode_request,
    encode_request,
    frames_path,
)
from server.service.errors import DeadlineExceeded

if TYPE_CHECKING:
    from collections.abc import Iterator

    from server.pool.messages import Attached

HEADER = struct.Struct(">IQB")
GUARD = 5.0
"""No scenario step may take this long: a hang fails the test instead of blocking it."""


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A socket path in a fresh private directory under /tmp (sun_path holds ~100 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="ss-"))
    yield directory / "w.sock"
    shutil.rmtree(directory, ignore_errors=True)


def request(name: str) -> worker_pb2.InferRequest:
    """A request with one call recognisable by its request id."""
    return worker_pb2.InferRequest(calls=[worker_pb2.InferCall(request_id=name)])


def answer(req: worker_pb2.InferRequest) -> worker_pb2.InferResponse:
    """Echo each call's request id as the name of its one output."""
    return worker_pb2.InferResponse(
        results=[
            worker_pb2.InferResult(outputs=[worker_pb2.Tensor(name=call.request_id)])
            for call in req.calls
        ]
    )


def name_of(reply: worker_pb2.InferResponse) -> str:
    """The echoed request id."""
    return reply.results[0].outputs[0].name


async def echo(req: worker_pb2.InferRequest, attached: Attached) -> worker_pb2.InferResponse:
    """Answer at once."""
    return answer(req)


class Gate:
    """A handler that holds every call until ``open`` is set, and counts what it saw."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.arrived: list[str] = []
        self.answered: list[str] = []
        self._progress = asyncio.Event()

    async def __call__(
        self, req: worker_pb2.InferRequest, attached: Attached
    ) -> worker_pb2.InferResponse:
        """Record the call, wait for the gate, echo it."""
        assert attached == {}
        self.arrived.append(req.calls[0].request_id)
        self._progress.set()
        await self.open.wait()
        self.answered.append(req.calls[0].request_id)
        self._progress.set()
        return answer(req)

    async def until(self, *, arrived: int = 0, answered: int = 0) -> None:
        """Wait until that many calls reached the handler (or were answered by it)."""
        while len(self.arrived) < arrived or len(self.answered) < answered:
            self._progress.clear()
            await self._progress.wait()


async def reply_to_raw_frame(socket_path: Path, frame: bytes) -> bytes | None:
    """Send ``frame`` on a plain socket; what comes back first (``b""``: closed, None: reset)."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, str(socket_path))
        await loop.sock_sendall(sock, frame)
        try:
            return await asyncio.wait_for(loop.sock_recv(sock, 1024), GUARD)
        except ConnectionResetError:
            return None  # an abort may reset instead of closing cleanly


def record_loop_errors(errors: list[dict[str, object]]) -> None:
    """Collect what the event loop would log as unhandled (e.g. an InvalidStateError)."""
    asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))


def test_frames_path_sits_beside_the_grpc_socket() -> None:
    """The inference socket is the worker socket's name plus ``.infer``, with or without unix:."""
    assert frames_path("unix:/srv/ss/w0.sock") == Path("/srv/ss/w0.sock.infer")
    assert frames_path(Path("/srv/ss/w0.sock")) == Path("/srv/ss/w0.sock.infer")


def test_concurrent_calls_each_get_their_own_answer_out_of_order(socket_path: Path) -> None:
    """40 calls on one connection; the handler finishes them in reverse; each gets its own."""
    count = 40
    finished: list[str] = []
    turns = [asyncio.Event() for _ in range(count)]
    arrived = 0

    async def reverse(req: worker_pb2.InferRequest, attached: Attached) -> worker_pb2.InferResponse:
        # Once all have arrived, the last call sent answers first, then each the one before.
        nonlocal arrived
        index = int(req.calls[0].request_id)
        arrived += 1
        if arrived == count:
            turns[-1].set()
        await turns[index].wait()
        finished.append(req.calls[0].request_id)
        if index:
            turns[index - 1].set()
        return answer(req)

    async def scenario() -> tuple[list[str], int]:
        server = FrameServer(reverse)
        await server.start(socket_path)
        channel = FrameChannel(socket_path)
        try:
            calls = [channel.Infer(request(str(i)), timeout=GUARD) for i in range(count)]
            replies = await asyncio.wait_for(asyncio.gather(*calls), GUARD)
            return [name_of(r) for r in replies], len(server.connections)
        finally:
            channel.close()
            await server.stop(0)

    names, connections = asyncio.run(scenario())
    assert names == [str(i) for i in range(count)]
    assert connections == 1
    # The answers really did come back in the reverse order.
    assert finished == [str(i) for i in reversed(range(count))]


def test_answer_now_serves_what_it_can_and_the_handler_the_rest(socket_path: Path) -> None:
    """Requests ``answer_now`` answers never reach the handler; those it declines do."""
    handled: list[str] = []

    def on_the_spot(
        req: worker_pb2.InferRequest, attached: Attached
    ) -> worker_pb2.InferResponse | None:
        return answer(req) if req.calls[0].request_id.startswith("now") else None

    async def queued(req: worker_pb2.InferRequest, attached: Attached) -> worker_pb2.InferResponse:
        handled.append(req.calls[0].request_id)
        await asyncio.sleep(0)
        return answer(req)

    async def scenario() -> list[str]:
        server = FrameServer(queued, answer_now=on_the_spot)
        await server.start(socket_path)
        channel = FrameChannel(socket_path)
        try:
            names = ["now-1", "later-1", "now-2", "later-2"]
            calls = [channel.Infer(request(name), timeout=GUARD) for name in names]
            replies = await asyncio.wait_for(asyncio.gather(*calls), GUARD)
            return [name_of(r) for r in replies]
        finally:
            channel.close()
            await server.stop(0)

    assert asyncio.run(scenario()) == ["now-1", "later-1", "now-2", "later-2"]
    assert handled == ["later-1", "later-2"]


def test_a_frame_split_into_single_bytes_is_reassembled(socket_path: Path) -> None:
    """A request written one byte at a time, then two frames in one write, are all answered."""
    payload = request("slow-bytes").SerializeToString()
    frame = HEADER.pack(len(payload), 7, 0) + payload
    second = request("b").SerializeToString()
    third = request("c").SerializeToString()
    pair = HEADER.pack(len(second), 8, 0) + second + HEADER.pack(len(third), 9, 0) + third

    async def read_frames(sock: socket.socket, count: int) -> dict[int, str]:
        loop = asyncio.get_running_loop()
        data = b""
        found: dict[int, str] = {}
        while len(found) < count:
            chunk = await loop.sock_recv(sock, 65536)
            assert chunk, "the server closed the connection"
            data += chunk
            while len(data) >= HEADER.size:
                length, ident, kind = HEADER.unpack_from(data)
                if len(data) < HEADER.size + length:
                    break
                assert kind == 0
                body = data[HEADER.size : HEADER.size + length]
                found[ident] = name_of(worker_pb2.InferResponse.FromString(body))
                data = data[HEADER.size + length :]
        return found

    async def scenario() -> dict[int, str]:
        server = FrameServer(echo)
        await server.start(socket_path)
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, str(socket_path))
            for byte in frame:
                await loop.sock_sendall(sock, bytes([byte]))
                await asyncio.sleep(0)
            await loop.sock_sendall(sock, pair)
            found = await asyncio.wait_for(read_frames(sock, 3), GUARD)
        await server.stop(0)
        return found

    assert asyncio.run(scenario()) == {7: "slow-bytes", 8: "b", 9: "c"}


def test_draining_server_sends_new_calls_elsewhere_and_finishes_running_ones(
    socket_path: Path,
) -> None:
    """During ``stop(grace)`` a new call raises WorkerGone; the running ones still get answers."""

    async def scenario() -> tuple[list[str], float]:
        gate = Gate()
        server = FrameServer(gate)
        await server.start(socket_path)
        channel = FrameChannel(socket_path)
        running = [asyncio.ensure_future(channel.Infer(request(n), timeout=GUARD)) for n in "ab"]
        await asyncio.wait_for(gate.until(arrived=2), GUARD)
        loop = asyncio.get_running_loop()
        began = loop.time()
        stopping = asyncio.ensure_future(server.stop(grace=3.0))
        await asyncio.sleep(0.05)
        assert not stopping.done()  # waiting for the running calls
        with pytest.raises(WorkerGone):
            await asyncio.wait_for(channel.Infer(request("late"), timeout=GUARD), GUARD)
        assert gate.arrived == ["a", "b"]  # the late call never reached the handler
        gate.open.set()
        replies = await asyncio.wait_for(asyncio.gather(*running), GUARD)
        await asyncio.wait_for(stopping, GUARD)
        took = loop.time() - began
        channel.close()
        return [name_of(r) for r in replies], took

    names, took = asyncio.run(scenario())
    assert names == ["a", "b"]
    assert took < 1.5  # stop returned once the calls finished, not at the end of the grace


def test_a_call_outliving_the_grace_fails_as_worker_gone(socket_path: Path) -> None:
    """When the grace runs out the server closes its connections: the stuck call is retryable."""

    async def scenario() -> float:
        gate = Gate()  # never opened
        server = FrameServer(gate)
        await server.start(socket_path)
        channel = FrameChannel(socket_path)
        stuck = asyncio.ensure_future(channel.Infer(request("stuck"), timeout=GUARD))
        await asyncio.wait_for(gate.until(arrived=1), GUARD)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.wait_for(server.stop(grace=0.2), GUARD)
        with pytest.raises(WorkerGone):
            await asyncio.wait_for(stuck, GUARD)
        took = loop.time() - began
        channel.close()
        gate.open.set()
        await asyncio.sleep(0.01)  # let the handler's task finish against the closed transport
        return took

    took = asyncio.run(scenario())
    assert 0.15 < took < 2.0


def test_a_killed_server_connection_fails_every_pending_call(socket_path: Path) -> None:
    """The worker's end of the connection aborts: all waiting calls raise WorkerGone, none hang."""

    async def scenario() -> list[BaseException | worker_pb2.InferResponse]:
        gate = Gate()
        server = FrameServer(gate)
        await server.start(socket_path)
        channel = FrameChannel(socket_path)
        pending = [channel.Infer(request(str(i)), timeout=GUARD) for i in range(10)]
        calls = asyncio.ensure_future(asyncio.gather(*pending, return_exceptions=True))
        await asyncio.wait_for(gate.until(arrived=10), GUARD)
        for connection in list(server.connections):
            assert connection.transport is not None
            connection.transport.abort()
        outcomes = await asyncio.wait_for(calls, GUARD)
        # The channel connects again for the next call.
        gate.open.set()
        again = await asyncio.wait_for(channel.Infer(request("again"), timeout=GUARD), GUARD)
        assert name_of(again) == "again"
        channel.close()
        await server.stop(0)
        return outcomes

    outcomes = asyncio.run(scenario())
    assert len(outcomes) == 10
    assert all(isinstance(outcome, WorkerGone) for outcome in outcomes), outcomes


def test_a_server_that_is_gone_fails_calls_as_worker_gone(socket_path: Path) -> None:
    """Server stopped: waiting calls and new calls (refused connection, no socket) raise WorkerGone."""

    async def scenario() -> None:
        gate = Gate()
        server = FrameServer(gate)
        await server.start(socket_path)
        channel = FrameChannel(socket_path)
        waiting = asyncio.ensure_future(channel.Infer(request("w"), timeout=GUARD))
        await asyncio.wait_for(gate.until(arrived=1), GUARD)
        await server.stop(0)
        with pytest.raises(WorkerGone):
            await asyncio.wait_for(waiting, GUARD)
        # The socket file may still be there, with nobody listening: refused.
        with pytest.raises(WorkerGone):
            await asyncio.wait_for(channel.Infer(request("next"), timeout=GUARD), GUARD)
        socket_path.unlink(missing_ok=True)
        with pytest.raises(WorkerGone):
            await asyncio.wait_for(
                FrameChannel(socket_path).Infer(request("none"), timeout=GUARD), GUARD
            )
        channel.close()
        gate.open.set()

    asyncio.run(scenario())


def test_no_answer_in_time_is_deadline_exceeded_and_a_late_answer_is_ignored(
    socket_path: Path,
) -> None:
    """The call times out at its deadline; the answer arriving later is dropped without error."""
    errors: list[dict[str, object]] = []

    async def scenario() -> tuple[float, str]:
        record_loop_errors(errors)
        gate = Gate()
        server = FrameServer(gate)
        await server.start(socket_path)
        channel = FrameChannel(socket_path)
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(channel.Infer(request("slow"), timeout=0.2), GUARD)
        took = loop.time() - began
        gate.open.set()  # the late answer is written now
        await asyncio.wait_for(gate.until(answered=1), GUARD)
        await asyncio.sleep(0.05)  # and read by the channel
        # The connection survived and still carries calls.
        reply = await asyncio.wait_for(channel.Infer(request("next"), timeout=GUARD), GUARD)
        assert len(server.connections) == 1
        channel.close()
        await server.stop(0)
        return took, name_of(reply)

    took, name = asyncio.run(scenario())
    assert 0.15 < took < 1.0
    assert name == "next"
    assert errors == []


def test_an_oversized_frame_makes_the_worker_close_the_connection(socket_path: Path) -> None:
    """A length header above MAX_FRAME_BYTES: the server hangs up without reading the payload."""

    async def scenario() -> tuple[bytes | None, int]:
        server = FrameServer(echo)
        await server.start(socket_path)
        frame = HEADER.pack(MAX_FRAME_BYTES + 1, 1, 0) + b"x" * 64
        received = await reply_to_raw_frame(socket_path, frame)
        await asyncio.sleep(0.02)
        connections = len(server.connections)
        await server.stop(0)
        return received, connections

    received, connections = asyncio.run(scenario())
    assert received in (b"", None)
    assert connections == 0


def test_a_frame_of_exactly_the_limit_is_not_refused_for_its_size(socket_path: Path) -> None:
    """The limit is inclusive: a header of MAX_FRAME_BYTES keeps the connection open."""

    async def scenario() -> int:
        server = FrameServer(echo)
        await server.start(socket_path)
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, str(socket_path))
            await loop.sock_sendall(sock, HEADER.pack(MAX_FRAME_BYTES, 1, 0) + b"x" * 64)
            await asyncio.sleep(0.1)
            connections = len(server.connections)
        await server.stop(0)
        return connections

    assert asyncio.run(scenario()) == 1


def test_an_oversized_answer_makes_the_gateway_drop_the_connection(socket_path: Path) -> None:
    """A worker answering with a too-large length header: the channel hangs up, the call is gone."""

    async def scenario() -> bytes:
        seen = asyncio.get_running_loop().create_future()

        async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            length, ident, _ = HEADER.unpack(await reader.readexactly(HEADER.size))
            await reader.readexactly(length)
            writer.write(HEADER.pack(MAX_FRAME_BYTES + 1, ident, 0) + b"y" * 32)
            await writer.drain()
            try:
                rest = await reader.read()  # returns once the channel has closed its end
            except ConnectionResetError:
                rest = b""
            seen.set_result(rest)
            writer.close()

        server = await asyncio.start_unix_server(liar, str(socket_path))
        channel = FrameChannel(socket_path)
        with pytest.raises(WorkerGone):
            await asyncio.wait_for(channel.Infer(request("x"), timeout=GUARD), GUARD)
        rest = await asyncio.wait_for(seen, GUARD)
        channel.close()
        server.close()
        await server.wait_closed()
        return rest

    assert asyncio.run(scenario()) == b""  # nothing more was sent; the channel hung up


def test_undecodable_request_costs_the_peer_its_connection(socket_path: Path) -> None:
    """A request frame whose payload is not an InferRequest: the server aborts the connection."""

    async def scenario() -> bytes | None:
        server = FrameServer(echo)
        await server.start(socket_path)
        garbage = b"\xff\xff\xff\xff"
        received = await reply_to_raw_frame(socket_path, HEADER.pack(len(garbage), 3, 0) + garbage)
        await server.stop(0)
        return received

    assert asyncio.run(scenario()) in (b"", None)


def test_close_fails_waiting_calls_and_every_later_call(socket_path: Path) -> None:
    """``close()``: the calls waiting raise WorkerGone at once, later calls too (no reconnect)."""

    async def scenario() -> None:
        gate = Gate()
        server = FrameServer(gate)
        await server.start(socket_path)
        channel = FrameChannel(socket_path)
        waiting = [
            asyncio.ensure_future(channel.Infer(request(str(i)), timeout=GUARD)) for i in range(3)
        ]
        await asyncio.wait_for(gate.until(arrived=3), GUARD)
        channel.close()
        outcomes = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 1.0)
        assert all(isinstance(outcome, WorkerGone) for outcome in outcomes), outcomes
        with pytest.raises(WorkerGone):
            await asyncio.wait_for(channel.Infer(request("later"), timeout=GUARD), 1.0)
        await asyncio.sleep(0.05)
        assert len(server.connections) == 0  # the channel did not connect again
        gate.open.set()
        await server.stop(1.0)

    asyncio.run(scenario())


def test_close_before_any_call_refuses_calls(socket_path: Path) -> None:
    """A channel closed before it ever connected never connects."""

    async def scenario() -> int:
        server = FrameServer(echo)
        await server.start(socket_path)
        channel = FrameChannel(socket_path)
        channel.close()
        with pytest.raises(WorkerGone):
            await asyncio.wait_for(channel.Infer(request("x"), timeout=GUARD), GUARD)
        connections = len(server.connections)
        await server.stop(0)
        return connections

    assert asyncio.run(scenario()) == 0


def test_channels_reach_a_server_restarted_on_the_same_path(socket_path: Path) -> None:
    """After a worker restarts on the same socket path, a new channel (and the old one) work."""

    async def scenario() -> list[str]:
        first = FrameServer(echo)
        await first.start(socket_path)
        old = FrameChannel(socket_path)
        names = [name_of(await asyncio.wait_for(old.Infer(request("1"), timeout=GUARD), GUARD))]
        await first.stop(0)
        await asyncio.sleep(0.02)  # the old channel sees its connection end
        second = FrameServer(echo)
        await second.start(socket_path)  # replaces the stale socket file
        new = FrameChannel(socket_path)
        names.append(name_of(await asyncio.wait_for(new.Infer(request("2"), timeout=GUARD), GUARD)))
        names.append(name_of(await asyncio.wait_for(old.Infer(request("3"), timeout=GUARD), GUARD)))
        assert len(second.connections) == 2
        new.close()
        old.close()
        await second.stop(0)
        return names

    assert asyncio.run(scenario()) == ["1", "2", "3"]


def test_concurrent_first_calls_share_one_connection(socket_path: Path) -> None:
    """Many calls racing to connect a fresh channel open a single connection."""

    async def scenario() -> int:
        server = FrameServer(echo)
        await server.start(socket_path)
        channel = FrameChannel(socket_path)
        calls = [channel.Infer(request(str(i)), timeout=GUARD) for i in range(20)]
        replies = await asyncio.wait_for(asyncio.gather(*calls), GUARD)
        assert [name_of(r) for r in replies] == [str(i) for i in range(20)]
        connections = len(server.connections)
        channel.close()
        await server.stop(0)
        return connections

    assert asyncio.run(scenario()) == 1


def detached_request(*names: str) -> worker_pb2.InferRequest:
    """Calls with one input each, its bytes left out of the message (as ``call_to_pb`` does)."""
    return worker_pb2.InferRequest(
        calls=[
            worker_pb2.InferCall(request_id=name, inputs=[worker_pb2.Tensor(name="x")])
            for name in names
        ]
    )


def test_large_inputs_arrive_beside_the_message_intact(socket_path: Path) -> None:
    """Inputs sent beside the message reach the handler byte for byte, among small frames.

    One input fits the connection's staging buffer, the other (with the frame
    around it) does not and is read into a buffer of its own.
    """
    rng = np.random.default_rng(0)
    fits = rng.bytes(STAGING_BYTES // 2)
    larger = rng.bytes(STAGING_BYTES + 12345)
    seen: dict[str, bytes] = {}

    async def record(req: worker_pb2.InferRequest, attached: Attached) -> worker_pb2.InferResponse:
        for (call, position), raw in attached.items():
            assert req.calls[call].inputs[position].data == b""
            seen[req.calls[call].request_id] = bytes(raw)
        return answer(req)

    async def scenario() -> list[str]:
        server = FrameServer(record)
        await server.start(socket_path)
        channel = FrameChannel(socket_path)
        try:
            calls = [
                channel.Infer(request("small-1"), timeout=GUARD),
                channel.Infer(
                    detached_request("fits", "larger"),
                    timeout=GUARD,
                    detached=[[(0, fits)], [(0, memoryview(larger))]],
                ),
                channel.Infer(request("small-2"), timeout=GUARD),
            ]
            replies = await asyncio.wait_for(asyncio.gather(*calls), GUARD)
            return [r.results[i].outputs[0].name for r in replies for i in range(len(r.results))]
        finally:
            channel.close()
            await server.stop(0)

    assert asyncio.run(scenario()) == ["small-1", "fits", "larger", "small-2"]
    assert seen == {"fits": fits, "larger": larger}


def _tampered(change: str) -> bytes:
    """A detached-request payload broken in one way."""
    request = detached_request("a")
    pieces = encode_request(1, request, [[(0, b"x" * 8)]])
    payload = b"".join(bytes(piece) for piece in pieces)[HEADER.size :]
    if change == "unknown input":
        return payload.replace(struct.pack(">IIQ", 0, 0, 8), struct.pack(">IIQ", 0, 5, 8))
    if change == "unknown call":
        return payload.replace(struct.pack(">IIQ", 0, 0, 8), struct.pack(">IIQ", 3, 0, 8))
    if change == "overruns":
        return payload.replace(struct.pack(">IIQ", 0, 0, 8), struct.pack(">IIQ", 0, 0, 9))
    if change == "leftover":
        return payload + b"!"
    if change == "truncated":
        return payload[:6]
    request.calls[0].inputs[0].data = b"inline"  # the message carries it as well
    message = request.SerializeToString()
    return (
        b"".join(
            (struct.pack(">I", len(message)), message, struct.pack(">I", 1)),
        )
        + struct.pack(">IIQ", 0, 0, 8)
        + b"x" * 8
    )


@pytest.mark.parametrize(
    "change", ["unknown input", "unknown call", "overruns", "leftover", "truncated", "inline too"]
)
def test_a_detached_table_that_does_not_match_is_refused(change: str) -> None:
    """Every way the table can disagree with the message or the frame raises; none is half-read."""
    with pytest.raises(ValueError, match="detached"):
        decode_request(REQUEST_DETACHED, _tampered(change))


def test_a_well_formed_detached_request_decodes_to_views() -> None:
    """The untampered frame decodes: the input's bytes are a view into the payload."""
    pieces = encode_request(1, detached_request("a"), [[(0, b"x" * 8)]])
    payload = bytearray(b"".join(bytes(piece) for piece in pieces)[HEADER.size :])
    request, attached = decode_request(REQUEST_DETACHED, payload)
    assert request.calls[0].request_id == "a"
    assert bytes(attached[0, 0]) == b"x" * 8
    assert isinstance(attached[0, 0], memoryview)


def test_a_mismatched_detached_table_costs_the_peer_its_connection(socket_path: Path) -> None:
    """Over the socket, such a frame reaches no handler and the server hangs up."""
    called: list[str] = []

    async def handler(req: worker_pb2.InferRequest, attached: Attached) -> worker_pb2.InferResponse:
        called.append(req.calls[0].request_id)
        return answer(req)

    async def scenario() -> bytes | None:
        server = FrameServer(handler)
        await server.start(socket_path)
        payload = _tampered("unknown input")
        frame = HEADER.pack(len(payload), 7, REQUEST_DETACHED) + payload
        received = await reply_to_raw_frame(socket_path, frame)
        await server.stop(0)
        return received

    assert asyncio.run(scenario()) in (b"", None)
    assert called == []


class _Collector(_Reader):
    """A reader that keeps every frame it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[tuple[int, int, bytes]] = []

    def on_frame(self, ident: int, kind: int, payload: bytes | bytearray) -> None:
        self.frames.append((ident, kind, bytes(payload)))


@pytest.mark.parametrize("seed", range(6))
def test_the_reader_reassembles_frames_however_the_stream_is_cut(seed: int) -> None:
    """Empty, small, staging-sized and larger frames, delivered in reads of any size."""
    rng = np.random.default_rng(seed)
    sizes = [0, 1, 100, STAGING_BYTES - HEADER.size, STAGING_BYTES, 3 * STAGING_BYTES + 7]
    sizes += [int(n) for n in rng.integers(0, 2 * STAGING_BYTES, size=12)]
    rng.shuffle(sizes)
    sent = [(ident, ident % 3, rng.bytes(size)) for ident, size in enumerate(sizes)]
    stream = b"".join(HEADER.pack(len(p), ident, kind) + p for ident, kind, p in sent)

    reader = _Collector()
    offset = 0
    while offset < len(stream):
        buffer = reader.get_buffer(-1)
        assert len(buffer) > 0  # never asks the socket to read nothing
        step = min(len(buffer), int(rng.integers(1, 300_000)), len(stream) - offset)
        buffer[:step] = stream[offset : offset + step]
        reader.buffer_updated(step)
        offset += step

    assert reader.frames == sent


class _Holder(_Reader):
    """A reader that keeps every payload it is handed as it came: views, not copies."""

    def __init__(self) -> None:
        super().__init__()
        self.payloads: list[memoryview] = []

    def on_frame(self, ident: int, kind: int, payload: bytes | bytearray | memoryview) -> None:
        del ident, kind
        assert isinstance(payload, memoryview)  # a large frame, read into a buffer of its own
        self.payloads.append(payload)


def _deliver(reader: _Reader, payload: bytes, ident: int) -> None:
    stream = HEADER.pack(len(payload), ident, 0) + payload
    offset = 0
    while offset < len(stream):
        buffer = reader.get_buffer(-1)
        step = min(len(buffer), 200_000, len(stream) - offset)
        buffer[:step] = stream[offset : offset + step]
        reader.buffer_updated(step)
        offset += step


def test_a_large_frame_buffer_is_reused_once_nothing_refers_to_it() -> None:
    """A frame read after the last one was let go lands in that one's memory."""
    rng = np.random.default_rng(1)
    reader = _Holder()
    _deliver(reader, first := rng.bytes(3 * STAGING_BYTES), 1)
    assert reader.payloads[0] == first
    buffer = reader.payloads[0].obj
    reader.payloads.clear()

    _deliver(reader, second := rng.bytes(2 * STAGING_BYTES + 5), 2)

    assert reader.payloads[0].obj is buffer
    assert reader.payloads[0] == second


def test_a_large_frame_still_referred_to_is_never_overwritten() -> None:
    """An input array that outlives its call keeps its bytes: the next frame goes elsewhere."""
    rng = np.random.default_rng(2)
    reader = _Holder()
    _deliver(reader, first := rng.bytes(3 * STAGING_BYTES), 1)
    still_used = np.frombuffer(reader.payloads.pop(), dtype=np.uint8)[10:]

    _deliver(reader, second := rng.bytes(3 * STAGING_BYTES), 2)
    _deliver(reader, third := rng.bytes(3 * STAGING_BYTES), 3)

    assert still_used.tobytes() == first[10:]
    assert [bytes(p) for p in reader.payloads] == [second, third]
    assert reader.payloads[0].obj is not reader.payloads[1].obj


def test_a_frame_larger_than_the_kept_bytes_is_not_kept() -> None:
    """Memory kept for reuse stays bounded: a buffer past ``KEPT_BYTES`` is let go."""
    reader = _Holder()
    size = KEPT_BYTES + 1
    _deliver(reader, b"\x01" * size, 1)
    first = reader.payloads.pop()
    assert first == b"\x01" * size
    buffer = first.obj
    del first

    _deliver(reader, b"\x02" * size, 2)

    assert reader.payloads[0].obj is not buffer
    assert reader.payloads[0] == b"\x02" * size


def _mapping_of(buffer: memoryview) -> dict[str, str]:
    """The ``/proc/self/smaps`` entry of the mapping ``buffer`` starts in: its flags and sizes."""
    address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    lines = Path("/proc/self/smaps").read_text().splitlines()
    for number, line in enumerate(lines):
        span, _, rest = line.partition(" ")
        if "-" not in span or ":" in span:
            continue
        low, high = (int(part, 16) for part in span.split("-"))
        if low <= address < high:
            entry = {"perms": rest.split()[0]}
            for field in lines[number + 1 :]:
                key, _, value = field.partition(":")
                if " " in key or "-" in key:
                    break
                entry[key] = value.strip()
            return entry
    raise AssertionError("no mapping holds the buffer")


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads Linux's /proc")
def test_a_large_frame_is_read_into_private_memory() -> None:
    """Not a shared mapping: shmem is faulted in a page at a time, several times slower."""
    reader = _Holder()
    _deliver(reader, payload := np.random.default_rng(2).bytes(5 * 1024 * 1024), 1)

    assert reader.payloads[0] == payload
    assert _mapping_of(reader.payloads[0])["perms"] == "rw-p"


THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@pytest.mark.skipif(
    not THP.exists() or "[never]" in THP.read_text(),
    reason="this kernel offers no transparent huge pages",
)
def test_a_large_frame_is_read_into_huge_pages() -> None:
    """A 5 MiB frame lands in 2 MiB pages, which the kernel hands out a few faults at a time."""
    reader = _Holder()
    _deliver(reader, np.random.default_rng(3).bytes(5 * 1024 * 1024), 1)

    huge_kib = int(_mapping_of(reader.payloads[0])["AnonHugePages"].split()[0])
    assert huge_kib >= 2048
