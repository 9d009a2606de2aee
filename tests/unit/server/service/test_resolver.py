"""Model resolution through a short-lived cache: single-flight misses, refresh-ahead, expiry.

The resolver runs on a real registry (SQLite, and PostgreSQL when configured)
wrapped in ``CountingRegistry``, which delegates every ``resolve`` and counts
it, and can hold queries at a gate to make "a query is in flight" a fact the
test controls instead of a timing guess.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
from typing import TYPE_CHECKING, Any

import pytest
from structlog.testing import capture_logs

from server.service.resolver import ModelResolver
from storage.errors import NotFound

if TYPE_CHECKING:
    from storage import ModelVersionInfo, Registry

GUARD = 5.0
"""No step may take this long: a hang fails the test instead of blocking it."""


class CountingRegistry:
    """A real registry whose ``resolve`` calls are counted (and may be held at a gate)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.queries = 0
        self.finished = 0
        self.gate = threading.Event()
        self.gate.set()
        self.fail_with: BaseException | None = None
        self._lock = threading.Lock()

    def resolve(self, tenant_id: str, model_name: str, ref: Any = None) -> ModelVersionInfo:
        """Count the query, wait at the gate, then ask the real registry."""
        with self._lock:
            self.queries += 1
        try:
            assert self.gate.wait(GUARD), "the test never opened the gate"
            if self.fail_with is not None:
                raise self.fail_with
            return self.registry.resolve(tenant_id, model_name, ref)
        finally:
            with self._lock:
                self.finished += 1

    async def until(self, *, queries: int | None = None, finished: int | None = None) -> None:
        """Wait until that many queries started (or finished)."""
        # Polled: the counts grow in the registry's threads, not on this loop.
        while self._short_of(queries, finished):  # noqa: ASYNC110
            await asyncio.sleep(0.002)

    def _short_of(self, queries: int | None, finished: int | None) -> bool:
        return (queries is not None and self.queries < queries) or (
            finished is not None and self.finished < finished
        )


def put(registry: Registry, tenant_id: str, name: str = "m") -> int:
    """Seal a small model as the next version of ``name``; its version number."""
    return registry.put_version(
        tenant_id=tenant_id, model_name=name, source=io.BytesIO(os.urandom(256)), format="tflite"
    ).version


@pytest.fixture
def tenant(registry: Registry) -> str:
    """A tenant with model ``m`` at version 1."""
    tenant_id = registry.create_tenant("acme").id
    put(registry, tenant_id)
    return tenant_id


def resolver_over(counting: CountingRegistry, ttl: float, **options: int) -> ModelResolver:
    """A resolver on the counting wrapper."""
    return ModelResolver(counting, ttl=ttl, **options)  # type: ignore[arg-type]


def test_concurrent_misses_share_one_query(registry: Registry, tenant: str) -> None:
    """64 concurrent resolves of a cold key: exactly one registry query, one answer for all."""
    counting = CountingRegistry(registry)
    counting.gate.clear()
    resolver = resolver_over(counting, ttl=5.0)

    async def scenario() -> list[ModelVersionInfo]:
        calls = asyncio.gather(*(resolver.resolve(tenant, "m") for _ in range(64)))
        await asyncio.wait_for(counting.until(queries=1), GUARD)
        await asyncio.sleep(0.05)  # every call has had its chance to start another query
        counting.gate.set()
        return await asyncio.wait_for(calls, GUARD)

    found = asyncio.run(scenario())
    assert counting.queries == 1
    assert {info.version for info in found} == {1}
    assert len(found) == 64


def test_concurrent_misses_of_an_unknown_model_share_one_query_and_are_not_cached(
    registry: Registry, tenant: str
) -> None:
    """Eight callers of a missing model share one query, all get NotFound; the next asks again."""
    counting = CountingRegistry(registry)
    counting.gate.clear()
    resolver = resolver_over(counting, ttl=5.0)

    async def scenario() -> list[BaseException | ModelVersionInfo]:
        calls = asyncio.gather(
            *(resolver.resolve(tenant, "nope") for _ in range(8)), return_exceptions=True
        )
        await asyncio.wait_for(counting.until(queries=1), GUARD)
        await asyncio.sleep(0.02)
        counting.gate.set()
        outcomes = await asyncio.wait_for(calls, GUARD)
        with pytest.raises(NotFound):
            await resolver.resolve(tenant, "nope")
        return outcomes

    outcomes = asyncio.run(scenario())
    assert all(isinstance(outcome, NotFound) for outcome in outcomes), outcomes
    assert counting.queries == 2


