"""Prometheus metrics, in a registry per process (not the library's global one).

Two kinds of family. Those counted on the call path (HTTP, gRPC, inference
per tenant and model, limits) are ordinary ``prometheus_client`` metrics.
Those describing the workers (state, memory, evictions, queues, batch
sizes) are read at scrape time from the pool's last ``Status`` snapshot by
``PoolCollector``, so a scrape costs no RPC and the call path no work.

Labels: ``tenant`` is the tenant id (names can change, ids cannot); ``model``
and ``version`` are the model's name and version number in that tenant.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from server.pool.dispatcher import RpcStats

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

    from prometheus_client import Metric

    from server.pool.loopload import LoopLoad
    from server.pool.status import WorkerStatus
    from server.service.types import ModelKey

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""Rows per interpreter invocation; must match ``server.pool.batcher.BATCH_BUCKETS``."""
RPC_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
"""Calls per worker RPC; must match ``server.pool.dispatcher.RPC_SIZE_BUCKETS``."""


class PoolView(Protocol):
    """What the collector reads of the worker pool."""

    @property
    def snapshot(self) -> Sequence[WorkerStatus]:
        """Every worker's last status."""

    @property
    def rpc_stats(self) -> RpcStats:
        """Infer RPCs and calls per RPC."""

    @property
    def loop_load(self) -> LoopLoad:
        """How busy the gateway's event loop is."""

    @property
    def spares_ready(self) -> int:
        """Started workers held ready to replace one that dies."""

    on_snapshot: Callable[[], None] | None
    """Called after each snapshot refresh."""


