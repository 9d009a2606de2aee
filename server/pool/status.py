"""What the pool reports about its workers: ``WorkerPool.status`` and ``/metrics`` read these."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from server.pool.messages import key_from_pb

if TYPE_CHECKING:
    from protos import worker_pb2
    from server.service.types import ModelKey


class WorkerState(enum.StrEnum):
    """Where a worker slot is in its life."""

    STARTING = "starting"
    LIVE = "live"
    DEAD = "dead"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """One model a worker holds."""

    key: ModelKey
    bytes_used: int
    idle_ms: int
    in_flight: int
    queued: int = 0
    """Calls waiting in the model's batch queue on the worker."""


@dataclass(frozen=True, slots=True)
class BatchStatus:
    """How a worker has batched one model's calls since it started."""

    key: ModelKey
    calls: int
    batches: int
    rows: int
    size_buckets: tuple[int, ...]
    """Invocations by rows, per ``server.pool.batcher.BATCH_BUCKETS`` (+ the rest)."""


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One worker slot, as ``WorkerPool.status`` reports it."""

    index: int
    state: WorkerState
    pid: int | None
    instance_id: str | None
    restarts: int
    in_flight: int
    """Calls the pool has sent to this worker and not had answered."""
    address: str | None = None
    """``host:port`` of a remote worker (``sealserve worker``); None for a local one."""
    worker_in_flight: int | None = None
    """Calls the worker has received and not answered, as it reports them."""
    models: tuple[ModelStatus, ...] = ()
    rss_bytes: int | None = None
    """None when the worker did not answer ``Status``."""
    models_bytes: int = 0
    budget_bytes: int = 0
    """The worker's memory budget for models (0: none)."""
    evictions: int = 0
    batching: tuple[BatchStatus, ...] = ()
    waiting: int = 0
    """Calls held in the gateway for this worker, not yet sent."""


def status_from_reply(base: WorkerStatus, reply: worker_pb2.StatusResponse) -> WorkerStatus:
    """``base`` (what the gateway knows of the slot) completed with the worker's own ``Status``."""
    models = tuple(
        ModelStatus(
            key=key_from_pb(entry.model),
            bytes_used=entry.bytes_used,
            idle_ms=entry.idle_ms,
            in_flight=entry.in_flight,
            queued=entry.queued,
        )
        for entry in reply.models
    )
    batching = tuple(
        BatchStatus(
            key=key_from_pb(entry.model),
            calls=entry.calls,
            batches=entry.batches,
            rows=entry.rows,
            size_buckets=tuple(entry.size_buckets),
        )
        for entry in reply.batching
    )
    return replace(
        base,
        instance_id=reply.instance_id,
        worker_in_flight=reply.in_flight,
        models=models,
        rss_bytes=reply.memory.rss_bytes,
        models_bytes=reply.memory.models_bytes,
        budget_bytes=reply.memory.budget_bytes,
        evictions=reply.evictions,
        batching=batching,
    )