def test_a_fresh_hit_costs_no_query(registry: Registry, tenant: str) -> None:
    """Within the first half of the ttl, hits come from the cache and start no refresh."""
    counting = CountingRegistry(registry)
    resolver = resolver_over(counting, ttl=4.0)

    async def scenario() -> list[int]:
        first = await resolver.resolve(tenant, "m")
        put(registry, tenant)  # version 2 exists now, but the cache still holds 1
        hits = [await resolver.resolve(tenant, "m") for _ in range(20)]
        await asyncio.sleep(0.05)  # a background refresh would have started by now
        return [first.version, *(hit.version for hit in hits)]

    versions = asyncio.run(scenario())
    assert versions == [1] * 21
    assert counting.queries == 1


def test_a_hit_in_the_second_half_is_served_at_once_and_refreshed_once(
    registry: Registry, tenant: str
) -> None:
    """Past half its ttl an entry still answers without waiting; one background query refreshes it."""
    counting = CountingRegistry(registry)
    ttl = 1.6
    resolver = resolver_over(counting, ttl=ttl)

    async def scenario() -> tuple[list[int], int, int]:
        await resolver.resolve(tenant, "m")
        put(registry, tenant)  # version 2
        await asyncio.sleep(ttl * 0.5 + 0.1)  # second half: 0.7 s before expiry
        counting.gate.clear()  # the refresh query will hang until the test lets it go
        # Served from the cache although the refresh cannot finish: nobody waits for it.
        served = [
            (await asyncio.wait_for(resolver.resolve(tenant, "m"), 0.3)).version for _ in range(10)
        ]
        await asyncio.wait_for(counting.until(queries=2), GUARD)
        await asyncio.sleep(0.02)
        during = counting.queries
        counting.gate.set()
        await asyncio.wait_for(counting.until(finished=2), GUARD)
        await asyncio.sleep(0.02)  # the refreshed entry is stored
        after = await resolver.resolve(tenant, "m")
        return [*served, after.version], during, counting.queries

    versions, during, total = asyncio.run(scenario())
    assert versions == [1] * 10 + [2]  # the refresh brought version 2, with no extra query
    assert during == 2  # ten hits in the second half started exactly one refresh
    assert total == 2


def test_an_expired_entry_is_never_served(registry: Registry, tenant: str) -> None:
    """Past the ttl a call waits for a fresh query; after a push it gets the new version."""
    counting = CountingRegistry(registry)
    ttl = 0.2
    resolver = resolver_over(counting, ttl=ttl)

    async def scenario() -> tuple[int, bool, int]:
        first = await resolver.resolve(tenant, "m")
        put(registry, tenant)  # version 2
        await asyncio.sleep(ttl + 0.05)  # expired, and no hit in the second half refreshed it
        counting.gate.clear()
        call = asyncio.ensure_future(resolver.resolve(tenant, "m"))
        await asyncio.sleep(0.1)
        waited = not call.done()  # the stale version 1 was not handed out
        counting.gate.set()
        fresh = await asyncio.wait_for(call, GUARD)
        return first.version, waited, fresh.version

    first, waited, fresh = asyncio.run(scenario())
    assert (first, fresh) == (1, 2)
    assert waited
    assert counting.queries == 2


def test_invalidate_during_a_query_keeps_its_result_out_of_the_cache(
    registry: Registry, tenant: str
) -> None:
    """A query begun before ``invalidate(tenant)`` answers its callers but is not cached."""
    counting = CountingRegistry(registry)
    counting.gate.clear()
    resolver = resolver_over(counting, ttl=5.0)

    async def scenario() -> tuple[int, int]:
        call = asyncio.ensure_future(resolver.resolve(tenant, "m"))
        await asyncio.wait_for(counting.until(queries=1), GUARD)
        resolver.invalidate(tenant)  # e.g. this process just pushed a version
        counting.gate.set()
        answered = await asyncio.wait_for(call, GUARD)
        await asyncio.sleep(0.01)
        again = await asyncio.wait_for(resolver.resolve(tenant, "m"), GUARD)
        return answered.version, again.version

    assert asyncio.run(scenario()) == (1, 1)
    assert counting.queries == 2  # the second resolve had to ask again


