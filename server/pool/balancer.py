"""Which worker gets the next call: model affinity first, then the fewest calls in flight.

A worker that already holds the model answers without loading it, so it is
preferred; among those, the least busy one. When none holds it, the least
busy worker of all loads it. When every holder is busy (``spill_after``
calls in flight or more) and another worker has fewer, that one loads a
second copy: a hot model spreads over workers instead of queueing on one.

Ties rotate, so equally idle workers share the load. Pure logic over what the
pool knows, no I/O: the later per-tenant limits and LRU placement plug in here.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from collections.abc import Sequence

    from server.service.types import ModelKey


class Target(Protocol):
    """What the balancer reads of a worker."""

    @property
    def in_flight(self) -> int:
        """Calls sent and not yet answered."""

    def holds(self, key: ModelKey) -> bool:
        """Whether the worker has (or is loading) the model."""


T = TypeVar("T", bound=Target)

DEFAULT_SPILL_AFTER = 4


class Balancer:
    """Picks a worker per call; see the module docstring for the rule."""

    def __init__(self, *, spill_after: int = DEFAULT_SPILL_AFTER) -> None:
        if spill_after < 1:
            msg = "spill_after must be at least 1"
            raise ValueError(msg)
        self.spill_after = spill_after
        self._turn = itertools.count()

    def pick(self, workers: Sequence[T], key: ModelKey) -> T | None:
        """The worker for a call on ``key`` among ``workers`` (all live), or None if empty."""
        if not workers:
            return None
        start = next(self._turn) % len(workers)
        rotated = [*workers[start:], *workers[:start]]
        least = min(rotated, key=lambda worker: worker.in_flight)
        holders = [worker for worker in rotated if worker.holds(key)]
        if not holders:
            return least
        best = min(holders, key=lambda worker: worker.in_flight)
        if best.in_flight >= self.spill_after and least.in_flight < best.in_flight:
            return least
        return best
