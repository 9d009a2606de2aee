"""The job sandbox: once confined, a process writes only its directory and reads no secret."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest

from server.jobs.sandbox import abi_version

pytestmark = pytest.mark.skipif(abi_version() == 0, reason="this kernel has no Landlock")

PROBE = textwrap.dedent(
    """
    import json, socket, sys
    from pathlib import Path
    from server.jobs.sandbox import confine, default_read_paths

    job, secret, port = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    abi = confine(writable=job, readable=default_read_paths())
    seen = {"abi": abi}

    def attempt(name, action):
        try:
            action()
            seen[name] = "allowed"
        except OSError as exc:
            seen[name] = type(exc).__name__

    attempt("write_job", lambda: (job / "out.txt").write_text("ok"))
    attempt("read_secret", lambda: secret.read_text())
    attempt("write_beside", lambda: (secret.parent / "planted.txt").write_text("x"))
    attempt("list_parent", lambda: list(secret.parent.iterdir()))
    attempt("import_numpy", lambda: __import__("numpy"))
    attempt("tcp_connect", lambda: socket.create_connection(("127.0.0.1", port), timeout=2))
    print(json.dumps(seen))
    """
)


def test_a_confined_process_keeps_to_its_directory(tmp_path) -> None:
    """Its directory is writable; a key file beside it is unreadable; no TCP connection."""
    job = tmp_path / "staging" / "job"
    job.mkdir(parents=True)
    secret = tmp_path / "master.key"
    secret.write_text("the master key")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        done = subprocess.run(  # noqa: S603 - our own probe
            [sys.executable, "-c", PROBE, str(job), str(secret), str(port)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
    seen = json.loads(done.stdout)
    assert seen["write_job"] == "allowed"
    assert (job / "out.txt").read_text() == "ok"
    assert seen["read_secret"] == "PermissionError"
    assert seen["write_beside"] == "PermissionError"
    assert seen["list_parent"] == "PermissionError"
    assert seen["import_numpy"] == "allowed"
    if seen["abi"] >= 4:
        assert seen["tcp_connect"] == "PermissionError"
    assert not (tmp_path / "planted.txt").exists()
