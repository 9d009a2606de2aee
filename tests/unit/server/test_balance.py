"""Connections handed between gateways: the choice, the shared counts, and real sockets passed."""

from __future__ import annotations

import array
import asyncio
import os
import socket
import struct
from typing import TYPE_CHECKING

import pytest

from server.rest.balance import BalancerCollector, ConnectionBalancer, choose

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.mark.parametrize(
    ("me", "counts", "reachable", "expected"),
    [
        (0, [0, 0], [True, True], None),  # even: stay
        (0, [1, 0], [True, True], 1),  # one more here: move
        (1, [3, 5], [True, True], 0),
        (0, [2, 1], [True, True], 1),  # afterwards 2 and 2
        (0, [1, 0], [True, False], None),  # the other is not running
        (0, [4, 3, 1], [True, True, True], 2),  # the least loaded of several
        (2, [1, 1, 1], [True, True, True], None),
    ],
)
def test_a_connection_moves_only_to_a_gateway_holding_fewer(
    me: int, counts: list[int], reachable: list[bool], expected: int | None
) -> None:
    """Kept unless a reachable gateway holds fewer than this one; then the least loaded."""
    assert choose(me, counts, reachable) == expected


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[ConnectionBalancer, ConnectionBalancer]]:
    """Gateways 0 and 1 of two, sharing ``tmp_path`` as their shared directory."""
    first = ConnectionBalancer(tmp_path, 0, 2)
    second = ConnectionBalancer(tmp_path, 1, 2)
    yield first, second
    first.stop()
    second.stop()


