"""Schema migrations, driven from code (``sealserve db ...`` and server start).

Alembic's configuration is built here rather than read from an ini file, so
the URL always comes from the settings the process was started with.
Alembic itself is imported only to migrate: checking that a database is
current (every CLI command, server start and readiness check) is one query
against ``migrations.HEAD``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text

import migrations

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Engine

SCRIPT_LOCATION = str(Path(migrations.__file__).parent)


def alembic_config(engine: Engine) -> Config:
    """An Alembic config bound to ``engine``'s URL and our migrations."""
    from alembic.config import Config  # noqa: PLC0415 - only migrating needs Alembic

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.set_main_option(
        "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema to ``revision``."""
    from alembic import command  # noqa: PLC0415 - only migrating needs Alembic

    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade the schema to ``revision`` (``base`` empties it)."""
    from alembic import command  # noqa: PLC0415 - only migrating needs Alembic

    command.downgrade(alembic_config(engine), revision)


def head_revision(engine: Engine) -> str:
    """The newest revision the code knows."""
    del engine  # the migrations ship with the code: the same for every database
    return migrations.HEAD


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (``None`` when never migrated)."""
    with engine.connect() as connection:
        # Alembic keeps a database's revision in this table (its default name).
        if not inspect(connection).has_table("alembic_version"):
            return None
        rows = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    # One row on a linear history; an empty table is a database downgraded to base.
    return ", ".join(sorted(str(row[0]) for row in rows)) or None


def is_current(engine: Engine) -> bool:
    """Whether the database schema matches the code."""
    return current_revision(engine) == head_revision(engine)
