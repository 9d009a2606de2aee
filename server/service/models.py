"""Model administration inside the caller's tenant: upload, list, label, batching, delete.

The tenant is always the principal's; names in paths are looked up inside it,
so another tenant's model is a plain ``NotFound``. Uploads arrive as a file
the adapter has already streamed to disk under the size limit.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

from server.service.context import current_actor
from server.service.errors import InvalidRequest
from server.tflite_check import check_tflite

if TYPE_CHECKING:
    from pathlib import Path

    from auth import Principal
    from server.service.resolver import ModelResolver
    from storage import BatchSettings, ModelInfo, ModelVersionInfo, Registry


def _tenant(principal: Principal) -> str:
    if principal.tenant_id is None:
        raise InvalidRequest("platform clients have no models; use a tenant client")
    return principal.tenant_id


class ModelAdminService:
    """Upload ready-made ``.tflite`` models and manage versions and labels."""

    def __init__(
        self, *, registry: Registry, resolver: ModelResolver, max_model_bytes: int
    ) -> None:
        self._registry = registry
        self._resolver = resolver
        self._max_model_bytes = max_model_bytes

    async def upload_tflite(
        self,
        principal: Principal,
        name: str,
        path: Path,
        *,
        batching: BatchSettings | None = None,
    ) -> ModelVersionInfo:
        """Check the file loads in LiteRT with builtin ops only, then seal it as a new version.

        ``batching`` becomes the version's own batching settings (``None``:
        the server's defaults).
        """
        tenant_id = _tenant(principal)
        actor = current_actor(principal)
        checked = await run_in_threadpool(check_tflite, path)

        def seal() -> ModelVersionInfo:
            with path.open("rb") as source:
                return self._registry.put_version(
                    tenant_id=tenant_id,
                    model_name=name,
                    source=source,
                    format="tflite",
                    signature=checked.signature,
                    max_bytes=self._max_model_bytes,
                    batching=batching,
                    actor=actor,
                )

        info = await run_in_threadpool(seal)
        self._resolver.invalidate(tenant_id)
        return info

    async def list_models(self, principal: Principal) -> list[ModelInfo]:
        """The caller's models with versions and labels."""
        return await run_in_threadpool(self._registry.list_models, _tenant(principal))

    async def get_model(self, principal: Principal, name: str) -> ModelInfo:
        """One of the caller's models."""
        return await run_in_threadpool(self._registry.get_model, _tenant(principal), name)

    async def set_label(self, principal: Principal, name: str, label: str, version: int) -> None:
        """Point ``label`` at ``version``."""
        tenant_id = _tenant(principal)
        await run_in_threadpool(
            partial(
                self._registry.set_label,
                tenant_id,
                name,
                label,
                version,
                actor=current_actor(principal),
            )
        )
        self._resolver.invalidate(tenant_id)

    async def set_batching(
        self, principal: Principal, name: str, version: int, batching: BatchSettings | None
    ) -> ModelVersionInfo:
        """Replace a version's batching settings; workers apply them when they next load it."""
        return await run_in_threadpool(
            partial(
                self._registry.set_batching,
                _tenant(principal),
                name,
                version,
                batching,
                actor=current_actor(principal),
            )
        )

    async def delete_label(self, principal: Principal, name: str, label: str) -> None:
        """Remove a label."""
        tenant_id = _tenant(principal)
        await run_in_threadpool(
            partial(
                self._registry.delete_label, tenant_id, name, label, actor=current_actor(principal)
            )
        )
        self._resolver.invalidate(tenant_id)

    async def delete_version(self, principal: Principal, name: str, version: int) -> None:
        """Delete one version (the last one takes the model with it)."""
        tenant_id = _tenant(principal)
        await run_in_threadpool(
            partial(
                self._registry.delete_version,
                tenant_id,
                name,
                version,
                actor=current_actor(principal),
            )
        )
        self._resolver.invalidate(tenant_id)

    async def delete_model(self, principal: Principal, name: str) -> None:
        """Delete a model and all its versions."""
        tenant_id = _tenant(principal)
        await run_in_threadpool(
            partial(self._registry.delete_model, tenant_id, name, actor=current_actor(principal))
        )
        self._resolver.invalidate(tenant_id)
