"""Workers on other hosts: ``sealserve worker`` over TCP with mutual TLS.

A remote worker is the same process as a local one (``server.pool.worker``),
listening on ``host:port`` instead of a Unix socket. Whoever can reach a
worker can run any tenant's model on it, so both ends prove who they are:
the worker accepts only clients whose certificate chains to its CA, and the
gateway accepts only a worker whose certificate chains to its CA and names
the host it dialled. There is no plaintext TCP mode.

Certificates are renewed in place (cert-manager, a secret volume's symlink
swap, a cron job), so neither end needs a restart for it: a worker looks at
its files again at every TLS handshake, a gateway at every (re)connect, and
connections already open keep the certificates they were made with.

To the pool a ``RemoteWorker`` looks like a ``WorkerProcess`` it cannot
start or stop: "spawning" opens the channel, "exited" means its connection
failed (or pings went unanswered), and a restart is a reconnect with the
same backoff as a local worker's restart. Calls go over the worker's gRPC
``Infer``; the lighter framed connection of local workers is a Unix-socket
optimisation only.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from protos import worker_pb2_grpc
from server.pool.messages import attach
from server.pool.process import WorkerStartError, ping_until_ready
from server.pool.worker import GRPC_OPTIONS

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path
    from typing import Any

    from protos import worker_pb2
    from server.pool.messages import Detached

log = structlog.get_logger(__name__)
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


class GrpcInference:
    """A remote worker's ``Infer`` in the shape the coalescer sends through.

    The framed hop (``FrameChannel``) sends large inputs beside the message;
    over gRPC they go back into it.
    """

    def __init__(self, stub: worker_pb2_grpc.WorkerStub) -> None:
        self._stub = stub

    def Infer(  # noqa: N802 - the worker method's name, as on the gRPC stub
        self, request: worker_pb2.InferRequest, timeout: float, detached: Sequence[Detached]
    ) -> Any:
        """The stub's call (awaitable), with the detached bytes put back in ``request``."""
        attach(request, detached)
        return self._stub.Infer(request, timeout=timeout)


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
        material = cls(*contents)
        material.check(files)
        return material

    def check(self, files: tuple[Path, Path, Path]) -> None:
        """Parse all three; ``TlsFilesError`` if one does not parse or the key is not the cert's.

        A renewal writes the certificate and the key one after the other; in
        between they do not match, and gRPC would fail every handshake.
        """
        cert_file, key_file, ca_file = files
        try:
            certificate = x509.load_pem_x509_certificate(self.certificate)
        except ValueError:
            msg = f"the worker TLS certificate {cert_file} is not a valid certificate"
            raise TlsFilesError(msg) from None
        try:
            key = load_pem_private_key(self.key, password=None)
        except (ValueError, TypeError):  # TypeError: the key is encrypted
            msg = f"the worker TLS private key {key_file} is not an unencrypted private key"
            raise TlsFilesError(msg) from None
        try:
            x509.load_pem_x509_certificates(self.ca)
        except ValueError:
            msg = f"the worker TLS CA certificate {ca_file} is not a valid certificate"
            raise TlsFilesError(msg) from None
        der = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        if key.public_key().public_bytes(*der) != certificate.public_key().public_bytes(*der):
            msg = f"the worker TLS certificate {cert_file} is not for the private key {key_file}"
            raise TlsFilesError(msg)

    def server_configuration(self) -> grpc.ServerCertificateConfiguration:
        """A worker's: its certificate, and the CA a client's must chain to."""
        return grpc.ssl_server_certificate_configuration(
            [(self.key, self.certificate)], root_certificates=self.ca
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """A gateway's: the CA that signs workers' certificates, and its own certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.certificate
        )


class TlsFiles:
    """One side's certificate, key and CA files, read again when they change.

    ``current()`` compares the files' identity and times with the last
    reading's (one ``stat`` each) and reads them only when those differ. New
    files are taken once all three parse and the key is the certificate's;
    until then the previous material stays in use and the problem is logged
    once per change. Safe from any thread: gRPC asks from its own.
    """

    def __init__(self, files: tuple[Path, Path, Path]) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._seen = self._stamp()
        self.material = TlsMaterial.read(files)
        """What new connections use (``TlsFilesError`` at start if the files are bad)."""

    def _stamp(self) -> tuple[tuple[int, ...] | None, ...]:
        stamps: list[tuple[int, ...] | None] = []
        for path in self.files:
            try:
                info = path.stat()  # follows a secret volume's symlinks to the real file
            except OSError:
                stamps.append(None)
            else:
                stamps.append((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns))
        return tuple(stamps)

    def current(self) -> tuple[TlsMaterial, bool]:
        """The material to use now, and whether it changed since the last call."""
        with self._lock:
            stamp = self._stamp()
            if stamp == self._seen:
                return self.material, False
            self._seen = stamp
            try:
                material = TlsMaterial.read(self.files)
            except TlsFilesError as exc:
                log.warning(
                    "worker TLS files changed but cannot be used; keeping the previous ones",
                    reason=str(exc),
                )
                return self.material, False
            if material == self.material:
                return self.material, False
            self.material = material
        log.info("worker TLS files reloaded", certificate=str(self.files[0]))
        return material, True

    def server_credentials(self) -> grpc.ServerCredentials:
        """A worker's: a client certificate required, the files looked at on each handshake."""

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            material, changed = self.current()
            return material.server_configuration() if changed else None

        return grpc.dynamic_ssl_server_credentials(
            self.material.server_configuration(), fetch, require_client_authentication=True
        )


class RemoteWorker:
    """A ``sealserve worker`` on another host, as one slot of the pool."""

    process = None
    pid = None
    """No local process: the host's own supervisor (systemd, Kubernetes) restarts it."""
    gone = "connection failed"
    """Why the pool marks it dead when ``exited()``."""

    def __init__(self, *, index: int, address: str, tls: TlsFiles) -> None:
        self.index = index
        self.address = address
        self._tls = tls
        self.channel: grpc.aio.Channel | None = None
        self.stub: worker_pb2_grpc.WorkerStub | None = None
        self.instance_id: str | None = None

    @property
    def inference(self) -> GrpcInference | None:
        """What calls go through: the gRPC stub's ``Infer``."""
        return None if self.stub is None else GrpcInference(self.stub)

    def spawn(self, settings_line: bytes) -> None:
        """Open the channel with the TLS files as they are now.

        The worker runs with its own settings; ``settings_line`` is unused.
        """
        del settings_line
        material, _ = self._tls.current()
        self.channel = grpc.aio.secure_channel(
            self.address, material.channel_credentials(), REMOTE_CHANNEL_OPTIONS
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
