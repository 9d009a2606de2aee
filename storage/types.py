"""Reusable column types, so every table spells ids and times the same way."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from sqlalchemy import DateTime, String, TypeDecorator
from sqlalchemy.orm import mapped_column


def new_id() -> str:
    """A random id for a new row (UUID4 text: portable across both databases)."""
    return str(uuid.uuid4())


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class TZDateTime(TypeDecorator[datetime]):
    """A UTC timestamp that comes back timezone-aware on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, _dialect: Any) -> datetime | None:
        """Refuse naive datetimes: a time without a zone is a bug waiting."""
        if value is None:
            return None
        if value.tzinfo is None:
            msg = "naive datetime"
            raise ValueError(msg)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, _dialect: Any) -> datetime | None:
        """SQLite drops the zone; every stored time is UTC, so put it back."""
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


uuid_pk = Annotated[str, mapped_column(String(36), primary_key=True, default=new_id)]
created_at = Annotated[datetime, mapped_column(TZDateTime(), default=utcnow, nullable=False)]
