"""Liveness and readiness, the same answer for REST and gRPC."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog
from sqlalchemy.exc import SQLAlchemyError

from server import schema

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

log = structlog.get_logger(__name__)


class HealthService:
    """Ready means: the database answers and its schema is the one the code expects.

    The answer is cached for ``cache_seconds`` so a probe storm cannot turn
    into a query storm.
    """

    def __init__(self, engine: Engine, *, cache_seconds: float = 1.0) -> None:
        self._engine = engine
        self._cache_seconds = cache_seconds
        self._checked_at = float("-inf")
        self._ready = False

    def ready(self) -> bool:
        """Whether the server can take traffic now."""
        now = time.monotonic()
        if now - self._checked_at >= self._cache_seconds:
            self._ready = self._check()
            self._checked_at = now
        return self._ready

    def _check(self) -> bool:
        try:
            return schema.is_current(self._engine)
        except SQLAlchemyError as exc:
            log.warning("database not reachable", error=type(exc).__name__)
            return False