class Metrics:
    """The server's metric families.

    With several gateway processes (``shared_dir`` set) every process keeps
    its counts in files there (``prometheus_client``'s multiprocess mode)
    and publishes its pool snapshot there each second, so ``/metrics`` on
    any of them, wherever the kernel sent the scrape, reports all of them.
    """

    def __init__(self, *, shared_dir: Path | None = None, gateway: int = 0) -> None:
        self.shared_dir = shared_dir
        self.gateway = gateway
        if shared_dir is not None:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(shared_dir)
            values.ValueClass = values.MultiProcessValue(_ProcessId())  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        """What ``/metrics`` exposes."""
        self.http_requests = Counter(
            "sealserve_http_requests_total",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "sealserve_http_request_seconds",
            "HTTP request latency by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.grpc_requests = Counter(
            "sealserve_grpc_requests_total",
            "gRPC calls by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.inference_requests = Counter(
            "sealserve_inference_requests_total",
            "Inference calls by tenant, model, version and outcome (ok or the error's code).",
            ["tenant", "model", "version", "outcome"],
            registry=self.registry,
        )
        self.inference_latency = Histogram(
            "sealserve_inference_seconds",
            "Inference latency in the service layer (validation, limits, worker), by model.",
            ["tenant", "model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.limited = Counter(
            "sealserve_tenant_limited_total",
            "Inference calls refused by a tenant's limits, by reason (concurrency or rate).",
            ["tenant", "reason"],
            registry=self.registry,
        )
        self._children: dict[tuple[int | str, ...], Counter] = {}
        self.names: dict[str, tuple[str, str]] = {}
        """Model version id -> (model name, version): labels for what workers report."""
        if shared_dir is not None:
            # The families above write to files; the exposition reads every process's.
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry, path=str(shared_dir))  # type: ignore[no-untyped-call]

    def count_grpc(self, method: str, code: str) -> None:
        """Count one finished gRPC call (its counter child is looked up once)."""
        self._child(self.grpc_requests, method, code).inc()

    def count_http(self, route: str, method: str, status: int) -> None:
        """Count one finished HTTP call by route template (the hot path's way to do it)."""
        self._child(self.http_requests, route, method, str(status)).inc()

    def count_limited(self, tenant: str, reason: str) -> None:
        """Count one call refused by its tenant's limits (``rate`` or ``concurrency``)."""
        self._child(self.limited, tenant, reason).inc()

    def _child(self, family: Counter, *labels: str) -> Counter:
        # ``labels()`` takes a lock and builds a key on every call; children never change.
        key: tuple[int | str, ...] = (id(family), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child

    def watch_pool(self, pool: PoolView) -> None:
        """Export the pool's worker state on every scrape."""

        def own() -> PoolShare:
            return PoolShare(
                self.gateway,
                list(pool.snapshot),
                pool.rpc_stats,
                dict(self.names),
                pool.loop_load.share,
                pool.spares_ready,
            )

        shared_dir = self.shared_dir
        if shared_dir is None:
            self.registry.register(PoolCollector(lambda: [own()], worker_prefix=False))
            return

        def publish() -> None:
            target = shared_dir / f"pool-{self.gateway}.pickle"
            temporary = target.with_suffix(".tmp")
            temporary.write_bytes(pickle.dumps(own()))
            temporary.replace(target)

        def every() -> list[PoolShare]:
            shares = [own()]
            for path in sorted(shared_dir.glob("pool-*.pickle")):
                if path.name != f"pool-{self.gateway}.pickle":
                    with contextlib.suppress(OSError, pickle.UnpicklingError, EOFError):
                        # Written by our own gateway processes into a 0700 directory.
                        shares.append(pickle.loads(path.read_bytes()))  # noqa: S301
            return shares

        pool.on_snapshot = publish
        self.registry.register(PoolCollector(every, worker_prefix=True))


@dataclass(frozen=True, slots=True)
class PoolShare:
    """One gateway process's pool, as its metrics need it."""

    gateway: int
    snapshot: list[WorkerStatus]
    rpc_stats: RpcStats
    names: dict[str, tuple[str, str]]
    loop_share: float = 0.0
    """The last window's share of time the gateway's event loop was busy."""
    spares: int = 0
    """Started workers the gateway holds ready to replace one that dies."""


def _per_gateway(name: str, text: str, values: dict[int, float]) -> GaugeMetricFamily:
    """A gauge with one sample per gateway process."""
    family = GaugeMetricFamily(name, text, labels=["gateway"])
    for gateway, value in values.items():
        family.add_metric([str(gateway)], value)
    return family


class PoolCollector(Collector):
    """Worker families built from the pools' last status snapshots at scrape time.

    Workers are labelled by index, or ``gateway.index`` with several gateways.
    """

    def __init__(self, shares: Callable[[], list[PoolShare]], *, worker_prefix: bool) -> None:
        self._shares = shares
        self._worker_prefix = worker_prefix
        self._names: dict[str, tuple[str, str]] = {}

    def _labels(self, key: ModelKey) -> list[str]:
        model, version = self._names.get(key.version_id, (key.version_id, ""))
        return [key.tenant_id, model, version]

    def describe(self) -> Iterator[Metric]:
        """Nothing up front: families depend on the snapshot."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        """The worker families for the current snapshot."""
        shares = self._shares()
        self._names = {key: value for share in shares for key, value in share.names.items()}
        workers = [
            (
                f"{share.gateway}.{worker.index}" if self._worker_prefix else str(worker.index),
                worker,
            )
            for share in shares
            for worker in share.snapshot
        ]
        yield from self._workers(workers)
        yield from self._models([worker for _, worker in workers])
        stats = RpcStats()
        for share in shares:
            stats.rpcs += share.rpc_stats.rpcs
            stats.calls += share.rpc_stats.calls
            stats.buckets = [
                a + b for a, b in zip(stats.buckets, share.rpc_stats.buckets, strict=True)
            ]
        rpc = HistogramMetricFamily(
            "sealserve_worker_rpc_calls",
            "Client calls carried per Infer RPC to a worker (gateway coalescing).",
            labels=[],
        )
        rpc.add_metric([], _cumulative(RPC_BUCKETS, stats.buckets), stats.calls)
        yield rpc
        yield _per_gateway(
            "sealserve_gateway_loop_busy",
            "Share of the last 50 ms the gateway's event loop ran or waited for a CPU "
            "(at 0.9 and over, gRPC calls wait up to SEALSERVE_POOL_COALESCE_BUSY_DELAY_MS "
            "to share trips to workers).",
            {share.gateway: share.loop_share for share in shares},
        )
        yield _per_gateway(
            "sealserve_spare_workers",
            "Started workers the gateway holds ready to replace one that dies "
            "(SEALSERVE_SPARE_WORKERS).",
            {share.gateway: share.spares for share in shares},
        )

    def _worker_label(self, gateway: int, index: int) -> str:
        return f"{gateway}.{index}" if self._worker_prefix else str(index)

    def _workers(self, workers: list[tuple[str, WorkerStatus]]) -> Iterator[Metric]:
        gauges = {
            "up": "Whether the worker is live (1) or starting, dead or stopped (0).",
            "in_flight": "Calls sent to the worker and not answered.",
            "waiting": "Calls held in the gateway for the worker, not yet sent.",
            "rss_bytes": "Resident memory of the worker process.",
            "model_bytes": "Memory attributed to the models the worker holds.",
            "memory_budget_bytes": "The worker's memory budget for models (0: none).",
            "models": "Models the worker holds.",
        }
        families = {
            name: GaugeMetricFamily(f"sealserve_worker_{name}", text, labels=["worker"])
            for name, text in gauges.items()
        }
        restarts = CounterMetricFamily(
            "sealserve_worker_restarts", "Times the worker was restarted.", labels=["worker"]
        )
        evictions = CounterMetricFamily(
            "sealserve_worker_evictions",
            "Models the worker evicted to stay within its memory budget.",
            labels=["worker"],
        )
        info = GaugeMetricFamily(
            "sealserve_worker_info",
            "Where each worker runs: local (a process of this host) or remote (its address).",
            labels=["worker", "location", "address"],
        )
        for name, worker in workers:
            label = [name]
            remote = worker.address is not None
            info.add_metric([name, "remote" if remote else "local", worker.address or ""], 1.0)
            families["up"].add_metric(label, 1.0 if worker.state == "live" else 0.0)
            families["in_flight"].add_metric(label, worker.in_flight)
            families["waiting"].add_metric(label, worker.waiting)
            if worker.rss_bytes is not None:
                families["rss_bytes"].add_metric(label, worker.rss_bytes)
                families["model_bytes"].add_metric(label, worker.models_bytes)
                families["memory_budget_bytes"].add_metric(label, worker.budget_bytes)
                families["models"].add_metric(label, len(worker.models))
            restarts.add_metric(label, worker.restarts)
            evictions.add_metric(label, worker.evictions)
        yield from families.values()
        yield restarts
        yield evictions
        yield info

    def _models(self, workers: list[WorkerStatus]) -> Iterator[Metric]:
        labels = ["tenant", "model", "version"]
        queued = GaugeMetricFamily(
            "sealserve_model_queue_depth",
            "Calls waiting in a model's batch queue, over all workers.",
            labels=labels,
        )
        depth: dict[tuple[str, ...], int] = {}
        batches: dict[tuple[str, ...], tuple[list[int], int]] = {}
        for worker in workers:
            for model in worker.models:
                key = tuple(self._labels(model.key))
                depth[key] = depth.get(key, 0) + model.queued
            for batch in worker.batching:
                key = tuple(self._labels(batch.key))
                counts, rows = batches.get(key, ([0] * (len(BATCH_BUCKETS) + 1), 0))
                merged = [a + b for a, b in zip(counts, batch.size_buckets, strict=False)]
                batches[key] = (merged, rows + batch.rows)
        for key, value in depth.items():
            queued.add_metric(list(key), value)
        yield queued
        family = HistogramMetricFamily(
            "sealserve_batch_size",
            "Rows per interpreter invocation (dynamic batching), per model, over all workers.",
            labels=labels,
        )
        for key, (counts, rows) in batches.items():
            family.add_metric(list(key), _cumulative(BATCH_BUCKETS, counts), rows)
        yield family


def _cumulative(bounds: Sequence[int], counts: Sequence[int]) -> list[tuple[str, float]]:
    running = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip(bounds, counts, strict=False):
        running += count
        buckets.append((str(bound), float(running)))
    buckets.append(("+Inf", float(sum(counts))))
    return buckets


class _ProcessId:
    """``os.getpid`` for ``prometheus_client``'s multiprocess values, without a system call.

    The library asks for the process id on every count, to notice a fork; a
    tenant flooding the server far over its limits made that a few percent
    of the gateway's CPU. The id is read once, and again in a forked child.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self._pid = os.getpid()

    def __call__(self) -> int:
        return self._pid
