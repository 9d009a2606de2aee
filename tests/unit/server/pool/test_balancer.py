"""The balancer prefers workers holding the model, then the least busy, and spills when hot."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from server.pool.balancer import Balancer
from server.service.types import ModelKey

KEY = ModelKey("t", "v1")
OTHER = ModelKey("t", "v2")


@dataclass
class Fake:
    """A worker as the balancer sees it."""

    name: str
    in_flight: int = 0
    models: set[ModelKey] = field(default_factory=set)

    def holds(self, key: ModelKey) -> bool:
        """Whether the fake holds ``key``."""
        return key in self.models


def test_no_workers_means_no_pick() -> None:
    """An empty list yields None, so the pool can wait for a worker."""
    assert Balancer().pick([], KEY) is None


def test_without_a_holder_the_least_busy_worker_loads_the_model() -> None:
    """Nobody holds the model: the worker with the fewest calls in flight gets it."""
    workers = [Fake("a", 3), Fake("b", 1), Fake("c", 2, {OTHER})]
    assert Balancer().pick(workers, KEY).name == "b"


def test_a_holder_is_preferred_over_an_idler_worker() -> None:
    """A busier worker that holds the model beats an idle one that would have to load it."""
    workers = [Fake("a", 0), Fake("b", 2, {KEY})]
    assert Balancer(spill_after=4).pick(workers, KEY).name == "b"


def test_the_least_busy_holder_wins() -> None:
    """Among holders, fewest calls in flight."""
    workers = [Fake("a", 3, {KEY}), Fake("b", 1, {KEY}), Fake("c", 0)]
    assert Balancer(spill_after=4).pick(workers, KEY).name == "b"


def test_a_busy_holder_spills_to_a_less_busy_worker() -> None:
    """At spill_after calls in flight on every holder, a less busy worker loads a copy."""
    workers = [Fake("a", 4, {KEY}), Fake("b", 1)]
    assert Balancer(spill_after=4).pick(workers, KEY).name == "b"


def test_no_spill_when_everyone_is_as_busy() -> None:
    """Spilling only helps if the other worker is less busy; otherwise stay on the holder."""
    workers = [Fake("a", 5, {KEY}), Fake("b", 5)]
    assert Balancer(spill_after=4).pick(workers, KEY).name == "a"


def test_ties_rotate() -> None:
    """Equally idle workers take turns, so sequential first calls spread."""
    balancer = Balancer()
    workers = [Fake("a"), Fake("b"), Fake("c")]
    picks = {balancer.pick(workers, KEY).name for _ in range(3)}
    assert picks == {"a", "b", "c"}


def test_spill_after_must_be_positive() -> None:
    """A threshold below one would spill every call; it is refused."""
    with pytest.raises(ValueError, match="spill_after"):
        Balancer(spill_after=0)
