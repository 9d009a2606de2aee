"""Alembic revisions and the ORM metadata describe the same schema, on both databases."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

import migrations
from server import schema
from storage import make_engine
from storage.db import Base
from tests.conftest import create_postgres_database, drop_postgres_database, postgres_admin_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request, tmp_path):
    """A brand-new, empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    if postgres_admin_url() is None:
        pytest.skip("SEALSERVE_TEST_POSTGRES_URL is not set")
    url = create_postgres_database()
    yield url
    drop_postgres_database(url)


def test_upgrade_from_empty_matches_orm_and_downgrade_to_base(empty_url: str) -> None:
    """Upgrade builds exactly the ORM's schema; downgrade removes every table."""
    engine = make_engine(empty_url)
    try:
        assert schema.current_revision(engine) is None
        assert not schema.is_current(engine)
        schema.upgrade(engine)
        assert schema.is_current(engine)
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            assert compare_metadata(context, Base.metadata) == []
        schema.downgrade(engine, "base")
        assert schema.current_revision(engine) is None
        remaining = set(inspect(engine).get_table_names()) - {"alembic_version"}
        assert remaining == set()
    finally:
        engine.dispose()


def test_the_recorded_head_is_the_revision_files_head() -> None:
    """``migrations.HEAD``, which every start checks databases against, is Alembic's head."""
    config = Config()
    config.set_main_option("script_location", schema.SCRIPT_LOCATION)
    assert ScriptDirectory.from_config(config).get_current_head() == migrations.HEAD


def test_a_database_one_revision_behind_is_not_current(tmp_path) -> None:
    """The check reads the database's own revision, not only whether it was migrated."""
    engine = make_engine(f"sqlite:///{tmp_path / 'behind.db'}")
    try:
        schema.upgrade(engine, "0004")
        assert schema.current_revision(engine) == "0004"
        assert not schema.is_current(engine)
        schema.upgrade(engine)
        assert schema.current_revision(engine) == migrations.HEAD
    finally:
        engine.dispose()