def test_invalidate_forgets_only_that_tenant(registry: Registry, tenant: str) -> None:
    """After ``invalidate``, that tenant's entries are queried again; another tenant's are not."""
    other = registry.create_tenant("other").id
    put(registry, other)
    counting = CountingRegistry(registry)
    resolver = resolver_over(counting, ttl=5.0)

    async def scenario() -> int:
        await resolver.resolve(tenant, "m")
        await resolver.resolve(other, "m")
        put(registry, tenant)
        resolver.invalidate(tenant)
        assert (await resolver.resolve(tenant, "m")).version == 2
        assert (await resolver.resolve(other, "m")).version == 1
        return counting.queries

    assert asyncio.run(scenario()) == 3


def test_not_found_during_a_refresh_removes_the_entry(registry: Registry, tenant: str) -> None:
    """The model is deleted; the refresh that learns it drops the entry before its ttl ends."""
    counting = CountingRegistry(registry)
    ttl = 3.0
    resolver = resolver_over(counting, ttl=ttl)

    async def scenario() -> tuple[int, float, list[dict[str, Any]]]:
        loop = asyncio.get_running_loop()
        began = loop.time()
        await resolver.resolve(tenant, "m")
        registry.delete_model(tenant, "m")
        await asyncio.sleep(ttl * 0.5 + 0.1)
        with capture_logs() as logs:
            served = await resolver.resolve(tenant, "m")  # still cached; starts the refresh
            await asyncio.wait_for(counting.until(finished=2), GUARD)
            await asyncio.sleep(0.02)
            with pytest.raises(NotFound):
                await resolver.resolve(tenant, "m")
        return served.version, loop.time() - began, logs

    served, elapsed, logs = asyncio.run(scenario())
    assert served == 1
    assert elapsed < ttl  # the original entry had not expired: the refresh removed it
    assert counting.queries == 3
    assert logs == []  # a model that is gone is not worth a warning


def test_a_failed_refresh_is_logged_and_the_next_call_asks_again(
    registry: Registry, tenant: str
) -> None:
    """Any other error in a background refresh: a warning, and no stale entry left behind."""
    counting = CountingRegistry(registry)
    ttl = 3.0
    resolver = resolver_over(counting, ttl=ttl)

    async def scenario() -> tuple[list[dict[str, Any]], int]:
        await resolver.resolve(tenant, "m")
        await asyncio.sleep(ttl * 0.5 + 0.1)
        counting.fail_with = RuntimeError("database went away")
        with capture_logs() as logs:
            await resolver.resolve(tenant, "m")
            await asyncio.wait_for(counting.until(finished=2), GUARD)
            await asyncio.sleep(0.02)
        counting.fail_with = None
        again = await resolver.resolve(tenant, "m")
        return logs, again.version

    logs, version = asyncio.run(scenario())
    assert version == 1
    assert counting.queries == 3
    assert [(entry["event"], entry["error_type"]) for entry in logs] == [
        ("model resolution refresh failed", "RuntimeError")
    ]


def test_labels_and_numbers_are_separate_entries(registry: Registry, tenant: str) -> None:
    """``None``, ``"1"`` and a label each have their own entry and their own answer."""
    put(registry, tenant)  # version 2 is the latest
    registry.set_label(tenant, "m", "stable", 1)
    counting = CountingRegistry(registry)
    resolver = resolver_over(counting, ttl=5.0)

    async def scenario() -> list[int]:
        refs = [None, "1", "stable", None, "1", "stable"]
        return [(await resolver.resolve(tenant, "m", ref)).version for ref in refs]

    assert asyncio.run(scenario()) == [2, 1, 1, 2, 1, 1]
    assert counting.queries == 3


def test_a_full_cache_starts_over(registry: Registry, tenant: str) -> None:
    """At ``max_entries`` the cache is emptied before the next entry goes in."""
    put(registry, tenant, "n")
    put(registry, tenant, "o")
    counting = CountingRegistry(registry)
    resolver = resolver_over(counting, ttl=5.0, max_entries=2)

    async def scenario() -> None:
        for name in ("m", "n", "m", "n"):  # two entries fit: two queries
            await resolver.resolve(tenant, name)
        assert counting.queries == 2
        await resolver.resolve(tenant, "o")  # third: the cache is cleared, "o" stored
        await resolver.resolve(tenant, "o")
        assert counting.queries == 3
        await resolver.resolve(tenant, "m")  # forgotten with the rest
        assert counting.queries == 4

    asyncio.run(scenario())
