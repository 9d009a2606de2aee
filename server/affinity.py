"""Each gateway process, with the local workers it starts, on a CPU of its own (opt-in).

A call through sealserve wakes its gateway, then the gateway's worker, then
the gateway again. Where waking a process on another CPU is slow, those
wake-ups cost more than the work: in a virtual machine whose idle CPUs halt,
``bench/ceilings.py`` measured a wake-up round trip between two processes of
about 51 us across two CPUs against 7 us on one. With
``SEALSERVE_GATEWAY_CPU_AFFINITY`` on, gateway ``i`` runs on the ``i``-th CPU
of the set the server was started with (round robin past its end), and the
workers it starts inherit that CPU, so a gateway's hop to its worker stays
on one CPU. Like nginx's ``worker_cpu_affinity``, this is for hosts whose
CPUs the server has to itself (a dedicated machine, a Kubernetes pod with
the static CPU manager policy), with one gateway per CPU; it is off by
default because elsewhere the kernel's own balancing does better.

Intake jobs (TensorFlow, compression) are not pinned: the primary gives
each the whole set back as it starts. (The quick TFLite check of an upload,
a LiteRT load of a few hundred milliseconds, runs on its gateway's CPU.)
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

_released: frozenset[int] | None = None
"""The CPUs this process's children get back (``release``) once it pinned itself."""


def supported() -> bool:
    """Whether this platform lets a process choose its CPUs (Linux does)."""
    return hasattr(os, "sched_setaffinity")


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on, in order."""
    return sorted(os.sched_getaffinity(0))


def cpu_for(cpus: list[int], index: int) -> int:
    """The CPU of gateway ``index``: the ``index``-th of ``cpus``, round robin."""
    return cpus[index % len(cpus)]


def pin(cpu: int, *, allowed: list[int]) -> None:
    """Run every thread of this process, and what it starts from now on, on ``cpu`` only.

    ``allowed`` is the whole set the server was started with, which
    ``release`` gives back to children that should not be pinned.
    """
    global _released  # noqa: PLW0603 - once per process, before it starts serving
    _released = frozenset(allowed)
    # Threads started before now (gRPC's, the deny-list refresh) keep their
    # own mask, so each is moved; new ones inherit their creator's.
    for thread in Path("/proc/self/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(thread.name), {cpu})
    log.info("gateway pinned to a cpu", cpu=cpu)


def release(pid: int) -> None:
    """Give child ``pid`` the whole set back, if this process pinned itself.

    Called as soon as the child is started: a thread it started before that
    would stay on this process's CPU, and a job process starts none while
    its interpreter and imports load.
    """
    if _released is not None:
        with contextlib.suppress(ProcessLookupError):  # ended already: nothing to do
            os.sched_setaffinity(pid, _released)
