"""Each tenant has its own concurrency cap and token bucket; one tenant's use never limits another."""

from __future__ import annotations

import pytest

from server.service.errors import Overloaded
from server.service.limits import TenantLimits


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        """The current time."""
        return self.now


def test_no_limits_means_disabled() -> None:
    """Without limits the service skips the limiter entirely."""
    assert not TenantLimits().enabled
    assert TenantLimits(rate=1).enabled
    assert TenantLimits(max_concurrency=1).enabled


def test_concurrency_cap_is_per_tenant_and_freed_on_release() -> None:
    """The cap refuses a tenant's extra call, not another tenant's, and frees up on release."""
    refused: list[tuple[str, str]] = []
    limits = TenantLimits(max_concurrency=2, on_limited=lambda t, r: refused.append((t, r)))
    limits.acquire("a")
    limits.acquire("a")
    with pytest.raises(Overloaded) as caught:
        limits.acquire("a")
    assert caught.value.retry_after >= 1
    limits.acquire("b")
    limits.release("a")
    limits.acquire("a")
    assert limits.in_flight("a") == 2
    assert refused == [("a", "concurrency")]


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    """A burst of calls passes at once, then calls pass at the rate, with a useful Retry-After."""
    clock = Clock()
    limits = TenantLimits(rate=10, burst=5, clock=clock)
    for _ in range(5):
        limits.acquire("a")
        limits.release("a")
    with pytest.raises(Overloaded) as caught:
        limits.acquire("a")
    assert caught.value.retry_after == pytest.approx(0.1)
    limits.acquire("b")  # another tenant has its own bucket
    clock.now += 0.1
    limits.acquire("a")
    with pytest.raises(Overloaded):
        limits.acquire("a")
    clock.now += 10  # refills up to the burst, no further
    for _ in range(5):
        limits.acquire("a")
    with pytest.raises(Overloaded):
        limits.acquire("a")


def test_default_burst_is_one_second_of_rate() -> None:
    """Without an explicit burst, a tenant may make one second's worth of calls at once."""
    limits = TenantLimits(rate=3, clock=Clock())
    for _ in range(3):
        limits.acquire("a")
    with pytest.raises(Overloaded):
        limits.acquire("a")


def test_check_refuses_like_acquire_but_admits_nothing() -> None:
    """``check`` passes while a call would be admitted, refuses when not, and consumes nothing."""
    clock = Clock()
    refused: list[tuple[str, str]] = []
    limits = TenantLimits(
        rate=10,
        burst=2,
        max_concurrency=3,
        clock=clock,
        on_limited=lambda t, r: refused.append((t, r)),
    )
    limits.check("new")  # an unknown tenant is never refused
    for _ in range(5):
        limits.check("a")  # checking does not spend the bucket
    limits.acquire("a")
    limits.acquire("a")
    assert limits.in_flight("a") == 2
    with pytest.raises(Overloaded) as caught:
        limits.check("a")  # the bucket is empty
    assert caught.value.retry_after == pytest.approx(0.1)
    clock.now += 0.1
    limits.check("a")  # refilled by one
    limits.acquire("a")
    clock.now += 1
    with pytest.raises(Overloaded):
        limits.check("a")  # tokens again, but three calls already run
    assert limits.in_flight("a") == 3
    assert refused == [("a", "rate"), ("a", "concurrency")]
