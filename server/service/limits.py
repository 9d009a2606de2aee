"""Per-tenant limits on inference: how many calls at once, and how many per second.

One tenant flooding the server must not starve the others, so each tenant
gets its own concurrency cap and its own token bucket, checked before any
work is queued for a worker. A call over either limit is refused at once
with ``Overloaded`` (429 with ``Retry-After`` over REST, RESOURCE_EXHAUSTED
over gRPC) instead of waiting: a queue the flooding tenant could fill would
delay everyone behind it.

State is per gateway process and in memory: with several gateway processes
each enforces the configured limits on the calls it receives. Buckets of
tenants idle for a while are dropped so the table stays small.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from server.service.errors import Overloaded

if TYPE_CHECKING:
    from collections.abc import Callable

IDLE_FORGET_SECONDS = 300.0
"""A tenant with no call in flight and a full bucket this long is forgotten."""
_SWEEP_EVERY = 1024


@dataclass(slots=True)
class _Tenant:
    in_flight: int
    tokens: float
    refilled: float


class TenantLimits:
    """Concurrency caps and token buckets, one of each per tenant; 0 disables a limit."""

    def __init__(
        self,
        *,
        max_concurrency: int = 0,
        rate: float = 0.0,
        burst: int = 0,
        clock: Callable[[], float] = time.monotonic,
        on_limited: Callable[[str, str], None] | None = None,
    ) -> None:
        self.max_concurrency = max_concurrency
        self.rate = rate
        self.burst = float(burst or max(1, math.ceil(rate)))
        self._clock = clock
        self._on_limited = on_limited
        self._tenants: dict[str, _Tenant] = {}
        self._checks = 0

    @property
    def enabled(self) -> bool:
        """Whether any limit applies (when not, ``acquire`` is never needed)."""
        return bool(self.max_concurrency or self.rate)

    def in_flight(self, tenant_id: str) -> int:
        """Calls the tenant has running now."""
        state = self._tenants.get(tenant_id)
        return 0 if state is None else state.in_flight

    def acquire(self, tenant_id: str) -> None:
        """Admit one call of ``tenant_id`` or raise ``Overloaded``; pair with ``release``."""
        now = self._clock()
        state = self._tenants.get(tenant_id)
        if state is None:
            state = self._tenants[tenant_id] = _Tenant(0, self.burst, now)
            self._sweep(now)
        self._refill(state, now)
        self._refuse_if_over(tenant_id, state)
        if self.rate:
            state.tokens -= 1.0
        state.in_flight += 1

    def check(self, tenant_id: str) -> None:
        """Raise ``Overloaded`` now if ``acquire`` would; admits nothing.

        Lets a transport refuse a call before reading and decoding its body,
        so a tenant far over its limits costs the server as little as possible.
        """
        state = self._tenants.get(tenant_id)
        if state is not None:
            self._refill(state, self._clock())
            self._refuse_if_over(tenant_id, state)

    def _refill(self, state: _Tenant, now: float) -> None:
        if self.rate:
            state.tokens = min(self.burst, state.tokens + (now - state.refilled) * self.rate)
            state.refilled = now

    def _refuse_if_over(self, tenant_id: str, state: _Tenant) -> None:
        if self.max_concurrency and state.in_flight >= self.max_concurrency:
            self._refused(tenant_id, "concurrency")
            raise Overloaded(
                "too many concurrent inference calls for this tenant; retry later",
                retry_after=1.0,
            )
        if self.rate and state.tokens < 1.0 - 1e-9:  # float noise must not refuse an exact refill
            self._refused(tenant_id, "rate")
            raise Overloaded(
                "this tenant's inference rate limit is exceeded; retry later",
                retry_after=(1.0 - state.tokens) / self.rate,
            )

    def release(self, tenant_id: str) -> None:
        """One admitted call of ``tenant_id`` finished (however it ended)."""
        state = self._tenants.get(tenant_id)
        if state is not None and state.in_flight > 0:
            state.in_flight -= 1

    def _refused(self, tenant_id: str, reason: str) -> None:
        if self._on_limited is not None:
            self._on_limited(tenant_id, reason)

    def _sweep(self, now: float) -> None:
        self._checks += 1
        if self._checks % _SWEEP_EVERY:
            return
        idle = [
            tenant
            for tenant, state in self._tenants.items()
            if state.in_flight == 0 and now - state.refilled > IDLE_FORGET_SECONDS
        ]
        for tenant in idle:
            del self._tenants[tenant]
