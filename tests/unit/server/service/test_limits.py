"""Each tenant has its own concurrency cap and token bucket; one tenant's use never limits another."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from server.service.errors import Overloaded
from server.service.limits import REFUSING_SECONDS, SharedTenantTable, TenantLimits


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


def test_refusing_is_true_only_for_a_while_after_a_refusal() -> None:
    """``refusing`` (what gates the early 429) follows refusals, of either kind, and lapses."""
    clock = Clock()
    # One token every two seconds: still none when ``refusing`` has lapsed.
    limits = TenantLimits(max_concurrency=1, rate=0.5, burst=1, clock=clock)
    assert not limits.refusing()
    limits.acquire("a")
    assert not limits.refusing()  # admitted calls do not turn it on
    with pytest.raises(Overloaded):
        limits.acquire("a")  # the concurrency cap
    assert limits.refusing()
    clock.now += REFUSING_SECONDS
    assert not limits.refusing()
    limits.release("a")
    with pytest.raises(Overloaded):
        limits.admit("a")  # the empty bucket, through the transports' admission
    assert limits.refusing()


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


def test_an_admission_holds_its_token_and_place_until_released_once() -> None:
    """``admit`` takes a token and a place at once; releasing twice frees the place once."""
    clock = Clock()
    refused: list[tuple[str, str]] = []
    limits = TenantLimits(
        rate=10,
        burst=2,
        max_concurrency=2,
        clock=clock,
        on_limited=lambda t, r: refused.append((t, r)),
    )
    # Two calls of a burst, admitted before either runs: the second took the last token.
    first, second = limits.admit("a"), limits.admit("a")
    assert limits.in_flight("a") == 2
    with pytest.raises(Overloaded) as caught:
        limits.admit("a")  # the cap
    with limits.admit("b"):  # another tenant's own bucket and cap
        assert limits.in_flight("b") == 1
    assert limits.in_flight("b") == 0
    first.release()
    first.release()  # a second release is a no-op: it must not free the other call's place
    assert limits.in_flight("a") == 1
    with pytest.raises(Overloaded) as caught:
        limits.admit("a")  # a free place now, but the bucket is empty
    assert caught.value.retry_after == pytest.approx(0.1)
    clock.now += 0.1
    with limits.admit("a"):  # refilled by one
        assert limits.in_flight("a") == 2
    second.release()
    assert limits.in_flight("a") == 0
    assert refused == [("a", "concurrency"), ("a", "rate")]


def test_gateways_sharing_a_table_are_limited_as_one(tmp_path: Path) -> None:
    """Two processes' limiters on one table: the bucket and the cap hold for their sum."""
    clock = Clock()
    path = tmp_path / "limits"
    first, second = (
        TenantLimits(
            rate=10,
            burst=4,
            max_concurrency=3,
            clock=clock,
            shared=SharedTenantTable(path, gateway=index),
        )
        for index in (0, 1)
    )
    first.acquire("a")
    second.acquire("a")
    second.acquire("a")
    assert first.in_flight("a") == second.in_flight("a") == 3
    with pytest.raises(Overloaded):
        first.acquire("a")  # three run: the cap, though this process runs only one
    first.release("a")
    second.acquire("a")  # the fourth token of the burst
    second.release("a")
    second.release("a")
    with pytest.raises(Overloaded) as caught:
        first.acquire("a")  # the bucket is empty for both
    assert caught.value.retry_after == pytest.approx(0.1)
    clock.now += 0.1
    first.acquire("a")
    first.acquire("b")  # another tenant has its own slot
    assert (first.in_flight("a"), second.in_flight("b")) == (2, 1)


def test_a_restarted_gateway_forgets_the_calls_it_had_in_flight(tmp_path: Path) -> None:
    """A gateway that died mid-call does not keep counting against the tenant once back."""
    path = tmp_path / "limits"
    survivor = TenantLimits(max_concurrency=3, shared=SharedTenantTable(path, gateway=0))
    crashed = TenantLimits(max_concurrency=3, shared=SharedTenantTable(path, gateway=1))
    survivor.acquire("a")
    crashed.acquire("a")
    crashed.acquire("a")
    with pytest.raises(Overloaded):
        survivor.acquire("a")
    restarted = TenantLimits(max_concurrency=3, shared=SharedTenantTable(path, gateway=1))
    assert restarted.in_flight("a") == 1  # the survivor's call only
    restarted.acquire("a")
    survivor.acquire("a")


def test_a_full_table_limits_new_tenants_per_process(tmp_path: Path) -> None:
    """With every slot taken a new tenant is still limited, by this process alone."""
    table = SharedTenantTable(tmp_path / "limits", gateway=0, slots=2)
    limits = TenantLimits(max_concurrency=1, shared=table)
    limits.acquire("a")
    limits.acquire("b")
    limits.acquire("c")
    with pytest.raises(Overloaded):
        limits.acquire("c")
    limits.release("c")
    limits.acquire("c")
    other = TenantLimits(
        max_concurrency=1, shared=SharedTenantTable(tmp_path / "limits", gateway=1, slots=2)
    )
    with pytest.raises(Overloaded):
        other.acquire("a")  # the tenants in the table are still shared


def _take_tokens(path: str, gateway: int, start: float) -> int:
    """In its own process: from ``start`` (wall clock), take tokens until refused; how many.

    The bucket refills one token in 1,000 s, so the first refusal means it is
    empty (however slowly a loaded machine runs the three processes).
    """
    limits = TenantLimits(
        rate=0.001, burst=BUCKET, shared=SharedTenantTable(Path(path), gateway=gateway)
    )
    time.sleep(max(0.0, start - time.time()))
    admitted = 0
    while time.time() < start + 60.0:
        try:
            limits.acquire("tenant")
        except Overloaded:
            break
        limits.release("tenant")
        admitted += 1
    return admitted


BUCKET = 20_000
"""Tokens the racing processes share: enough for all three to be taking them at once."""


def test_processes_racing_for_one_bucket_never_admit_more_than_it_holds(tmp_path: Path) -> None:
    """Three real processes drain one bucket together and take exactly what it held."""
    context = multiprocessing.get_context("spawn")
    start = time.time() + 3.0  # after the three interpreters have started
    with context.Pool(3) as pool:
        admitted = pool.starmap(
            _take_tokens, [(str(tmp_path / "limits"), gateway, start) for gateway in range(3)]
        )
    assert sum(admitted) == BUCKET
    assert min(admitted) > 0, admitted  # they really raced


def test_an_empty_bucket_refuses_until_its_next_token_with_a_shrinking_retry_after() -> None:
    """After an empty-bucket refusal, later calls are refused until the token is due, then admitted."""
    clock = Clock()
    refused: list[tuple[str, str]] = []
    limits = TenantLimits(
        rate=4, burst=1, clock=clock, on_limited=lambda t, r: refused.append((t, r))
    )
    limits.acquire("a")
    waits = []
    for _ in range(3):
        with pytest.raises(Overloaded) as caught:
            limits.acquire("a")
        waits.append(caught.value.retry_after)
        clock.now += 0.1
    assert waits == pytest.approx([0.25, 0.15, 0.05])
    clock.now -= 0.05  # back to 0.25 s after the first call: the token is due just now
    limits.acquire("a")
    assert refused == [("a", "rate")] * 3
