"""Model intake jobs: one upload being checked, compressed and sealed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base
from storage.types import TZDateTime, created_at, uuid_pk

JOB_STATES = ("queued", "running", "ready", "failed")
FINAL_JOB_STATES = ("ready", "failed")


class Job(Base):
    """One intake job and what is known about it, from upload to sealed version.

    ``site`` names the staging directory that holds the job's input files
    (one per data directory and host): only a supervisor of that site can run
    it. ``heartbeat_at`` is refreshed while the job runs, so a job whose
    gateway died is recognised by any other gateway as stale.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint("state IN ('queued', 'running', 'ready', 'failed')", name="state"),
        CheckConstraint("progress >= 0 AND progress <= 1", name="progress"),
    )

    id: Mapped[uuid_pk]
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(String(256), default="", comment="the current stage")
    log: Mapped[str] = mapped_column(Text, default="", comment="bounded: the newest lines only")
    source_kind: Mapped[str] = mapped_column(String(32))
    inputs: Mapped[list[str]] = mapped_column(JSON, comment="roles of the uploaded files")
    options: Mapped[dict[str, Any]] = mapped_column(JSON, comment="validated compression options")
    site: Mapped[str] = mapped_column(String(64), comment="whose staging holds the inputs")
    actor: Mapped[dict[str, Any]] = mapped_column(JSON, comment="who submitted, for the audit log")
    version_id: Mapped[str | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), default=None
    )
    version: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(String(1024), default=None, comment="public text")
    created_at: Mapped[created_at]
    started_at: Mapped[datetime | None] = mapped_column(TZDateTime(), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(TZDateTime(), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(TZDateTime(), default=None)
