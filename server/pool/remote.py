"""Workers on other hosts: ``sealserve worker`` over TCP with mutual TLS.

A remote worker is the same process as a local one (``server.pool.worker``),
listening on ``host:port`` instead of a Unix socket. Whoever can reach a
worker can run any tenant's model on it, so both ends prove who they are:
the worker accepts only clients whose certificate chains to its CA, and the
gateway accepts only a worker whose certificate chains to its CA and names
the host it dialled. There is no plaintext TCP mode.

To the pool a ``RemoteWorker`` looks like a ``WorkerProcess`` it cannot
start or stop: "spawning" opens the channel, "exited" means its connection
failed (or pings went unanswered), and a restart is a reconnect with the
same backoff as a local worker's restart. Calls go over the worker's gRPC
``Infer``; the lighter framed connection of local workers is a Unix-socket
optimisation only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from protos import worker_pb2_grpc
from server.pool.process import WorkerStartError, ping_until_ready
from server.pool.worker import GRPC_OPTIONS

if TYPE_CHECKING:
    from pathlib import Path

REMOTE_CHANNEL_OPTIONS = [
    *GRPC_OPTIONS,
    # Notice a worker host that went away without closing the connection.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # The pool paces reconnects itself (``RESTART_BACKOFF``); gRPC's own
    # default (1 s doubling to 120 s) would keep a worker that is back unused.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


class TlsFilesError(Exception):
    """A certificate, key or CA file cannot be read."""


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """The PEM bytes of one side's certificate, its key and the CA it trusts."""

    certificate: bytes
    key: bytes = field(repr=False)
    ca: bytes

    @classmethod
    def read(cls, files: tuple[Path, Path, Path]) -> TlsMaterial:
        """Read (certificate, key, CA); ``TlsFilesError`` names the file that failed."""
        contents = []
        for what, path in zip(("certificate", "private key", "CA certificate"), files, strict=True):
            try:
                data = path.read_bytes()
            except OSError as exc:
                msg = f"cannot read the worker TLS {what} {path}: {exc.strerror}"
                raise TlsFilesError(msg) from None
            if b"-----BEGIN " not in data:
                msg = f"the worker TLS {what} {path} is not a PEM file"
                raise TlsFilesError(msg)
            contents.append(data)
        return cls(*contents)

    def server_credentials(self) -> grpc.ServerCredentials:
        """A worker's: its certificate, and a client certificate required."""
        return grpc.ssl_server_credentials(
            [(self.key, self.certificate)], root_certificates=self.ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """A gateway's: the CA that signs workers' certificates, and its own certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.certificate
        )


class RemoteWorker:
    """A ``sealserve worker`` on another host, as one slot of the pool."""

    process = None
    pid = None
    """No local process: the host's own supervisor (systemd, Kubernetes) restarts it."""
    gone = "connection failed"
    """Why the pool marks it dead when ``exited()``."""

    def __init__(self, *, index: int, address: str, tls: TlsMaterial) -> None:
        self.index = index
        self.address = address
        self._credentials = tls.channel_credentials()
        self.channel: grpc.aio.Channel | None = None
        self.stub: worker_pb2_grpc.WorkerStub | None = None
        self.instance_id: str | None = None

    @property
    def inference(self) -> worker_pb2_grpc.WorkerStub | None:
        """What calls go through: the gRPC stub."""
        return self.stub

    def spawn(self, settings_line: bytes) -> None:
        """Open the channel (the worker runs with its own settings; ``settings_line`` is unused)."""
        del settings_line
        self.channel = grpc.aio.secure_channel(
            self.address, self._credentials, REMOTE_CHANNEL_OPTIONS
        )
        self.stub = worker_pb2_grpc.WorkerStub(self.channel)

    async def wait_ready(self, timeout: float) -> str:
        """Wait until the worker answers ``Ping`` over TLS; returns its instance id."""
        if self.stub is None:
            msg = f"remote worker {self.address} has no channel"
            raise WorkerStartError(msg)
        self.instance_id = await ping_until_ready(
            self.stub, timeout=timeout, attempt=1.0, what=f"remote worker {self.address}"
        )
        return self.instance_id

    def exited(self) -> bool:
        """True when the connection failed: the worker is gone or unreachable."""
        if self.channel is None:
            return True
        state = self.channel.get_state(try_to_connect=False)
        return state in (
            grpc.ChannelConnectivity.TRANSIENT_FAILURE,
            grpc.ChannelConnectivity.SHUTDOWN,
        )

    def terminate(self) -> None:
        """Nothing to signal: the pool stops sending, the worker keeps running."""

    def kill(self) -> None:
        """Nothing to signal (see ``terminate``)."""

    async def wait_exit(self, timeout: float) -> bool:
        """There is no local process to wait for."""
        del timeout
        return True

    async def close(self) -> None:
        """Close the channel."""
        channel, self.channel, self.stub = self.channel, None, None
        if channel is not None:
            await channel.close()