def _connection(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    """A real loopback TCP connection: (client end, accepted end)."""
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    return client, accepted


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening loopback TCP socket."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock


def test_a_handed_over_socket_is_the_same_connection_at_the_other_gateway(
    pair: tuple[ConnectionBalancer, ConnectionBalancer], listener: socket.socket
) -> None:
    """The receiver gets the accepted socket itself; the sender's copy can close safely."""
    first, second = pair
    adopted: list[tuple[socket.socket, int | None]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        second.start(loop, lambda sock, sender: adopted.append((sock, sender)))
        first.opened()  # gateway 0 holds one connection, gateway 1 none
        client, accepted = _connection(listener)
        with client, accepted:
            assert first.hand_off(accepted)
            accepted.close()  # what the protocol does with its copy
            for _ in range(100):
                if adopted:
                    break
                await asyncio.sleep(0.01)
            assert [sender for _, sender in adopted] == [0]
            with adopted[0][0] as moved:
                assert not moved.get_inheritable()  # no child process gets a tenant's connection
                client.sendall(b"ping")
                assert moved.recv(4) == b"ping"
                moved.sendall(b"pong")
                assert client.recv(4) == b"pong"

    asyncio.run(scenario())
    # On its way until gateway 1 says it took it; counted twice for a moment, never not at all.
    assert first.counts() == ([1, 1], [True, True])
    second.opened()
    assert first.counts() == ([1, 2], [True, True])
    second.taken(0)
    assert first.counts() == ([1, 1], [True, True])
    assert sorted(first.published()) == [(0, 1, 1), (1, 1, 0)]


def test_connections_on_their_way_count_for_the_receiver(
    pair: tuple[ConnectionBalancer, ConnectionBalancer], listener: socket.socket
) -> None:
    """A burst is not all sent to a gateway that has not yet taken the first of it."""
    first, second = pair
    for _ in range(4):
        first.opened()

    async def burst() -> list[bool]:
        second.start(asyncio.get_running_loop(), lambda sock, _: sock.close())
        # Five hand-offs with no turn of the loop between them: gateway 1 takes none meanwhile.
        ends = [end for _ in range(5) for end in _connection(listener)]
        try:
            return [first.hand_off(accepted) for accepted in ends[1::2]]
        finally:
            for end in ends:
                end.close()

    # 4 against 0, 1, 2 and 3: each moves; at 4 against 4 the fifth stays.
    assert asyncio.run(burst()) == [True, True, True, True, False]


def test_a_gateway_not_taking_connections_is_skipped(
    pair: tuple[ConnectionBalancer, ConnectionBalancer], listener: socket.socket, tmp_path: Path
) -> None:
    """Not listening yet, or stopped: the connection stays; a restart starts from zero."""
    first, second = pair
    first.opened()
    client, accepted = _connection(listener)
    with client, accepted:
        assert not first.hand_off(accepted)  # gateway 1 runs but does not take connections yet
        second.stop()
        assert first.counts()[1] == [True, False]
        assert not first.hand_off(accepted)
        restarted = ConnectionBalancer(tmp_path, 1, 2)
        try:
            assert first.counts() == ([1, 0], [True, True])
        finally:
            restarted.stop()
    assert [row for row in first.published() if row[0] == 0] == [(0, 1, 0)]


def test_metrics_report_every_gateways_connections(
    pair: tuple[ConnectionBalancer, ConnectionBalancer],
) -> None:
    """Either gateway's scrape shows both gateways' open connections and hand-offs."""
    first, second = pair
    first.opened()
    first.opened()
    second.opened()
    for balancer in pair:
        families = {family.name: family for family in BalancerCollector(balancer).collect()}
        opened = {
            sample.labels["gateway"]: sample.value
            for sample in families["sealserve_http_connections"].samples
        }
        assert opened == {"0": 2.0, "1": 1.0}
        handed = families["sealserve_http_connections_handed_over"].samples
        assert {sample.labels["gateway"] for sample in handed} == {"0", "1"}


def test_a_restarted_sender_counts_only_its_own_connections_on_their_way(
    pair: tuple[ConnectionBalancer, ConnectionBalancer], listener: socket.socket, tmp_path: Path
) -> None:
    """What gateway 1 took from gateway 0's predecessor does not cancel the new one's sends."""
    first, second = pair

    async def scenario() -> list[bool]:
        second.start(asyncio.get_running_loop(), lambda sock, _: sock.close())
        first.opened()
        client, accepted = _connection(listener)
        with client, accepted:
            assert first.hand_off(accepted)
        await asyncio.sleep(0.1)  # gateway 1 receives it (it is taken either way below)
        second.opened()
        second.taken(0)
        restarted = ConnectionBalancer(tmp_path, 0, 2)  # gateway 0 again, after a crash
        for _ in range(3):
            restarted.opened()
        ends = [end for _ in range(3) for end in _connection(listener)]
        try:
            # 3 against 1, then 2, then 3: two move.
            return [restarted.hand_off(accepted) for accepted in ends[1::2]]
        finally:
            restarted.stop()
            for end in ends:
                end.close()

    assert asyncio.run(scenario()) == [True, True, False]


def test_connections_on_their_way_when_a_gateway_stops_are_still_taken(
    pair: tuple[ConnectionBalancer, ConnectionBalancer], listener: socket.socket
) -> None:
    """``stop`` takes what is queued for it instead of letting the kernel close it."""
    first, second = pair
    adopted: list[socket.socket] = []

    async def scenario() -> None:
        second.start(asyncio.get_running_loop(), lambda sock, _: adopted.append(sock))
        first.opened()
        client, accepted = _connection(listener)
        with client, accepted:
            assert first.hand_off(accepted)  # queued: the loop gets no turn before the stop
            accepted.close()
            second.stop()
            assert len(adopted) == 1
            with adopted[0] as moved:
                client.sendall(b"still there")
                assert moved.recv(11) == b"still there"
        assert first.counts()[1] == [True, False]

    asyncio.run(scenario())


def test_what_is_not_a_tcp_connection_is_dropped(
    pair: tuple[ConnectionBalancer, ConnectionBalancer], listener: socket.socket, tmp_path: Path
) -> None:
    """A datagram without a socket, or with another kind of file, is closed and skipped."""
    _, second = pair
    adopted: list[tuple[socket.socket, int | None]] = []
    read_end, write_end = os.pipe()
    unix_a, unix_b = socket.socketpair()
    unix_b.settimeout(2)

    async def scenario() -> None:
        second.start(
            asyncio.get_running_loop(), lambda sock, sender: adopted.append((sock, sender))
        )
        address = str(tmp_path / "handoff-1.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"no fd", address)
            for fd in (read_end, unix_a.fileno()):
                rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
                sender.sendmsg([struct.pack("=I", 7)], rights, 0, address)
            client, accepted = _connection(listener)
            with client, accepted:
                rights = [
                    (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [accepted.fileno()]))
                ]
                sender.sendmsg([struct.pack("=I", 99)], rights, 0, address)  # no such gateway
                for _ in range(100):
                    if adopted:
                        break
                    await asyncio.sleep(0.01)
        assert [sender for _, sender in adopted] == [None]  # the TCP socket, from nobody known
        adopted[0][0].close()

    try:
        asyncio.run(scenario())
        os.close(read_end)
        unix_a.close()
        # The gateway closed its copies: nobody holds the read end or the peer socket now.
        with pytest.raises(BrokenPipeError):
            os.write(write_end, b"x")
        assert unix_b.recv(1) == b""
    finally:
        os.close(write_end)
        unix_b.close()
