"""Schema migrations, driven from code (``sealserve db ...`` and server start).

Alembic's configuration is built here rather than read from an ini file, so
the URL always comes from the settings the process was started with.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

import migrations

SCRIPT_LOCATION = str(Path(migrations.__file__).parent)


def alembic_config(engine: Engine) -> Config:
    """An Alembic config bound to ``engine``'s URL and our migrations."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.set_main_option(
        "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema to ``revision``."""
    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade the schema to ``revision`` (``base`` empties it)."""
    command.downgrade(alembic_config(engine), revision)


def head_revision(engine: Engine) -> str | None:
    """The newest revision the code knows."""
    del engine  # the migrations ship with the code: the same for every database
    return _code_head()


@functools.cache
def _code_head() -> str | None:
    # Reading the migration scripts costs tens of milliseconds, and readiness
    # checks ask every few seconds from the serving process: once is enough.
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return ScriptDirectory.from_config(config).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (``None`` when never migrated)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def is_current(engine: Engine) -> bool:
    """Whether the database schema matches the code."""
    return current_revision(engine) == head_revision(engine)
