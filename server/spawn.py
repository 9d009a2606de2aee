"""How the server starts its own modules in fresh interpreters (workers, gateways, jobs)."""

from __future__ import annotations

import sys


def module_command(module: str, *args: str) -> list[str]:
    """The command that runs ``python -m module args`` with this interpreter.

    ``-P`` keeps the working directory off the front of ``sys.path``: a
    ``server`` package in whatever directory the operator started the server
    from must not stand in for ours in the processes it starts.
    """
    return [sys.executable, "-P", "-m", module, *args]
