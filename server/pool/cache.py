"""The models one worker holds: loaded on first use, at most once at a time, off the loop.

Loading means reading the sealed segments from the registry, unsealing and
verifying them, and building an interpreter: tens of milliseconds to seconds.
It runs on a small thread pool of its own, so the event loop keeps answering
``Ping`` and serving other models meanwhile, and concurrent first calls for
the same model share one load instead of racing.

This is where LRU eviction will live (each entry records its size and last
use); today nothing is evicted until ``unload``.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import structlog

from server.pool.errors import LOAD_FAILED, MODEL_NOT_FOUND, CallFailed
from server.pool.runtime import LoadedModel
from storage.errors import NotFound, StorageError

if TYPE_CHECKING:
    from collections.abc import Callable

    from server.service.types import ModelKey

log = structlog.get_logger(__name__)

LOAD_THREADS = 2
"""Models loaded in parallel; a slow one does not hold up the next."""


class ModelCache:
    """Loaded models by key, plus the loads in progress."""

    def __init__(self, *, open_model: Callable[[ModelKey], bytes]) -> None:
        self._open_model = open_model
        self._models: dict[ModelKey, LoadedModel] = {}
        self._loading: dict[ModelKey, asyncio.Task[LoadedModel]] = {}
        self._executor = ThreadPoolExecutor(LOAD_THREADS, thread_name_prefix="sealserve-load")

    def __contains__(self, key: ModelKey) -> bool:
        return key in self._models

    def loaded(self, key: ModelKey) -> LoadedModel | None:
        """The model if it is loaded now (the hot path: no task, no await)."""
        return self._models.get(key)

    async def get(self, key: ModelKey) -> tuple[LoadedModel, bool]:
        """The loaded model for ``key``, loading it first if needed; True if this call loaded it.

        Raises ``CallFailed`` (``MODEL_NOT_FOUND`` or ``LOAD_FAILED``). A
        failed load is not remembered: the next call tries again. A caller
        that is cancelled does not cancel a load others wait for.
        """
        model = self._models.get(key)
        if model is not None:
            return model, False
        task = self._loading.get(key)
        started = task is None
        if task is None:
            task = asyncio.create_task(self._load(key))
            self._loading[key] = task
            task.add_done_callback(lambda done: self._load_done(key, done))
        return await asyncio.shield(task), started

    def unload(self, key: ModelKey) -> bool:
        """Forget a model; calls already running on it finish first. True if it was loaded."""
        return self._models.pop(key, None) is not None

    def items(self) -> list[tuple[ModelKey, LoadedModel]]:
        """Every loaded model with its key."""
        return list(self._models.items())

    @property
    def bytes_used(self) -> int:
        """Memory attributed to the loaded models."""
        return sum(model.bytes_used for model in self._models.values())

    def close(self) -> None:
        """Stop the load threads (a load in progress finishes first)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _load(self, key: ModelKey) -> LoadedModel:
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(self._executor, self._load_blocking, key)
        self._models[key] = model
        return model

    def _load_done(self, key: ModelKey, task: asyncio.Task[LoadedModel]) -> None:
        self._loading.pop(key, None)
        # Retrieve the outcome so a load nobody waits for any more (every
        # caller cancelled) does not log "exception was never retrieved".
        if not task.cancelled():
            task.exception()

    def _load_blocking(self, key: ModelKey) -> LoadedModel:
        bound = log.bind(tenant_id=key.tenant_id, version_id=key.version_id)
        try:
            content = self._open_model(key)
        except NotFound:
            raise CallFailed(MODEL_NOT_FOUND, "the model version does not exist") from None
        except StorageError as exc:
            bound.warning("model version cannot be unsealed", error=exc.message, detail=exc.detail)
            raise CallFailed(LOAD_FAILED, "the model version could not be unsealed") from None
        try:
            model = LoadedModel.load(content)
        except CallFailed as exc:
            bound.warning(
                "model version cannot be loaded", error=exc.message, cause=repr(exc.__cause__)
            )
            raise
        bound.info("model loaded", bytes_used=model.bytes_used)
        return model
