"""The models one worker holds: loaded on first use, at most once at a time, off the loop.

Loading means reading the sealed segments from the registry, unsealing and
verifying them, and building an interpreter: tens of milliseconds to seconds.
It runs on a small thread pool of its own, so the event loop keeps answering
``Ping`` and serving other models meanwhile, and concurrent first calls for
the same model share one load instead of racing.

Memory is bounded by ``budget_bytes`` (0: unbounded). Before a model is
added, the least recently used models with no call running or queued are
evicted until it fits: first room for the plaintext bytes (known as soon as
they are unsealed, before the interpreter is built), then for the activations
the interpreter allocated. A model that could fit only by evicting busy ones
waits for them to go idle; one larger than the whole budget is refused.

The version's batching settings are read with its bytes and kept on the
loaded model, so a change made in the registry reaches a worker at the
latest when it next loads the version.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import structlog

from server.pool.errors import LOAD_FAILED, MODEL_NOT_FOUND, OVERLOADED, CallFailed
from server.pool.runtime import LoadedModel
from storage.errors import NotFound, StorageError

if TYPE_CHECKING:
    from collections.abc import Callable

    from server.service.types import ModelKey
    from storage import BatchSettings

log = structlog.get_logger(__name__)

LOAD_THREADS = 2
"""Models loaded in parallel; a slow one does not hold up the next."""
ROOM_WAIT_SECONDS = 30.0
"""How long a load waits for busy models to go idle before it is refused as overloaded."""
_MIB = 1024 * 1024


class ModelCache:
    """Loaded models by key in least-recently-used order, plus the loads in progress."""

    def __init__(
        self,
        *,
        open_model: Callable[[ModelKey], bytes],
        budget_bytes: int = 0,
        on_evict: Callable[[ModelKey], None] | None = None,
        read_batching: Callable[[ModelKey], BatchSettings | None] | None = None,
    ) -> None:
        self._open_model = open_model
        self._read_batching = read_batching
        self._budget = budget_bytes
        self.on_evict = on_evict
        """Called with the key of every model dropped (evicted or unloaded)."""
        self._models: OrderedDict[ModelKey, LoadedModel] = OrderedDict()
        self._loading: dict[ModelKey, asyncio.Task[LoadedModel]] = {}
        self._waiting: dict[asyncio.Task[LoadedModel], int] = {}
        """Callers of ``acquire`` waiting on each load, held for when it adds its model."""
        self._reserved = 0
        self._idle: asyncio.Event | None = None
        self._executor = ThreadPoolExecutor(LOAD_THREADS, thread_name_prefix="sealserve-load")
        self.evictions = 0

    @property
    def budget_bytes(self) -> int:
        """The memory ceiling for loaded models (0: none)."""
        return self._budget

    def __contains__(self, key: ModelKey) -> bool:
        return key in self._models

    def loaded(self, key: ModelKey) -> LoadedModel | None:
        """The model if it is loaded now, marked most recently used (no task, no await)."""
        model = self._models.get(key)
        if model is not None:
            self._models.move_to_end(key)
        return model

    def hold(self, model: LoadedModel) -> None:
        """A call starts using ``model``: it is not evicted until ``release``."""
        model.in_flight += 1

    def release(self, model: LoadedModel) -> None:
        """A call is done with ``model``; a load waiting for room may now evict it."""
        model.in_flight -= 1
        if model.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def get(self, key: ModelKey) -> tuple[LoadedModel, bool]:
        """The loaded model for ``key``, loading it first if needed; True if this call loaded it.

        Raises ``CallFailed`` (``MODEL_NOT_FOUND`` or ``LOAD_FAILED``). A
        failed load is not remembered: the next call tries again. A caller
        that is cancelled does not cancel a load others wait for.
        """
        model = self._models.get(key)
        if model is not None:
            return model, False
        task, started = self._load_task(key)
        return await asyncio.shield(task), started

    async def acquire(self, key: ModelKey) -> LoadedModel:
        """Like ``get``, but the model comes held for the caller, who must ``release`` it.

        A model loaded while callers wait is held for each of them as it is
        added, not when they resume a few turns of the loop later: in between,
        another load making room could otherwise evict it, and the caller would
        run a model the budget no longer counts.
        """
        model = self.loaded(key)
        if model is not None:
            self.hold(model)
            return model
        task, _ = self._load_task(key)
        self._waiting[task] = self._waiting.get(task, 0) + 1
        try:
            return await asyncio.shield(task)
        except BaseException:
            if task.done() and not task.cancelled() and task.exception() is None:
                self.release(task.result())  # added, and held for this caller meanwhile
            else:
                self._stop_waiting(task)
            raise

    def _load_task(self, key: ModelKey) -> tuple[asyncio.Task[LoadedModel], bool]:
        """The load of ``key`` in progress, or a new one (True)."""
        task = self._loading.get(key)
        if task is not None:
            return task, False
        task = asyncio.create_task(self._load(key))
        self._loading[key] = task
        task.add_done_callback(lambda done: self._load_done(key, done))
        return task, True

    def _stop_waiting(self, task: asyncio.Task[LoadedModel]) -> None:
        left = self._waiting.get(task, 0) - 1
        if left > 0:
            self._waiting[task] = left
        else:
            self._waiting.pop(task, None)

    def unload(self, key: ModelKey) -> bool:
        """Forget a model; calls already running on it finish first. True if it was loaded."""
        if self._models.pop(key, None) is None:
            return False
        if self.on_evict is not None:
            self.on_evict(key)
        return True

    def items(self) -> list[tuple[ModelKey, LoadedModel]]:
        """Every loaded model with its key."""
        return list(self._models.items())

    @property
    def bytes_used(self) -> int:
        """Memory attributed to the loaded models and to the loads making room for theirs."""
        return sum(model.bytes_used for model in self._models.values()) + self._reserved

    def close(self) -> None:
        """Stop the load threads (a load in progress finishes first)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _load(self, key: ModelKey) -> LoadedModel:
        loop = asyncio.get_running_loop()
        content, batching = await loop.run_in_executor(self._executor, self._open, key)
        await self._make_room(len(content), key)
        self._reserved += len(content)
        try:
            model = await loop.run_in_executor(self._executor, self._build, key, content)
        finally:
            self._reserved -= len(content)
        del content
        model.batching = batching
        await self._make_room(model.bytes_used, key)
        self._models[key] = model
        task = asyncio.current_task()
        if task is not None:  # hold it for the callers waiting on this load (``acquire``)
            model.in_flight += self._waiting.pop(task, 0)
        return model

    async def _make_room(self, size: int, key: ModelKey) -> None:
        """Evict idle models, least recently used first, until ``size`` more bytes fit."""
        if not self._budget:
            return
        if size > self._budget:
            msg = (
                f"the model needs {size / _MIB:.1f} MiB, more than this worker's memory "
                f"budget of {self._budget / _MIB:.1f} MiB"
            )
            raise CallFailed(LOAD_FAILED, msg)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ROOM_WAIT_SECONDS
        while self.bytes_used + size > self._budget:
            idle = next((k for k, m in self._models.items() if m.in_flight == 0), None)
            if idle is not None:
                self._evict(idle)
                continue
            # Every model left is busy: wait for one to go idle, not forever.
            left = deadline - loop.time()
            if left <= 0:
                raise CallFailed(OVERLOADED, "no memory is free on this worker for the model")
            self._idle = self._idle or asyncio.Event()
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), left)
            except TimeoutError:
                continue
        log.debug("room made", tenant_id=key.tenant_id, version_id=key.version_id, size=size)

    def _evict(self, key: ModelKey) -> None:
        model = self._models.pop(key)
        self.evictions += 1
        if self.on_evict is not None:
            self.on_evict(key)
        log.info(
            "model evicted",
            tenant_id=key.tenant_id,
            version_id=key.version_id,
            bytes_used=model.bytes_used,
            idle_seconds=round(model.idle_seconds(), 1),
        )

    def _load_done(self, key: ModelKey, task: asyncio.Task[LoadedModel]) -> None:
        self._loading.pop(key, None)
        # Retrieve the outcome so a load nobody waits for any more (every
        # caller cancelled) does not log "exception was never retrieved".
        if not task.cancelled():
            task.exception()

    def _open(self, key: ModelKey) -> tuple[bytes, BatchSettings | None]:
        try:
            content = self._open_model(key)
            batching = None if self._read_batching is None else self._read_batching(key)
        except NotFound:
            raise CallFailed(MODEL_NOT_FOUND, "the model version does not exist") from None
        except StorageError as exc:
            log.warning(
                "model version cannot be unsealed",
                tenant_id=key.tenant_id,
                version_id=key.version_id,
                error=exc.message,
                detail=exc.detail,
            )
            raise CallFailed(LOAD_FAILED, "the model version could not be unsealed") from None
        return content, batching

    def _build(self, key: ModelKey, content: bytes) -> LoadedModel:
        bound = log.bind(tenant_id=key.tenant_id, version_id=key.version_id)
        try:
            model = LoadedModel.load(content)
        except CallFailed as exc:
            bound.warning(
                "model version cannot be loaded", error=exc.message, cause=repr(exc.__cause__)
            )
            raise
        bound.info("model loaded", bytes_used=model.bytes_used)
        return model
