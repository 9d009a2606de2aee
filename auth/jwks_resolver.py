"""An external issuer's verification keys, from its JWKS, cached and refreshed lazily.

Key lookups happen on the request path, so fetching is rate-limited: the
document is re-read when a token names a ``kid`` we do not hold (the issuer
may have rotated), but at most once per ``min_refresh_interval`` (one minute
by default), so a flood of tokens with made-up ``kid`` values costs the
issuer one request a minute, not one per token. It is also re-read once it is
``max_age`` old, so a key the issuer withdrew stops verifying within that
time. A failed refresh keeps the keys we have; with none at all, lookups fail
closed with ``Unauthenticated``.

Fetching is blocking I/O (bounded by a short timeout); an async server should
run cache-missing verifications in a worker thread, or call ``refresh()`` at
start-up and from a background task.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import httpx
import structlog

from auth.errors import Unauthenticated
from auth.jwk import VerificationKey, parse_jwks

if TYPE_CHECKING:
    from pathlib import Path

MAX_JWKS_BYTES = 256 * 1024
DEFAULT_TIMEOUT = 3.0

_log = structlog.get_logger(__name__)

JwksSource = Callable[[], bytes]
"""Returns the current JWKS document's bytes, or raises."""


class JwksKeyResolver:
    """A ``KeyResolver`` backed by a JWKS document (a file or a URL).

    Thread-safe; concurrent lookups that need a refresh share one fetch.
    """

    def __init__(
        self,
        *,
        source: JwksSource,
        algorithms: Iterable[str],
        min_refresh_interval: float = 60.0,
        max_age: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._algorithms = frozenset(algorithms)
        self._min_refresh_interval = min_refresh_interval
        self._max_age = max_age
        self._clock = clock
        self._keys: dict[str, VerificationKey] | None = None
        self._loaded_at = float("-inf")
        self._attempted_at = float("-inf")
        self._lock = threading.Lock()

    def __call__(self, kid: str) -> VerificationKey | None:
        """Return the key for ``kid``, refreshing the document first if stale or lacking it."""
        now = self._clock()
        keys = self._keys
        if keys is None or now - self._loaded_at >= self._max_age or kid not in keys:
            keys = self._maybe_refresh(now)
        return keys.get(kid)

    def refresh(self) -> None:
        """Fetch and parse the document now, ignoring the rate limit; raises on failure."""
        with self._lock:
            self._attempted_at = self._clock()
            self._load()

    def _maybe_refresh(self, now: float) -> dict[str, VerificationKey]:
        with self._lock:
            # Another thread may have refreshed while we waited for the lock.
            if now - self._attempted_at >= self._min_refresh_interval:
                self._attempted_at = now
                try:
                    self._load()
                except (OSError, ValueError, httpx.HTTPError) as error:
                    _log.warning("jwks_refresh_failed", error=type(error).__name__)
            if self._keys is None:
                raise Unauthenticated(
                    "token issuer keys are unavailable", detail="JWKS never loaded"
                )
            return self._keys

    def _load(self) -> None:
        keys = parse_jwks(self._source(), algorithms=self._algorithms)
        self._keys = keys
        self._loaded_at = self._clock()


def file_source(path: Path) -> JwksSource:
    """Make a ``JwksSource`` that reads a local file (size-bounded)."""

    def read() -> bytes:
        with path.open("rb") as handle:
            data = handle.read(MAX_JWKS_BYTES + 1)
        if len(data) > MAX_JWKS_BYTES:
            raise ValueError("JWKS document is too large")
        return data

    return read


def url_source(url: str, *, client: httpx.Client | None = None) -> JwksSource:
    """Make a ``JwksSource`` that GETs ``url``: no redirects, short timeout, bounded body.

    The URL comes from configuration, never from a token (RFC 8725 §3.10:
    ``jku``/``x5u`` are refused before anything is fetched).
    """
    http = client or httpx.Client(timeout=DEFAULT_TIMEOUT, follow_redirects=False)

    def fetch() -> bytes:
        with http.stream("GET", url, headers={"Accept": "application/json"}) as response:
            if response.status_code != httpx.codes.OK:
                raise ValueError(f"JWKS endpoint answered {response.status_code}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("JWKS document is too large")
        return bytes(body)

    return fetch
