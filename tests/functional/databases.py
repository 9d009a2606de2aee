"""A database URL of each kind for suites that start real servers.

Functional suites otherwise run on the data directory's SQLite file; these
fixtures give a server its own PostgreSQL database too when
``SEALSERVE_TEST_POSTGRES_URL`` names a server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.conftest import (
    POSTGRES_ENV,
    create_postgres_database,
    drop_postgres_database,
    postgres_admin_url,
)

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def server_database(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Extra server environment: none for SQLite, ``SEALSERVE_DATABASE_URL`` for PostgreSQL."""
    if request.param == "sqlite":
        yield {}
        return
    if postgres_admin_url() is None:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    url = create_postgres_database()
    try:
        yield {"SEALSERVE_DATABASE_URL": url}
    finally:
        drop_postgres_database(url)
