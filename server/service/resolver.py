"""Model resolution with a short-lived cache, so the hot path does no query per call.

``(tenant, model, version-or-label)`` → the version to run. Entries live for
``ttl`` seconds, so a label moved by another gateway is followed within that
time; a change made through this process invalidates its tenant at once.
Misses (including "not found") are not cached: a model uploaded a moment ago
must be callable now.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

if TYPE_CHECKING:
    from storage import ModelVersionInfo, Registry

CacheKey = tuple[str, str, str | None]


class ModelResolver:
    """Finds the version a call names inside the caller's tenant."""

    def __init__(self, registry: Registry, *, ttl: float = 2.0, max_entries: int = 10_000) -> None:
        self._registry = registry
        self._ttl = ttl
        self._max_entries = max_entries
        self._cache: dict[CacheKey, tuple[float, ModelVersionInfo]] = {}

    async def resolve(self, tenant_id: str, model: str, ref: str | None = None) -> ModelVersionInfo:
        """The version for ``ref`` (number, label, or ``None`` for the latest ready one)."""
        key = (tenant_id, model, ref)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        info = await run_in_threadpool(self._registry.resolve, tenant_id, model, ref)
        if len(self._cache) >= self._max_entries:
            self._cache.clear()
        self._cache[key] = (now + self._ttl, info)
        return info

    def invalidate(self, tenant_id: str) -> None:
        """Forget every entry of one tenant (after an upload, label move or delete)."""
        for key in [k for k in self._cache if k[0] == tenant_id]:
            self._cache.pop(key, None)
