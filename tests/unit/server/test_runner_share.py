"""How the configured workers are divided among the gateway processes."""

from __future__ import annotations

import pytest

from server.runner import worker_share


@pytest.mark.parametrize(
    ("workers", "gateways", "shares"),
    [
        (1, 1, [1]),
        (8, 1, [8]),
        (4, 2, [2, 2]),
        (5, 2, [3, 2]),
        (7, 3, [3, 2, 2]),
        (8, 3, [3, 3, 2]),
        (10, 4, [3, 3, 2, 2]),
    ],
)
def test_workers_are_split_as_evenly_as_possible(
    workers: int, gateways: int, shares: list[int]
) -> None:
    """The remainder goes to the first gateways, one each; nothing is lost or added."""
    got = [worker_share(workers, gateways, index) for index in range(gateways)]
    assert got == shares
    assert sum(got) == workers


@pytest.mark.parametrize("gateways", [1, 2, 3, 5, 8, 64])
@pytest.mark.parametrize("workers", [1, 2, 3, 7, 16, 63, 64, 65, 200])
def test_every_gateway_gets_at_least_one_and_at_most_one_more_than_another(
    workers: int, gateways: int
) -> None:
    """Shares differ by at most one, never go below one, and add up to the total when it allows."""
    got = [worker_share(workers, gateways, index) for index in range(gateways)]
    assert min(got) >= 1
    assert max(got) - min(got) <= 1
    assert got == sorted(got, reverse=True)  # the larger shares come first
    assert sum(got) == max(workers, gateways)


def test_fewer_workers_than_gateways_still_gives_each_gateway_one() -> None:
    """A gateway with no worker could serve nothing: with 2 workers and 4 gateways, each runs one."""
    assert [worker_share(2, 4, index) for index in range(4)] == [1, 1, 1, 1]
