"""A gateway with no local worker serves through a ``sealserve worker`` over mutual TLS."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import subprocess
import time
from typing import TYPE_CHECKING

import grpc
import httpx
import numpy as np
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from protos import worker_pb2, worker_pb2_grpc
from server.pool.messages import DETACHED_BYTES
from tests.digits import digits_test_split, in_process_probabilities
from tests.functional.conftest import token_for
from tests.servers import SEALSERVE, cli, free_port, server_env, start_server, wait_for
from tests.tls import Authority

if TYPE_CHECKING:
    from pathlib import Path

    from tests.tls import Issued


def tls_env(issued: Issued) -> dict[str, str]:
    """The three ``SEALSERVE_WORKER_TLS_*`` variables for one side."""
    return {
        "SEALSERVE_WORKER_TLS_CERT": str(issued.cert),
        "SEALSERVE_WORKER_TLS_KEY": str(issued.key),
        "SEALSERVE_WORKER_TLS_CA": str(issued.ca),
    }


class RemoteWorkerProcess:
    """``sealserve worker --listen 127.0.0.1:PORT``, restartable on the same port."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait until it listens."""
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(  # noqa: S603 - our own console script
                [SEALSERVE, "worker", "--listen", f"127.0.0.1:{self.port}"],
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        wait_for(
            lambda: b"worker listening" in self.log.read_bytes(), 30, "the remote worker listening"
        )

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Signal it and wait; its exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=20)


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """A demo data directory, a CA, one remote worker and a gateway with no local worker."""
    data_dir = tmp_path_factory.mktemp("remote")
    authority = Authority.create(data_dir / "tls")
    worker_cert = authority.issue("worker", server=True)
    gateway_cert = authority.issue("gateway", server=False)
    base = server_env(data_dir, SEALSERVE_LOG_LEVEL="INFO")
    cli("init", "--demo", env=base)
    port = free_port()
    worker = RemoteWorkerProcess({**base, **tls_env(worker_cert)}, port, data_dir / "worker.log")
    # The gateway first: it must start with its remote worker not yet reachable.
    gateway = start_server(
        {
            **base,
            **tls_env(gateway_cert),
            "SEALSERVE_WORKERS": "0",
            "SEALSERVE_REMOTE_WORKERS": json.dumps([f"127.0.0.1:{port}"]),
        },
        data_dir / "gateway.log",
    )
    worker.start()
    demo = json.loads((data_dir / "demo-client.json").read_text())
    token = token_for(gateway.url, demo["client_id"], demo["client_secret"])
    yield gateway, worker, token, authority
    gateway.stop()
    worker.stop()


def infer(url: str, token: str, x: np.ndarray, timeout: float = 30) -> httpx.Response:
    """One REST v2 call of the demo model on the rows ``x``."""
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }
    return httpx.post(
        f"{url}/v2/models/digits/infer",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
    )


def probabilities(reply: httpx.Response) -> np.ndarray:
    """The ``probabilities`` output of a v2 reply."""
    assert reply.status_code == 200, reply.text
    (output,) = reply.json()["outputs"]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def local_workers_of(pid: int) -> list[int]:
    """Worker processes a gateway spawned itself."""
    found = subprocess.run(  # noqa: S603 - fixed arguments
        ["pgrep", "-P", str(pid), "-f", "server.pool.worker"],  # noqa: S607 - procps
        capture_output=True,
        text=True,
        check=False,
    )
    return [int(p) for p in found.stdout.split()]


def test_calls_are_answered_by_the_remote_worker(remote) -> None:
    """The answers match LiteRT in this process, and the gateway runs no worker of its own.

    The worker started after the gateway, so this also shows the gateway
    connecting to it in the background.
    """
    gateway, worker, token, _ = remote
    x, _ = digits_test_split()
    expected = in_process_probabilities()
    np.testing.assert_allclose(
        probabilities(infer(gateway.url, token, x[:16])), expected[:16], atol=1e-5
    )
    np.testing.assert_allclose(
        probabilities(infer(gateway.url, token, x[16:17])), expected[16:17], atol=1e-5
    )
    # 450 rows (115 KB) is past the size the local hop sends beside the message;
    # over gRPC those bytes go back into it.
    assert x.nbytes >= DETACHED_BYTES
    np.testing.assert_allclose(probabilities(infer(gateway.url, token, x)), expected, atol=1e-5)
    assert local_workers_of(gateway.process.pid) == []

    def up() -> list[str]:
        metrics = httpx.get(f"{gateway.url}/metrics").text
        return [line for line in metrics.splitlines() if line.startswith("sealserve_worker_up{")]

    # /metrics reads the status the pool refreshes each second.
    wait_for(lambda: up() == ['sealserve_worker_up{worker="0"} 1.0'], 10, "the remote worker up")
    assert up() == ['sealserve_worker_up{worker="0"} 1.0']
    info = f'sealserve_worker_info{{address="127.0.0.1:{worker.port}",location="remote",worker="0"}} 1.0'
    assert info in httpx.get(f"{gateway.url}/metrics").text


