"""A bounded LRU of verified tokens, so the signature is checked once per token.

Keyed by the exact token string: a token that differs in one byte is a
different key and goes through full verification. Only tokens that verified
are stored (a cache of failures would be a memory lever for anyone sending
junk), and each entry is dropped once its token has expired. Revocation is
*not* cached: the verifier consults the deny-list and tenant suspension on
every call, hit or miss.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from auth.principal import Principal


class PrincipalCache:
    """Token → (principal, valid-until) with LRU eviction at ``max_entries``.

    Thread-safe: gateways may verify on several threads. The lock covers a
    dict operation only, so contention stays negligible.
    """

    def __init__(self, *, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self._max_entries = max_entries
        self._entries: OrderedDict[str, tuple[Principal, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token: str) -> tuple[Principal, int] | None:
        """Return the cached principal and the time it stops being valid, or ``None``."""
        with self._lock:
            entry = self._entries.get(token)
            if entry is not None:
                self._entries.move_to_end(token)
            return entry

    def put(self, token: str, principal: Principal, *, valid_until: int) -> None:
        """Remember a verified token until ``valid_until`` (Unix seconds)."""
        if self._max_entries == 0:
            return
        with self._lock:
            self._entries[token] = (principal, valid_until)
            self._entries.move_to_end(token)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def discard(self, token: str) -> None:
        """Forget one token (it expired)."""
        with self._lock:
            self._entries.pop(token, None)

    def clear(self) -> None:
        """Forget every token, e.g. after an emergency removal of a signing key."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
