"""Keeping REST connections even across the gateway processes.

Gateways share the REST port with ``SO_REUSEPORT``, and the kernel hashes
each new connection to one of them. Over thousands of short connections
that evens out; over the few long-lived keep-alive connections a load
balancer or a client pool opens, it often does not: eight connections split
4/4 only about one time in four, and 6/2 or worse three times in ten. With
keep-alive the split then lasts, and one gateway (one busy thread) carries
most of the calls while the other idles. Envoy's exact connection balancer
answers the same problem between its worker threads.

``ConnectionBalancer`` moves a connection as it is accepted, before a byte
of it is read: when another gateway holds fewer connections than this one,
the socket is passed to it over a Unix datagram socket (``SCM_RIGHTS``) and
this process lets go of its copy. The receiver serves it like one it
accepted and never passes it on again.

Every gateway publishes its open connections, and how many it has taken
from each other gateway, in one small file all of them map: a sender counts
what it sent and is not yet taken as the receiver's too, so a burst of
connections is not all sent to the same gateway before it has served any.
Each row is written by its own gateway only; a torn read can only make one
placement less even. A row carries its writer's pid, so a restarted gateway
starts from zero and what was sent to its predecessor is forgotten. A
gateway that cannot be reached (restarting, stopping) is skipped: the
connection stays where it landed. Only placement is balanced: connections
that close later, or arrive while the other gateway cannot take them, can
leave the split uneven until new ones arrive.
"""

from __future__ import annotations

import array
import mmap
import os
import socket
import struct
from typing import TYPE_CHECKING

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

    from prometheus_client.core import Metric

    Adopt = Callable[[socket.socket, int | None], None]
    """Serves a connection another gateway (the ``int``, when known) passed here."""

log = structlog.get_logger(__name__)

_CELL = struct.Struct("=q")
_SENDER = struct.Struct("=I")
_PID, _OPEN, _HANDED_OFF, _RECEIVED = 0, 1, 2, 3
"""Columns of a gateway's row; ``_RECEIVED + i`` counts connections taken from gateway i."""
_TCP = (socket.AF_INET, socket.AF_INET6)
_FD_SPACE = socket.CMSG_SPACE(4 * array.array("i").itemsize)
"""Room for a few descriptors: one is expected, any more are closed."""