async def _ping(port: int, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    address = f"127.0.0.1:{port}"
    channel = (
        grpc.aio.insecure_channel(address)
        if credentials is None
        else grpc.aio.secure_channel(address, credentials)
    )
    async with channel:
        try:
            await worker_pb2_grpc.WorkerStub(channel).Ping(worker_pb2.PingRequest(), timeout=3)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_the_worker_answers_only_clients_with_a_certificate_from_its_ca(remote, tmp_path) -> None:
    """No client certificate, one from another CA, or plaintext: no answer; the gateway's: one."""
    _, worker, _, authority = remote
    ca = authority.ca_file.read_bytes()
    ours = authority.issue("another-gateway", server=False)
    stranger = Authority.create(tmp_path / "other", name="other-ca").issue("intruder", server=False)

    def credentials(cert: Path | None, key: Path | None) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=key.read_bytes() if key else None,
            certificate_chain=cert.read_bytes() if cert else None,
        )

    assert asyncio.run(_ping(worker.port, credentials(ours.cert, ours.key))) is grpc.StatusCode.OK
    assert asyncio.run(_ping(worker.port, credentials(None, None))) is grpc.StatusCode.UNAVAILABLE
    refused = asyncio.run(_ping(worker.port, credentials(stranger.cert, stranger.key)))
    assert refused is grpc.StatusCode.UNAVAILABLE
    assert asyncio.run(_ping(worker.port, None)) is grpc.StatusCode.UNAVAILABLE


def test_a_remote_worker_that_comes_back_is_used_again(remote) -> None:
    """kill -9 of the remote worker, then a new one on the same port: calls succeed again."""
    gateway, worker, token, _ = remote
    x, _ = digits_test_split()
    expected = in_process_probabilities()
    worker.stop(signal.SIGKILL)
    restarted = time.monotonic()
    worker.start()
    # A call sent now waits for the pool to notice and reconnect, within its timeout.
    reply = infer(gateway.url, token, x[:4])
    np.testing.assert_allclose(probabilities(reply), expected[:4], atol=1e-5)
    assert time.monotonic() - restarted < 25

    def reconnected() -> bool:
        metrics = httpx.get(f"{gateway.url}/metrics").text
        return 'sealserve_worker_up{worker="0"} 1.0' in metrics

    wait_for(reconnected, 15, "the remote worker reported up")


def test_ctrl_c_drains_and_stops_a_worker_run_on_its_own(remote, tmp_path) -> None:
    """Unlike a pool's worker (which ignores SIGINT), ``sealserve worker`` stops on Ctrl-C."""
    _, worker, _, _ = remote
    other = RemoteWorkerProcess(worker.env, free_port(), tmp_path / "other.log")
    other.start()
    assert other.stop(signal.SIGINT) == 0
    assert b"worker stopping" in other.log.read_bytes()


def said(result: subprocess.CompletedProcess[str]) -> str:
    """What a command printed, with the console's line wrapping undone."""
    return " ".join((result.stderr + result.stdout).split())


def test_the_worker_command_refuses_to_listen_without_mutual_tls(tmp_path) -> None:
    """No TLS files, a missing file, or a bad address: a one-line error and exit code 1."""
    env = server_env(tmp_path)
    plain = cli("worker", "--listen", "127.0.0.1:1", env=env, check=False)
    assert plain.returncode == 1
    assert "needs mutual TLS" in said(plain)
    assert "Traceback" not in plain.stderr

    authority = Authority.create(tmp_path / "tls")
    issued = authority.issue("worker", server=True)
    missing = {**env, **tls_env(issued), "SEALSERVE_WORKER_TLS_KEY": str(tmp_path / "none.key")}
    gone = cli("worker", "--listen", "127.0.0.1:1", env=missing, check=False)
    assert gone.returncode == 1
    assert f"cannot read the worker TLS private key {tmp_path / 'none.key'}" in said(gone)

    bad = cli("worker", "--listen", "nowhere", env={**env, **tls_env(issued)}, check=False)
    assert bad.returncode == 1
    assert "'nowhere' is not host:port" in said(bad)


