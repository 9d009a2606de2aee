"""Model resolution with a short-lived cache, so the hot path does no query per call.

``(tenant, model, version-or-label)`` → the version to run. Entries live for
``ttl`` seconds, so a label moved by another gateway is followed within that
time (plus one query); a change made through this process invalidates its
tenant at once. Misses (including "not found") are not cached: a model
uploaded a moment ago must be callable now.

Under load an expiring entry must not send every concurrent call to the
database at once (at thousands of calls a second that stampede was the
tail of the latency curve): in the second half of its life an entry is
refreshed by one background query while it keeps answering, and concurrent
misses for one key share a single query. No entry is ever served past
``ttl``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import structlog
from starlette.concurrency import run_in_threadpool

from storage.errors import NotFound

if TYPE_CHECKING:
    from storage import ModelVersionInfo, Registry

log = structlog.get_logger(__name__)

CacheKey = tuple[str, str, str | None]


class ModelResolver:
    """Finds the version a call names inside the caller's tenant."""

    def __init__(self, registry: Registry, *, ttl: float = 2.0, max_entries: int = 10_000) -> None:
        self._registry = registry
        self._ttl = ttl
        self._max_entries = max_entries
        self._cache: dict[CacheKey, tuple[float, ModelVersionInfo]] = {}
        self._queries: dict[CacheKey, asyncio.Future[ModelVersionInfo]] = {}
        self._generation: dict[str, int] = {}
        """Per tenant, bumped by ``invalidate``: a query begun before it is not cached."""

    async def resolve(self, tenant_id: str, model: str, ref: str | None = None) -> ModelVersionInfo:
        """The version for ``ref`` (number, label, or ``None`` for the latest ready one)."""
        key = (tenant_id, model, ref)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is None or hit[0] <= now:
            return await asyncio.shield(self._query(key))
        expires, info = hit
        if expires - now < self._ttl / 2 and key not in self._queries:
            self._query(key).add_done_callback(_dropped)
        return info

    def invalidate(self, tenant_id: str) -> None:
        """Forget every entry of one tenant (after an upload, label move or delete)."""
        self._generation[tenant_id] = self._generation.get(tenant_id, 0) + 1
        for key in [k for k in self._cache if k[0] == tenant_id]:
            self._cache.pop(key, None)

    def _query(self, key: CacheKey) -> asyncio.Future[ModelVersionInfo]:
        """The one query in flight for ``key``, started if there is none."""
        query = self._queries.get(key)
        if query is None:
            query = asyncio.ensure_future(self._fetch(key))
            self._queries[key] = query
            query.add_done_callback(lambda _: self._queries.pop(key, None))
        return query

    async def _fetch(self, key: CacheKey) -> ModelVersionInfo:
        generation = self._generation.get(key[0], 0)
        try:
            info = await run_in_threadpool(self._registry.resolve, *key)
        except BaseException:
            self._cache.pop(key, None)  # gone, or unknown: the next call asks again
            raise
        if self._generation.get(key[0], 0) == generation:
            if len(self._cache) >= self._max_entries:
                self._cache.clear()
            self._cache[key] = (time.monotonic() + self._ttl, info)
        return info


def _dropped(query: asyncio.Future[ModelVersionInfo]) -> None:
    """A background refresh's outcome: nobody awaits it, so its error is read here."""
    if query.cancelled():
        return
    error = query.exception()
    if error is not None and not isinstance(error, NotFound):
        log.warning("model resolution refresh failed", error_type=type(error).__name__)
