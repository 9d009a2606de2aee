"""Readiness: the database, its schema, and (with several gateways) the whole group listening."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import create_engine

from server.replicas import all_listening, mark_listening
from server.service.health import HealthService

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy.engine import Engine


def test_a_migrated_database_is_ready(engine: Engine) -> None:
    """Both databases: migrated and reachable means ready, with no problem named."""
    health = HealthService(engine)
    assert health.problem() is None
    assert health.ready()


def test_an_unmigrated_database_names_the_problem(tmp_path: Path) -> None:
    """An empty database is reachable but not migrated: not ready, and the answer says why."""
    health = HealthService(create_engine(f"sqlite:///{tmp_path / 'empty.db'}"))
    assert health.problem() == "the database schema is not migrated"
    assert not health.ready()


def test_the_group_is_ready_only_once_every_gateway_listened(
    engine: Engine, tmp_path: Path
) -> None:
    """Three gateways: not ready until the last one has marked itself listening."""
    health = HealthService(
        engine, cache_seconds=0, gateways_listening=lambda: all_listening(tmp_path, 3)
    )
    for index in (0, 2):
        mark_listening(tmp_path, index)
        assert health.problem() == "gateway processes are still starting"
    mark_listening(tmp_path, 1)
    assert health.problem() is None


def test_the_answer_is_cached(engine: Engine, tmp_path: Path) -> None:
    """Within ``cache_seconds`` a probe storm gets the last answer, not a new check."""
    health = HealthService(
        engine, cache_seconds=60, gateways_listening=lambda: all_listening(tmp_path, 1)
    )
    assert not health.ready()
    mark_listening(tmp_path, 0)
    assert not health.ready()
