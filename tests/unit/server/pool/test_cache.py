"""Models load once per key, off the event loop, and failures are reported and not kept."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from server.pool.cache import ModelCache
from server.pool.errors import LOAD_FAILED, MODEL_NOT_FOUND, CallFailed
from server.service.types import ModelKey
from storage.errors import DecryptionFailed, NotFound

from .conftest import DIGITS

KEY = ModelKey("tenant", "version")
CONTENT = DIGITS.read_bytes()


class Opener:
    """Counts opens; can block until released, or fail with a queue of errors."""

    def __init__(self, *errors: Exception, release: threading.Event | None = None) -> None:
        self.calls = 0
        self.errors = list(errors)
        self.release = release

    def __call__(self, key: ModelKey) -> bytes:
        """The demo model's bytes, after waiting or failing as configured."""
        del key
        self.calls += 1
        if self.release is not None:
            self.release.wait(5)
        if self.errors:
            raise self.errors.pop(0)
        return CONTENT


def test_concurrent_first_calls_share_one_load() -> None:
    """Ten callers of a cold model cause one open; exactly one of them reports loading it."""
    opener = Opener()
    cache = ModelCache(open_model=opener)

    async def scenario() -> list[bool]:
        results = await asyncio.gather(*(cache.get(KEY) for _ in range(10)))
        assert len({id(model) for model, _ in results}) == 1
        return [started for _, started in results]

    assert sorted(asyncio.run(scenario())) == [False] * 9 + [True]
    assert opener.calls == 1
    assert KEY in cache
    cache.close()


def test_loading_does_not_block_the_event_loop() -> None:
    """While a load waits on storage, the loop keeps running other work."""
    release = threading.Event()
    cache = ModelCache(open_model=Opener(release=release))

    async def scenario() -> float:
        load = asyncio.create_task(cache.get(KEY))
        started = time.monotonic()
        await asyncio.sleep(0.05)
        lag = time.monotonic() - started
        assert not load.done()
        release.set()
        await load
        return lag

    assert asyncio.run(scenario()) < 0.5
    cache.close()


def test_missing_version_is_model_not_found_and_not_remembered() -> None:
    """NotFound becomes MODEL_NOT_FOUND; the next call tries storage again."""
    opener = Opener(NotFound("version x of tenant y not found"))
    cache = ModelCache(open_model=opener)

    async def scenario() -> None:
        with pytest.raises(CallFailed) as caught:
            await cache.get(KEY)
        assert caught.value.code == MODEL_NOT_FOUND
        model, started = await cache.get(KEY)
        assert started
        assert model.bytes_used > len(CONTENT)

    asyncio.run(scenario())
    assert opener.calls == 2
    cache.close()


def test_unsealing_failure_is_load_failed_without_details() -> None:
    """A storage failure reaches the gateway as LOAD_FAILED with a generic text."""
    cache = ModelCache(open_model=Opener(DecryptionFailed("bad tag", detail="segment 3 of key k1")))

    async def scenario() -> None:
        with pytest.raises(CallFailed) as caught:
            await cache.get(KEY)
        assert caught.value.code == LOAD_FAILED
        assert caught.value.message == "the model version could not be unsealed"

    asyncio.run(scenario())
    cache.close()


def test_cancelled_caller_does_not_cancel_the_load() -> None:
    """A caller that gives up leaves the load running for the others."""
    release = threading.Event()
    cache = ModelCache(open_model=Opener(release=release))

    async def scenario() -> None:
        first = asyncio.create_task(cache.get(KEY))
        second = asyncio.create_task(cache.get(KEY))
        await asyncio.sleep(0.01)
        first.cancel()
        release.set()
        model, _ = await second
        assert model is not None

    asyncio.run(scenario())
    assert KEY in cache
    cache.close()


def test_unload_forgets_and_is_idempotent() -> None:
    """Unload reports whether the model was loaded, and sizes follow."""
    cache = ModelCache(open_model=Opener())
    asyncio.run(cache.get(KEY))
    assert cache.bytes_used > len(CONTENT)
    assert [key for key, _ in cache.items()] == [KEY]
    assert cache.unload(KEY) is True
    assert cache.unload(KEY) is False
    assert cache.bytes_used == 0
    assert cache.loaded(KEY) is None
    cache.close()


def _keys(count: int) -> list[ModelKey]:
    return [ModelKey("tenant", f"v{i}") for i in range(count)]


