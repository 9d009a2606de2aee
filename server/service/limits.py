"""Per-tenant limits on inference: how many calls at once, and how many per second.

One tenant flooding the server must not starve the others, so each tenant
gets its own concurrency cap and its own token bucket, checked before any
work is queued for a worker. A call over either limit is refused at once
with ``TenantLimited``, an ``Overloaded`` (429 with ``Retry-After`` over REST, RESOURCE_EXHAUSTED
over gRPC) instead of waiting: a queue the flooding tenant could fill would
delay everyone behind it.

State is in memory, or, when several gateway processes share the host's
ports, in a file all of them map (``SharedTenantTable``): the limits then
hold for the tenant's calls to the host, whichever process receives them.
Each process keeps its own count of the calls it has in flight, so a
process that dies does not leave its calls counted against the tenant once
it restarts. Buckets of tenants idle for a while are dropped from the
in-memory table so it stays small.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import mmap
import os
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

import structlog

from server.service.errors import TenantLimited

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

log = structlog.get_logger(__name__)

IDLE_FORGET_SECONDS = 300.0
"""A tenant with no call in flight and a full bucket this long is forgotten."""
_SWEEP_EVERY = 1024
MAX_GATEWAYS = 64
"""Gateway processes a shared table counts calls for (``--gateways`` is capped at this)."""
SHARED_SLOTS = 4096
"""Tenants a shared table holds; more fall back to per-process limits (with a warning)."""
REFUSING_SECONDS = 1.0
"""How long after a refusal ``refusing`` stays true."""


@dataclass(slots=True)
class _Tenant:
    in_flight: int
    tokens: float
    refilled: float


class Admission:
    """One call counted against its tenant's limits until ``release`` (a no-op after the first).

    A transport admits a call as soon as it knows the tenant, before reading
    or decoding its body, and the admission travels with the call: each call
    takes its token once, and a burst of calls arriving together cannot all
    pass a check that the first of them then empties.
    """

    __slots__ = ("_limits", "tenant_id")

    def __init__(self, limits: TenantLimits | None, tenant_id: str | None) -> None:
        self._limits = limits
        self.tenant_id = tenant_id

    def release(self) -> None:
        """The call is over (however it ended): free its place in the concurrency cap."""
        limits, self._limits = self._limits, None
        if limits is not None and self.tenant_id is not None:
            limits.release(self.tenant_id)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


NOT_LIMITED = Admission(None, None)
"""The admission of a call no limit applies to."""


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
        shared: SharedTenantTable | None = None,
    ) -> None:
        self.max_concurrency = max_concurrency
        self.rate = rate
        self.burst = float(burst or max(1, math.ceil(rate)))
        self._clock = clock
        self._on_limited = on_limited
        self._shared = shared
        self._tenants: dict[str, _Tenant] = {}
        self._checks = 0
        self._refused_at = float("-inf")
        self._empty_until: dict[str, float] = {}
        """Tenants whose bucket was found empty, and when its next token is due.

        Until then a call is refused without looking at the bucket: nothing but
        time refills it. A flood is then mostly refused without touching the
        shared table or its lock.
        """

    @property
    def enabled(self) -> bool:
        """Whether any limit applies (when not, ``acquire`` is never needed)."""
        return bool(self.max_concurrency or self.rate)

    def refusing(self) -> bool:
        """Whether this process refused a call in the last ``REFUSING_SECONDS``.

        While no tenant is over its limits this is false, and a transport
        need not look a call's tenant up early just to learn it is admitted.
        """
        return self._clock() - self._refused_at < REFUSING_SECONDS

    def in_flight(self, tenant_id: str) -> int:
        """Calls the tenant has running now (in every process sharing the table)."""
        with self._state(tenant_id, self._clock(), create=False) as state:
            return 0 if state is None else state.in_flight

    def acquire(self, tenant_id: str) -> None:
        """Admit one call of ``tenant_id`` or raise ``TenantLimited``; pair with ``release``."""
        now = self._clock()
        self._refuse_while_empty(tenant_id, now)
        with self._state(tenant_id, now, create=True) as state:
            assert state is not None  # noqa: S101 - created on demand
            self._refill(state, now)
            self._refuse_if_over(tenant_id, state, now)
            if self.rate:
                state.tokens -= 1.0
            state.in_flight += 1

    def admit(self, tenant_id: str) -> Admission:
        """``acquire`` one call of ``tenant_id``, held by the returned ``Admission``."""
        self.acquire(tenant_id)
        return Admission(self, tenant_id)

    def release(self, tenant_id: str) -> None:
        """One admitted call of ``tenant_id`` finished (however it ended)."""
        with self._state(tenant_id, self._clock(), create=False) as state:
            if state is not None and state.in_flight > 0:
                state.in_flight -= 1

    @contextlib.contextmanager
    def _state(self, tenant_id: str, now: float, *, create: bool) -> Iterator[_Tenant | None]:
        """The tenant's state to read and change (written back to the shared table, if any)."""
        if self._shared is not None and tenant_id not in self._tenants:
            try:
                with self._shared.tenant(tenant_id, now, self.burst, create=create) as shared:
                    yield shared
            except TableFull:
                log.warning("tenant limit table is full; this tenant is limited per process")
            else:
                return
        state = self._tenants.get(tenant_id)
        if state is None and create:
            state = self._tenants[tenant_id] = _Tenant(0, self.burst, now)
            self._sweep(now)
        yield state

    def _refill(self, state: _Tenant, now: float) -> None:
        if self.rate:
            state.tokens = min(self.burst, state.tokens + (now - state.refilled) * self.rate)
            state.refilled = now

    def _refuse_if_over(self, tenant_id: str, state: _Tenant, now: float) -> None:
        if self.max_concurrency and state.in_flight >= self.max_concurrency:
            self._refused(tenant_id, "concurrency")
            raise TenantLimited(
                "too many concurrent inference calls for this tenant; retry later",
                reason="concurrency",
                retry_after=1.0,
            )
        if self.rate and state.tokens < 1.0 - 1e-9:  # float noise must not refuse an exact refill
            wait = (1.0 - state.tokens) / self.rate
            if len(self._empty_until) >= _SWEEP_EVERY:
                self._empty_until = {t: u for t, u in self._empty_until.items() if u > now}
            self._empty_until[tenant_id] = now + wait
            self._refuse_for_rate(tenant_id, wait)

    def _refuse_while_empty(self, tenant_id: str, now: float) -> None:
        until = self._empty_until.get(tenant_id)
        if until is not None:
            if now < until - 1e-9:  # the same float allowance as the bucket's own check
                self._refuse_for_rate(tenant_id, until - now)
            del self._empty_until[tenant_id]

    def _refuse_for_rate(self, tenant_id: str, wait: float) -> None:
        self._refused(tenant_id, "rate")
        raise TenantLimited(
            "this tenant's inference rate limit is exceeded; retry later",
            reason="rate",
            retry_after=wait,
        )

    def _refused(self, tenant_id: str, reason: str) -> None:
        self._refused_at = self._clock()
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


