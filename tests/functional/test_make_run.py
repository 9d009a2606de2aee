"""The commands `make run` prints work when pasted into a shell."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.servers import cli, free_port, server_env, start_server

ROOT = Path(__file__).resolve().parents[2]


def _commands(printed: str) -> list[str]:
    """The indented lines of the 'Call the demo' block, as a person would copy them."""
    block = printed[printed.index("Call the demo") :].split("\n\n")[1]
    return [line.strip() for line in block.splitlines() if line.startswith("  ")]


def test_printed_commands_work(tmp_path) -> None:
    """Init --demo prints token, REST and gRPC commands; run as printed, they classify the digit."""
    env = server_env(
        tmp_path, SEALSERVE_REST_PORT=str(free_port()), SEALSERVE_GRPC_PORT=str(free_port())
    )
    printed = cli("init", "--if-missing", "--demo", env=env).stdout
    commands = _commands(printed)
    assert len(commands) == 3, printed
    assert commands[0].startswith("TOKEN=")
    server = start_server(
        env, tmp_path / "server.log", ports=(env["SEALSERVE_REST_PORT"], env["SEALSERVE_GRPC_PORT"])
    )
    try:
        shell = subprocess.run(  # noqa: S603 - the printed commands are the test subject
            ["bash", "-c", "set -e\n" + "\n".join(commands)],  # noqa: S607 - as a person's shell
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        server.stop()
    assert shell.returncode == 0, shell.stderr
    assert '"model_name":"digits"' in shell.stdout
    assert "predicted digit: 7" in shell.stdout
    # A second `make run` on the same data directory prints working commands again.
    again = cli("init", "--if-missing", "--demo", env=env).stdout
    assert _commands(again) == commands
