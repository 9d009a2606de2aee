"""Liveness and readiness, the same answer for REST and gRPC."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog
from sqlalchemy.exc import SQLAlchemyError

from server import schema

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.engine import Engine

log = structlog.get_logger(__name__)


class HealthService:
    """Ready: database up and migrated, and every gateway process taking connections.

    The answer is cached for ``cache_seconds`` so a probe storm cannot turn
    into a query storm.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        cache_seconds: float = 1.0,
        gateways_listening: Callable[[], bool] | None = None,
    ) -> None:
        self._engine = engine
        self._cache_seconds = cache_seconds
        self._gateways_listening = gateways_listening
        self._checked_at = float("-inf")
        self._problem: str | None = "not checked yet"

    def ready(self) -> bool:
        """Whether the server can take traffic now."""
        return self.problem() is None

    def problem(self) -> str | None:
        """Why the server cannot take traffic now, or ``None`` when it can."""
        now = time.monotonic()
        if now - self._checked_at >= self._cache_seconds:
            self._problem = self._check()
            self._checked_at = now
        return self._problem

    def _check(self) -> str | None:
        try:
            if not schema.is_current(self._engine):
                return "the database schema is not migrated"
        except SQLAlchemyError as exc:
            log.warning("database not reachable", error=type(exc).__name__)
            return "the database is unavailable"
        if self._gateways_listening is not None and not self._gateways_listening():
            # Clients that connect now would all land on the gateways already up and,
            # with keep-alive, stay there: the group is ready only as a whole.
            return "gateway processes are still starting"
        return None