def _fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors an ``SCM_RIGHTS`` message carried."""
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def choose(me: int, counts: Sequence[int], reachable: Sequence[bool]) -> int | None:
    """The gateway a new connection of gateway ``me`` should go to, or None to keep it.

    ``counts`` are every gateway's open connections (not counting the new
    one). The connection moves to the least loaded reachable gateway when
    that one holds fewer than ``me``, so connections opened together end up
    within one of each other. Connections are never moved once served.
    """
    best: int | None = None
    for index, count in enumerate(counts):
        if index != me and reachable[index] and (best is None or count < counts[best]):
            best = index
    if best is None or counts[best] >= counts[me]:
        return None
    return best


class ConnectionBalancer:
    """One gateway's side of the shared connection table and of the hand-offs."""

    def __init__(self, shared_dir: Path, index: int, gateways: int) -> None:
        self.index = index
        self.gateways = gateways
        self._dir = shared_dir
        self._row = _RECEIVED + gateways  # pid, open, handed off, received from each gateway
        size = gateways * self._row * _CELL.size
        fd = os.open(shared_dir / "connections", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self._table = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._sent: dict[int, tuple[int, int, int]] = {}
        """Per gateway: its pid when we sent, connections sent to that incarnation, and
        what its received-from-us counter read before the first of them."""
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)  # noqa: FBT003 - the socket API's own argument
        self._receiver: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._adopt: Adopt | None = None
        for column in range(self._row):
            self._put(index, column, 0)
        self._put(index, _PID, os.getpid())

    # --- the shared table ---------------------------------------------------------------
    def _at(self, row: int, column: int) -> int:
        return (row * self._row + column) * _CELL.size

    def _get(self, row: int, column: int) -> int:
        return int(_CELL.unpack_from(self._table, self._at(row, column))[0])

    def _put(self, row: int, column: int, value: int) -> None:
        _CELL.pack_into(self._table, self._at(row, column), value)

    def _add(self, column: int, value: int) -> None:
        """Change a cell of this gateway's own row (no other process writes it)."""
        self._put(self.index, column, self._get(self.index, column) + value)

    def opened(self) -> None:
        """A connection is now served here."""
        self._add(_OPEN, 1)

    def closed(self) -> None:
        """A connection served here has ended."""
        self._add(_OPEN, -1)

    def published(self) -> list[tuple[int, int, int]]:
        """Every running gateway's (index, open connections, connections handed off)."""
        return [
            (other, self._get(other, _OPEN), self._get(other, _HANDED_OFF))
            for other in range(self.gateways)
            if self._get(other, _PID)
        ]

    def counts(self) -> tuple[list[int], list[bool]]:
        """Every gateway's connections as this one sees them, and which can take one now."""
        counts, reachable = [], []
        for other in range(self.gateways):
            pid = self._get(other, _PID)
            count = self._get(other, _OPEN)
            sent = self._sent.get(other)
            if other != self.index and pid and sent is not None and sent[0] == pid:
                # Sent to it and not yet taken there: count them as its own.
                _, handed, baseline = sent
                taken = self._get(other, _RECEIVED + self.index) - baseline
                count += max(0, handed - taken)
            counts.append(count)
            reachable.append(other == self.index or pid != 0)
        return counts, reachable

    # --- handing connections over -------------------------------------------------------
    def _address(self, index: int) -> Path:
        return self._dir / f"handoff-{index}.sock"

    def hand_off(self, sock: socket.socket | None) -> bool:
        """Pass ``sock`` to a less loaded gateway; False when it stays here."""
        if sock is None:
            return False
        counts, reachable = self.counts()
        target = choose(self.index, counts, reachable)
        if target is None:
            return False
        pid = self._get(target, _PID)
        sent = self._sent.get(target)
        if sent is None or sent[0] != pid:
            # A new incarnation of it, or of us: count from what it has taken so far.
            sent = (pid, 0, self._get(target, _RECEIVED + self.index))
        try:
            # Not socket.send_fds: it drops the address (CPython 3.11).
            self._sender.sendmsg(
                [_SENDER.pack(self.index)],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [sock.fileno()]))],
                0,
                str(self._address(target)),
            )
        except OSError:
            # Restarting, stopping or swamped: it stays where the kernel put it.
            return False
        self._sent[target] = (pid, sent[1] + 1, sent[2])
        self._add(_HANDED_OFF, 1)
        return True

    def start(self, loop: asyncio.AbstractEventLoop, adopt: Adopt) -> None:
        """Take connections other gateways pass here, calling ``adopt`` with each.

        ``adopt(connection, sender)`` serves the connection, then calls ``taken(sender)``.
        """
        path = self._address(self.index)
        path.unlink(missing_ok=True)  # a predecessor's, or one left by a crash
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.setblocking(False)  # noqa: FBT003 - the socket API's own argument
        receiver.bind(str(path))
        self._receiver, self._loop, self._adopt = receiver, loop, adopt
        loop.add_reader(receiver.fileno(), self._receive)

    def _receive(self) -> None:
        receiver, adopt = self._receiver, self._adopt
        if receiver is None or adopt is None:
            return
        while True:
            try:
                # Not socket.recv_fds: it drops the flags (CPython 3.11), close-on-exec too.
                message, ancillary, _, _ = receiver.recvmsg(
                    _SENDER.size, _FD_SPACE, socket.MSG_CMSG_CLOEXEC
                )
            except BlockingIOError:
                return
            except OSError:
                log.warning("cannot receive a handed-over connection", exc_info=True)
                return
            fds = _fds(ancillary)
            if not fds:
                continue
            for extra in fds[1:]:  # one per datagram from a gateway
                os.close(extra)
            try:
                connection = socket.socket(fileno=fds[0])
            except OSError:  # not a socket: nothing a gateway sends
                os.close(fds[0])
                continue
            if connection.type != socket.SOCK_STREAM or connection.family not in _TCP:
                connection.close()
                continue
            sender = _SENDER.unpack(message)[0] if len(message) == _SENDER.size else None
            adopt(connection, sender if sender is not None and sender < self.gateways else None)

    def taken(self, sender: int | None) -> None:
        """A connection ``sender`` passed here is served here now (or could not be)."""
        if sender is not None:
            self._add(_RECEIVED + sender, 1)

    def stop(self) -> None:
        """Take no more connections: others stop choosing this gateway and keep theirs.

        Connections already on their way are still taken, not dropped with the
        socket: the shutdown then treats them like its own (a request already
        sent is answered, an idle connection closed).
        """
        self._put(self.index, _PID, 0)  # others skip a gateway with no pid
        receiver = self._receiver
        try:
            if receiver is not None:
                self._address(self.index).unlink(missing_ok=True)  # new sends now fail
                self._receive()
        finally:
            self._receiver = None
            if receiver is not None:
                if self._loop is not None:
                    self._loop.remove_reader(receiver.fileno())
                receiver.close()
            self._sender.close()


class BalancerCollector(Collector):
    """``/metrics`` families for every gateway's REST connections, read from the shared table."""

    def __init__(self, balancer: ConnectionBalancer) -> None:
        self._balancer = balancer

    def collect(self) -> Iterator[Metric]:
        """Open connections per gateway, and how many each passed to another."""
        rows = self._balancer.published()
        opened = GaugeMetricFamily(
            "sealserve_http_connections",
            "Open REST connections per gateway process.",
            labels=["gateway"],
        )
        moved = CounterMetricFamily(
            "sealserve_http_connections_handed_over",
            "REST connections a gateway passed to a less loaded one as it accepted them.",
            labels=["gateway"],
        )
        for index, count, handed_off in rows:
            opened.add_metric([str(index)], count)
            moved.add_metric([str(index)], handed_off)
        yield opened
        yield moved