_EMPTY = bytes(16)
"""The digest field of a slot no tenant holds."""


class TableFull(Exception):  # noqa: N818 - a condition the caller handles
    """The shared table has no slot left for another tenant."""


class SharedTenantTable:
    """Tenant limit state in a file every gateway process of the host maps.

    One slot per tenant: its id's digest, its bucket (tokens, last refill)
    and one in-flight count per gateway process; the concurrency cap counts
    them all. Every read-modify-write holds an exclusive ``fcntl`` lock on
    the tenant's slot only (two system calls), so tenants never wait for
    each other; claiming a slot locks a byte past the table. Slots are never
    freed (a few thousand tenants fit), so a tenant's slot, once found, is
    remembered. Every process must use the same number of slots.
    """

    _HEAD = struct.Struct("<16sdd")
    _BUCKET = struct.Struct("<dd")
    _FLIGHT = struct.Struct(f"<{MAX_GATEWAYS}i")
    SLOT_BYTES = _HEAD.size + _FLIGHT.size

    def __init__(self, path: Path, *, gateway: int, slots: int = SHARED_SLOTS) -> None:
        if not 0 <= gateway < MAX_GATEWAYS:
            msg = f"gateway index {gateway} is outside 0..{MAX_GATEWAYS - 1}"
            raise ValueError(msg)
        self._gateway = gateway
        self._slots = slots
        self._found: dict[str, int] = {}
        size = slots * self.SLOT_BYTES
        self._claim_offset = size
        """A byte past the slots: its lock serialises finding and claiming slots."""
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with self._locked():
            if os.fstat(self._fd).st_size < size:
                os.ftruncate(self._fd, size)
            self._map = mmap.mmap(self._fd, size)
            # This process may be a restart: the calls it had in flight died with it.
            for slot in range(slots):
                if self._digest_at(slot) != _EMPTY:
                    self._set_own(slot, 0)

    def close(self) -> None:
        """Unmap the table and close the file."""
        self._map.close()
        os.close(self._fd)

    @contextlib.contextmanager
    def tenant(
        self, tenant_id: str, now: float, burst: float, *, create: bool
    ) -> Iterator[_Tenant | None]:
        """Under the lock: the tenant's state, written back on exit (``None``: not in the table).

        Raises ``TableFull`` when ``create`` finds no room for a new tenant.
        """
        slot = self._found.get(tenant_id)
        if slot is None:
            with self._locked(self._claim_offset, 1):
                slot = self._slot(tenant_id, now, burst, create=create)
            if slot is None:
                yield None
                return
        offset = slot * self.SLOT_BYTES
        with self._locked(offset, self.SLOT_BYTES):
            _, tokens, refilled = self._HEAD.unpack_from(self._map, offset)
            flights = self._FLIGHT.unpack_from(self._map, offset + self._HEAD.size)
            total = sum(flights)
            state = _Tenant(total, tokens, refilled)
            try:
                yield state
            finally:
                self._BUCKET.pack_into(self._map, offset + 16, state.tokens, state.refilled)
                own = flights[self._gateway] + state.in_flight - total
                self._set_own(slot, max(0, own))

    def _slot(self, tenant_id: str, now: float, burst: float, *, create: bool) -> int | None:
        digest = self._digest(tenant_id)
        start = int.from_bytes(digest[:8], "little") % self._slots
        for step in range(self._slots):
            slot = (start + step) % self._slots
            held = self._digest_at(slot)
            if held == digest:
                self._found[tenant_id] = slot
                return slot
            if held == _EMPTY:
                if not create:
                    return None
                offset = slot * self.SLOT_BYTES
                self._HEAD.pack_into(self._map, offset, digest, burst, now)
                self._FLIGHT.pack_into(self._map, offset + self._HEAD.size, *([0] * MAX_GATEWAYS))
                self._found[tenant_id] = slot
                return slot
        if create:
            raise TableFull
        return None

    def _digest_at(self, slot: int) -> bytes:
        offset = slot * self.SLOT_BYTES
        return bytes(self._map[offset : offset + 16])

    def _set_own(self, slot: int, count: int) -> None:
        offset = slot * self.SLOT_BYTES + self._HEAD.size + 4 * self._gateway
        struct.pack_into("<i", self._map, offset, count)

    @staticmethod
    def _digest(tenant_id: str) -> bytes:
        return hashlib.blake2b(tenant_id.encode(), digest_size=16).digest()

    @contextlib.contextmanager
    def _locked(self, start: int = 0, length: int = 0) -> Iterator[None]:
        """An exclusive lock on bytes ``start`` to ``start + length`` (0: to the end, and past)."""
        fcntl.lockf(self._fd, fcntl.LOCK_EX, length, start)
        try:
            yield
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, length, start)
