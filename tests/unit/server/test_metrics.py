"""The process id the multiprocess metrics are filed under follows forks."""

from __future__ import annotations

import os

from server.metrics import _ProcessId


def test_the_cached_process_id_is_the_childs_after_a_fork() -> None:
    """A forked child files its counts under its own id, not its parent's."""
    process_id = _ProcessId()
    assert process_id() == os.getpid()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.write(write, f"{process_id()} {os.getpid()}".encode())
        os._exit(0)
    os.close(write)
    seen, actual = os.read(read, 64).decode().split()
    os.close(read)
    os.waitpid(child, 0)
    assert int(seen) == int(actual) == child
    assert process_id() == os.getpid() != child
