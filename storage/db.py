"""Engine, sessions and the unit of work.

One use case is one ``unit_of_work``: it commits when the block ends and
rolls back when it raises, so two writes that belong together land together or
not at all. Repositories never commit.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import QueuePool

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.engine import Engine

# Explicit constraint names, so migrations can refer to them on both databases.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base for every table; its metadata is what Alembic compares."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def normalize_url(url: str) -> str:
    """Pick the drivers we ship: psycopg 3 for PostgreSQL, pysqlite for SQLite."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _sqlite_begin(connection: Any) -> None:
    # pysqlite's own implicit BEGIN is off (see _sqlite_pragmas); we begin
    # explicitly so a writing unit of work can take the write lock up front.
    # A deferred transaction that reads and then writes fails at once with
    # SQLITE_BUSY when another process committed in between (WAL snapshot);
    # BEGIN IMMEDIATE waits for the lock instead (busy_timeout).
    mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (workers, health checks) run beside the one writer;
    # synchronous=FULL makes a committed model survive power loss; foreign
    # keys are off by default in SQLite and the cascades depend on them.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
    dbapi_connection.isolation_level = None  # transactions begin in _sqlite_begin


def dumps_json(value: Any) -> str:
    """The text a JSON column stores for ``value``: what reads back as an equal value.

    orjson when its text is ASCII and decodes to a value equal to ``value``,
    else the standard library. The audit log writes thousands of call
    records a second from a thread that shares the interpreter with the
    calls, and orjson encodes them more than ten times faster. The check
    keeps on the old path what orjson would change: NaN (which it writes
    as null), a tuple, a key that is not a string, an integer past 64 bits,
    and text outside ASCII (which the standard library escapes, so a
    database whose encoding is not UTF-8 takes it as before).
    """
    try:
        text = orjson.dumps(value)
        if text.isascii() and orjson.loads(text) == value:
            return text.decode()
    except TypeError:  # orjson.JSONEncodeError: a type or a size it does not take
        pass
    return json.dumps(value)


def make_engine(url: str, *, echo: bool = False, pool_size: int = 5) -> Engine:
    """Create an engine with the settings this project relies on.

    SQLite gets its pragmas on every new connection and a small pool, so the
    pragmas and the file open are paid once per connection rather than once
    per unit of work (in-memory databases keep SQLAlchemy's single-connection
    pool). PostgreSQL runs at READ COMMITTED with a bounded pool that checks
    connections before use.
    """
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            echo=echo,
            json_serializer=dumps_json,
            connect_args={"check_same_thread": False, "timeout": 30},
            **(
                {}
                if ":memory:" in url or url in ("sqlite://", "sqlite:///")
                else {
                    "poolclass": QueuePool,
                    "pool_size": pool_size,
                    "max_overflow": pool_size,
                }
            ),
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(
        url,
        echo=echo,
        json_serializer=dumps_json,
        isolation_level="READ COMMITTED",
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
    )


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded values after commit (results outlive the block)."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def unit_of_work(factory: sessionmaker[Session], *, write: bool = False) -> Iterator[Session]:
    """Open a session for one use case: commit on success, roll back on error.

    ``write`` marks a use case that writes: on SQLite it takes the write lock
    when it begins, so concurrent writers from several processes queue
    instead of failing (PostgreSQL ignores the option: row locks do this).
    """
    session = factory()
    if write:
        session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