def test_budget_evicts_the_least_recently_used_idle_model() -> None:
    """With room for two models, loading a third evicts the one used longest ago."""
    size = LoadedModelSize.of(CONTENT)
    evicted: list[ModelKey] = []
    cache = ModelCache(open_model=Opener(), budget_bytes=2 * size + 100, on_evict=evicted.append)
    a, b, c = _keys(3)

    async def scenario() -> None:
        await cache.get(a)
        await cache.get(b)
        assert cache.loaded(a) is not None  # a is now the most recently used
        await cache.get(c)

    asyncio.run(scenario())
    assert [key for key, _ in cache.items()] == [a, c]
    assert evicted == [b]
    assert cache.evictions == 1
    assert cache.bytes_used <= cache.budget_bytes
    cache.close()


def test_a_busy_model_is_not_evicted_until_released() -> None:
    """A load that needs a busy model's room waits for its call to finish, then evicts it."""
    size = LoadedModelSize.of(CONTENT)
    cache = ModelCache(open_model=Opener(), budget_bytes=size + 100)
    a, b = _keys(2)

    async def scenario() -> None:
        model, _ = await cache.get(a)
        cache.hold(model)
        loading = asyncio.create_task(cache.get(b))
        await asyncio.sleep(0.1)
        assert not loading.done()
        assert a in cache
        cache.release(model)
        await loading

    asyncio.run(scenario())
    assert [key for key, _ in cache.items()] == [b]
    cache.close()


def test_model_larger_than_the_budget_is_refused() -> None:
    """A model that cannot fit even alone fails to load, naming the budget."""
    cache = ModelCache(open_model=Opener(), budget_bytes=1024)

    async def scenario() -> None:
        with pytest.raises(CallFailed) as caught:
            await cache.get(KEY)
        assert caught.value.code == LOAD_FAILED
        assert "budget" in caught.value.message

    asyncio.run(scenario())
    assert cache.bytes_used == 0
    cache.close()


class LoadedModelSize:
    """The bytes a loaded demo model is accounted at."""

    @staticmethod
    def of(content: bytes) -> int:
        """Load once and read its size."""
        from server.pool.runtime import LoadedModel

        return LoadedModel.load(content).bytes_used


def test_a_model_loaded_for_waiting_callers_is_held_for_them_as_it_is_added() -> None:
    """``acquire``: no other load can evict the model between its arrival and its caller's turn.

    The caller resumes a few turns of the loop after the load adds the model;
    the hold is taken when it is added, so a load needing its room waits.
    """
    size = LoadedModelSize.of(CONTENT)
    cache = ModelCache(open_model=Opener(), budget_bytes=size + 100)
    a, b = _keys(2)

    async def scenario() -> None:
        first = asyncio.create_task(cache.acquire(a))
        while a not in cache:  # noqa: ASYNC110 - it must see the very turn a is added
            await asyncio.sleep(0)
        added = cache.loaded(a)
        assert added is not None
        assert added.in_flight == 1  # held for ``first``, which has not run since
        second = asyncio.create_task(cache.acquire(b))
        await asyncio.sleep(0.2)
        assert not second.done()  # waiting for room, not evicting a
        model = await first
        assert model is added
        assert a in cache
        cache.release(model)
        other = await second
        assert other.in_flight == 1
        cache.release(other)

    asyncio.run(scenario())
    assert [key for key, _ in cache.items()] == [b]
    assert cache.bytes_used <= cache.budget_bytes
    cache.close()


def test_a_caller_that_gives_up_waiting_leaves_no_hold() -> None:
    """Cancelled while the model loads: the load finishes for others, held by nobody."""
    release = threading.Event()
    cache = ModelCache(open_model=Opener(release=release))

    async def scenario() -> int:
        waiter = asyncio.create_task(cache.acquire(KEY))
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        release.set()
        model, _ = await cache.get(KEY)
        return model.in_flight

    assert asyncio.run(scenario()) == 0
    cache.close()


def test_a_loaded_model_is_held_by_acquire_and_freed_by_release() -> None:
    """The warm path holds too: the count is what callers took minus what they released."""
    cache = ModelCache(open_model=Opener())

    async def scenario() -> list[int]:
        model = await cache.acquire(KEY)
        again = await cache.acquire(KEY)
        counts = [model.in_flight]
        cache.release(again)
        counts.append(model.in_flight)
        cache.release(model)
        counts.append(model.in_flight)
        return counts

    assert asyncio.run(scenario()) == [2, 1, 0]
    cache.close()