def test_serve_refuses_remote_workers_without_mutual_tls(tmp_path) -> None:
    """Remote workers listed but no TLS files: the settings error names what to set."""
    env = server_env(tmp_path, SEALSERVE_REMOTE_WORKERS='["10.0.0.5:8100"]')
    result = cli("serve", env=env, check=False)
    assert result.returncode == 1
    output = said(result)
    assert "remote workers need mutual TLS" in output
    assert "SEALSERVE_WORKER_TLS_CERT" in output
    assert "Traceback" not in output


def test_calls_on_a_hung_remote_worker_are_retried_on_another(remote, tmp_path) -> None:
    """SIGSTOP one of two remote workers under load: its calls finish on the other, none fail."""
    _, worker, token, authority = remote
    base = {k: v for k, v in worker.env.items() if not k.startswith("SEALSERVE_WORKER_TLS")}
    workers = []
    for name in ("hang-a", "hang-b"):
        issued = authority.issue(name, server=True)
        one = RemoteWorkerProcess(
            {**base, **tls_env(issued)}, free_port(), tmp_path / f"{name}.log"
        )
        one.start()
        workers.append(one)
    client = authority.issue("gateway-two", server=False)
    second = start_server(
        {
            **base,
            **tls_env(client),
            "SEALSERVE_WORKERS": "0",
            "SEALSERVE_INFER_TIMEOUT_SECONDS": "20",
            "SEALSERVE_REMOTE_WORKERS": json.dumps([f"127.0.0.1:{w.port}" for w in workers]),
        },
        tmp_path / "gateway-two.log",
    )
    x, _ = digits_test_split()
    expected = in_process_probabilities()
    try:
        np.testing.assert_allclose(
            probabilities(infer(second.url, token, x[:2])), expected[:2], atol=1e-5
        )

        def holder() -> int | None:
            metrics = httpx.get(f"{second.url}/metrics").text
            for index in (0, 1):
                if f'sealserve_worker_models{{worker="{index}"}} 1.0' in metrics:
                    return index
            return None

        # Hang the worker that holds the model: affinity sends the calls to it.
        found = wait_for(lambda: [i for i in (holder(),) if i is not None], 10, "a model holder")
        hung = workers[found[0]]
        assert hung.process is not None
        hung.process.send_signal(signal.SIGSTOP)
        try:

            async def load() -> list[httpx.Response]:
                async with httpx.AsyncClient(timeout=30) as http:
                    body = {
                        "inputs": [
                            {
                                "name": "input",
                                "shape": [1, 64],
                                "datatype": "FP32",
                                "data": x[0].tolist(),
                            }
                        ]
                    }
                    headers = {"Authorization": f"Bearer {token}"}
                    return await asyncio.gather(
                        *(
                            http.post(
                                f"{second.url}/v2/models/digits/infer", json=body, headers=headers
                            )
                            for _ in range(16)
                        )
                    )

            replies = asyncio.run(load())
        finally:
            hung.process.send_signal(signal.SIGCONT)
        assert [r.status_code for r in replies] == [200] * 16, [r.text for r in replies]
        log = second.log.read_bytes()
        assert b"missed 3 pings" in log
        assert b"retrying on another" in log

        # Once it runs again it is reconnected, and /metrics (refreshed each second
        # by a loop that closing its old channel must not end) says so.
        index = found[0]

        def back() -> bool:
            text = httpx.get(f"{second.url}/metrics").text
            return (
                f'sealserve_worker_up{{worker="{index}"}} 1.0' in text
                and f'sealserve_worker_restarts_total{{worker="{index}"}} 1.0' in text
            )

        wait_for(back, 30, "the hung worker reconnected and reported")
    finally:
        second.stop()
        for one in workers:
            one.stop()


def _install(issued: Issued, files: tuple[Path, Path, Path], *, ca: bytes | None = None) -> None:
    """Renew in place, as cert-manager or a cron job would: each file replaced atomically."""
    contents = (issued.cert.read_bytes(), issued.key.read_bytes(), ca or issued.ca.read_bytes())
    for path, data in zip(files, contents, strict=True):
        staged = path.with_name(path.name + ".new")
        staged.write_bytes(data)
        staged.replace(path)


def _presented(port: int, client: Issued, ca: bytes) -> str:
    """The common name of the certificate the worker shows a new TLS connection."""
    context = ssl.create_default_context(cadata=ca.decode())
    context.load_cert_chain(client.cert, client.key)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    name = x509.load_der_x509_certificate(der).subject
    return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _credentials(client: Issued, ca: bytes) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=client.key.read_bytes(),
        certificate_chain=client.cert.read_bytes(),
    )


