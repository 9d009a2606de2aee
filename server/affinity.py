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
the static CPU manager policy), best with one gateway per CPU (with fewer,
each gateway and its workers get a share of the CPUs); it is off by default
because elsewhere the kernel's own balancing does better.

Intake jobs (TensorFlow, compression) and the TFLite check of an upload are
not pinned: the gateway gives each the whole set back as it starts.
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


def cpus_for(cpus: list[int], index: int, gateways: int) -> set[int]:
    """The CPUs of gateway ``index`` of ``gateways``.

    One gateway per CPU or more: the ``index``-th CPU, round robin. Fewer
    gateways than CPUs: every ``gateways``-th CPU from the ``index``-th, so
    the CPUs are shared out and the workers of a gateway spread over its share.
    """
    if gateways >= len(cpus):
        return {cpus[index % len(cpus)]}
    return set(cpus[index::gateways])


def pin(cpus: set[int], *, allowed: list[int]) -> bool:
    """Run every thread of this process, and what it starts from now on, on ``cpus`` only.

    ``allowed`` is the whole set the server was started with, which
    ``release`` gives back to children that should not be pinned. If the
    kernel refuses (the CPUs were taken from the server since it started),
    the process runs unpinned, with a warning; the result says which.
    """
    global _released  # noqa: PLW0603 - once per process, before it starts serving
    try:
        _move_every_thread(cpus)
    except OSError as exc:
        log.warning(
            "gateway not pinned: the kernel refused its cpus", cpus=sorted(cpus), error=str(exc)
        )
        with contextlib.suppress(OSError):
            _move_every_thread(set(allowed))
        return False
    _released = frozenset(allowed)
    log.info("gateway pinned", cpus=sorted(cpus))
    return True


def _move_every_thread(cpus: set[int]) -> None:
    """Put every thread of this process on ``cpus``.

    A thread keeps the mask it had, and new threads inherit their creator's,
    so each thread there is now is moved.
    """
    for thread in Path("/proc/self/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(thread.name), cpus)


def place(pid: int, cpus: set[int]) -> None:
    """Move child ``pid`` (a gateway, which pins all its threads once it runs) to ``cpus`` now."""
    with contextlib.suppress(OSError):  # ended already, or CPUs gone: it pins itself or not
        os.sched_setaffinity(pid, cpus)


def release(pid: int) -> None:
    """Give child ``pid`` the whole set back, if this process pinned itself.

    Called as soon as the child is started. Only the thread the child
    started with is moved: a thread it started before this call would stay
    on this process's CPUs. The processes it is for (intake jobs, the TFLite
    check) start none while their interpreter and imports load.
    """
    if _released is not None:
        with contextlib.suppress(OSError):  # ended already: nothing to do
            os.sched_setaffinity(pid, _released)
