"""Pinning a gateway process to one CPU: every thread, what it starts, and children let go.

Pinning changes the calling process for good, so the real calls run in a
child interpreter that reports what the kernel says about it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from server.affinity import cpus_for
from server.settings import load_settings

CPUS = sorted(os.sched_getaffinity(0))

CHILD = textwrap.dedent(
    """
    import json, os, subprocess, sys, threading
    from pathlib import Path

    from server import affinity

    def masks(pid):
        return sorted(
            sorted(os.sched_getaffinity(int(thread.name)))
            for thread in Path(f"/proc/{pid}/task").iterdir()
        )

    cpu, allowed = int(sys.argv[1]), json.loads(sys.argv[2])
    stop = threading.Event()
    before = threading.Thread(target=stop.wait)
    before.start()
    assert affinity.pin({cpu}, allowed=allowed)
    after = threading.Thread(target=stop.wait)
    after.start()
    kept = subprocess.Popen(["sleep", "30"])
    let_go = subprocess.Popen(["sleep", "30"])
    affinity.release(let_go.pid)
    report = {
        "threads": masks(os.getpid()),
        "kept": sorted(os.sched_getaffinity(kept.pid)),
        "let_go": sorted(os.sched_getaffinity(let_go.pid)),
    }
    for child in (kept, let_go):
        child.kill()
        child.wait()
    stop.set()
    print(json.dumps(report))
    """
)


@pytest.mark.parametrize(
    ("cpus", "index", "gateways", "expected"),
    [
        ([0, 1], 0, 2, {0}),
        ([0, 1], 1, 2, {1}),
        ([0, 1], 2, 3, {0}),  # more gateways than CPUs: round robin
        ([2, 5, 7], 1, 3, {5}),  # the CPUs the server was given, not 0..n-1
        ([3], 4, 5, {3}),
        ([0, 1, 2, 3], 0, 1, {0, 1, 2, 3}),  # one gateway: all of them, for its workers
        ([0, 1, 2, 3, 4, 5], 1, 2, {1, 3, 5}),  # fewer gateways: a share each
    ],
)
def test_each_gateway_gets_its_cpus(
    cpus: list[int], index: int, gateways: int, expected: set[int]
) -> None:
    """One CPU each, round robin, unless there are fewer gateways than CPUs to share out."""
    assert cpus_for(cpus, index, gateways) == expected


@pytest.mark.skipif(len(CPUS) < 2, reason="one CPU cannot tell a pinned process from another")
def test_pin_moves_every_thread_and_children_inherit_unless_released() -> None:
    """Threads from before and after the pin run on the CPU, as do children not let go."""
    cpu = CPUS[-1]
    done = subprocess.run(  # noqa: S603 - our interpreter, our script
        [sys.executable, "-c", CHILD, str(cpu), json.dumps(CPUS)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    report = json.loads(done.stdout.splitlines()[-1])
    # The main thread, a thread started before the pin and one after: all on ``cpu``.
    assert len(report["threads"]) >= 3
    assert all(mask == [cpu] for mask in report["threads"]), report["threads"]
    assert report["kept"] == [cpu]  # a worker started by a pinned gateway shares its CPU
    assert report["let_go"] == CPUS  # an intake job gets the whole set back


def test_release_does_nothing_in_a_process_that_is_not_pinned() -> None:
    """A server restricted by whoever started it (``taskset``, say) leaves its children so."""
    script = textwrap.dedent(
        """
        import os, subprocess, sys
        from server import affinity

        os.sched_setaffinity(0, {int(sys.argv[1])})
        child = subprocess.Popen(["sleep", "30"])
        affinity.release(child.pid)
        print(sorted(os.sched_getaffinity(child.pid)))
        child.kill()
        child.wait()
        """
    )
    done = subprocess.run(  # noqa: S603 - our interpreter, our script
        [sys.executable, "-c", script, str(CPUS[0])],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(done.stdout) == [CPUS[0]]


TFLITE_CHILD = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    from server import affinity
    from server.tflite_check import check_tflite

    cpu, allowed = int(sys.argv[1]), json.loads(sys.argv[2])
    affinity.pin({cpu}, allowed=allowed)
    seen = []
    real = affinity.release

    def release(pid):
        real(pid)
        seen.append(sorted(os.sched_getaffinity(pid)))

    affinity.release = release
    check_tflite(Path(sys.argv[3]))
    print(json.dumps(seen))
    """
)


@pytest.mark.skipif(len(CPUS) < 2, reason="one CPU cannot tell a pinned process from another")
def test_a_pinned_gateway_checks_an_upload_on_every_cpu() -> None:
    """The TFLite check's process (LiteRT loading an untrusted model) is not pinned."""
    model = Path(__file__).parents[3] / "server" / "demo" / "digits.tflite"
    done = subprocess.run(  # noqa: S603 - our interpreter, our script
        [sys.executable, "-c", TFLITE_CHILD, str(CPUS[-1]), json.dumps(CPUS), str(model)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert json.loads(done.stdout.splitlines()[-1]) == [CPUS]


def test_cpus_the_kernel_refuses_leave_the_gateway_unpinned() -> None:
    """CPUs taken from the server since it started: a warning, and every allowed CPU kept."""
    script = textwrap.dedent(
        """
        import json, os, sys
        from server import affinity

        allowed = json.loads(sys.argv[1])
        pinned = affinity.pin({max(allowed) + 512}, allowed=allowed)
        print(json.dumps([pinned, sorted(os.sched_getaffinity(0))]))
        """
    )
    done = subprocess.run(  # noqa: S603 - our interpreter, our script
        [sys.executable, "-c", script, json.dumps(CPUS)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(done.stdout.splitlines()[-1]) == [False, CPUS]


def test_the_setting_is_off_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """``SEALSERVE_GATEWAY_CPU_AFFINITY`` turns it on; nothing is pinned by default."""
    monkeypatch.delenv("SEALSERVE_GATEWAY_CPU_AFFINITY", raising=False)
    assert load_settings().gateway_cpu_affinity is False
    monkeypatch.setenv("SEALSERVE_GATEWAY_CPU_AFFINITY", "1")
    assert load_settings().gateway_cpu_affinity is True


def test_the_setting_is_refused_where_a_process_cannot_choose_its_cpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Asked for on an OS without ``sched_setaffinity``, the server refuses to start."""
    monkeypatch.setattr("server.settings.affinity_supported", lambda: False)
    monkeypatch.setenv("SEALSERVE_GATEWAY_CPU_AFFINITY", "1")
    with pytest.raises(ValidationError, match="SEALSERVE_GATEWAY_CPU_AFFINITY"):
        load_settings()