def test_renewed_certificates_and_a_new_ca_need_no_restart(tmp_path) -> None:
    """Both ends take renewed files in place; a CA change goes through with no call lost.

    The worker shows a renewed certificate to the next connection; once it
    trusts only a new CA, the old CA's clients are refused; and the gateway,
    given a certificate from the new CA, presents it when it next connects.
    Neither process restarts for any of it (the worker's one restart below
    is only there to make the gateway connect again).
    """
    old, new = (
        Authority.create(tmp_path / "old", "old-ca"),
        Authority.create(tmp_path / "new", "new-ca"),
    )
    worker_files = tuple(tmp_path / name for name in ("worker.crt", "worker.key", "worker-ca.crt"))
    gateway_files = tuple(tmp_path / name for name in ("gw.crt", "gw.key", "gw-ca.crt"))
    _install(old.issue("worker-1", server=True), worker_files)
    _install(old.issue("gateway-1", server=False), gateway_files)
    files_env = dict(
        zip(
            ("SEALSERVE_WORKER_TLS_CERT", "SEALSERVE_WORKER_TLS_KEY", "SEALSERVE_WORKER_TLS_CA"),
            map(str, worker_files),
            strict=True,
        )
    )
    base = server_env(tmp_path, SEALSERVE_LOG_LEVEL="INFO")
    cli("init", "--demo", env=base)
    worker = RemoteWorkerProcess({**base, **files_env}, free_port(), tmp_path / "worker.log")
    worker.start()
    gateway = start_server(
        {
            **base,
            "SEALSERVE_WORKER_TLS_CERT": str(gateway_files[0]),
            "SEALSERVE_WORKER_TLS_KEY": str(gateway_files[1]),
            "SEALSERVE_WORKER_TLS_CA": str(gateway_files[2]),
            "SEALSERVE_WORKERS": "0",
            "SEALSERVE_REMOTE_WORKERS": json.dumps([f"127.0.0.1:{worker.port}"]),
        },
        tmp_path / "gateway.log",
    )
    demo = json.loads((tmp_path / "demo-client.json").read_text())
    token = token_for(gateway.url, demo["client_id"], demo["client_secret"])
    x, _ = digits_test_split()
    expected = in_process_probabilities()
    old_ca, both = old.ca_file.read_bytes(), old.ca_file.read_bytes() + new.ca_file.read_bytes()
    probe = old.issue("probe-old", server=False)
    try:
        np.testing.assert_allclose(
            probabilities(infer(gateway.url, token, x[:2])), expected[:2], atol=1e-5
        )
        assert _presented(worker.port, probe, old_ca) == "worker-1"
        assert worker.process is not None
        worker_pid = worker.process.pid

        # Renewal by the same CA: the next connection sees the new certificate.
        _install(old.issue("worker-2", server=True), worker_files)
        assert _presented(worker.port, probe, old_ca) == "worker-2"

        # A new CA, step 1: the worker trusts both; a client of the new CA gets in.
        _install(old.issue("worker-2b", server=True), worker_files, ca=both)
        newcomer = new.issue("probe-new", server=False)
        assert asyncio.run(_ping(worker.port, _credentials(newcomer, old_ca))) is grpc.StatusCode.OK
        # Step 2: the gateway gets its certificate from the new CA (and trusts both).
        _install(new.issue("gateway-2", server=False), gateway_files, ca=both)
        # Step 3: the worker moves to the new CA for its own certificate and for clients.
        _install(new.issue("worker-3", server=True), worker_files)
        assert _presented(worker.port, newcomer, both) == "worker-3"
        refused = asyncio.run(_ping(worker.port, _credentials(probe, both)))
        assert refused is grpc.StatusCode.UNAVAILABLE
        assert worker.process.pid == worker_pid and worker.process.poll() is None
        # The gateway's open connection was made before the change and still serves.
        np.testing.assert_allclose(
            probabilities(infer(gateway.url, token, x[:2])), expected[:2], atol=1e-5
        )

        # Make the gateway connect again: only its new certificate can get in now.
        worker.stop(signal.SIGKILL)
        worker.start()
        reply = infer(gateway.url, token, x[:4])
        np.testing.assert_allclose(probabilities(reply), expected[:4], atol=1e-5)
        assert b"worker TLS files reloaded" in gateway.log.read_bytes()
    finally:
        gateway.stop()
        worker.stop()
    assert b"BEGIN" not in worker.log.read_bytes() + gateway.log.read_bytes()
