"""Inference use cases, shared by REST (Open Inference Protocol, TF Serving) and gRPC.

Every method takes the caller's principal first. The tenant always comes from
the principal, so another tenant's model is exactly as invisible as a missing
one: both raise the same ``NotFound``. Requests are validated against the
signature stored with the version before anything reaches a worker.

Per-tenant limits (``server.service.limits``) apply as soon as a transport
knows the caller (``admit``), before a body is decoded, so a refused call
costs no decoding and no worker time; every call that reaches ``infer`` is
counted per tenant and model in ``/metrics``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from server.service.audit import CallRecord
from server.service.datatypes import element_count
from server.service.errors import (
    InvalidRequest,
    ModelNotReady,
    PayloadTooLarge,
    TenantLimited,
)
from server.service.limits import NOT_LIMITED, Admission
from server.service.types import InferRequest, InferResponse, ModelKey, Tensor
from server.status import spec_for

if TYPE_CHECKING:
    from collections.abc import Sequence

    from prometheus_client import Counter, Histogram

    from auth import Principal
    from server.metrics import Metrics
    from server.service.audit import AuditRecorder
    from server.service.limits import TenantLimits
    from server.service.resolver import ModelResolver
    from storage import ModelVersionInfo

SERVER_NAME = "sealserve"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ("binary_tensor_data", "model_repository", "sealserve_tenants")


class Backend(Protocol):
    """Where inference runs (the worker pool)."""

    async def infer(
        self,
        key: ModelKey,
        inputs: Sequence[Tensor],
        outputs: Sequence[str],
        *,
        request_id: str | None,
        timeout: float,
        wait_for_company: bool = False,
    ) -> list[Tensor]:
        """Run one call and return the requested outputs (all when none named).

        ``wait_for_company``: the call may wait a little for others to share its
        trip to a worker while the gateway is busy (see ``InferRequest.one_per_turn``).
        """
        ...


def _tenant(principal: Principal) -> str:
    # The policy allowed the call, so a tenant principal is guaranteed here;
    # a platform principal never holds `infer` or `models:read`.
    if principal.tenant_id is None:
        raise InvalidRequest("platform clients cannot use tenant models")
    return principal.tenant_id


class InferenceService:
    """Metadata, readiness and inference for the caller's own models."""

    def __init__(
        self,
        *,
        resolver: ModelResolver,
        backend: Backend,
        max_request_bytes: int,
        timeout: float,
        limits: TenantLimits | None = None,
        metrics: Metrics | None = None,
        recorder: AuditRecorder | None = None,
    ) -> None:
        self._resolver = resolver
        self._backend = backend
        self.max_request_bytes = max_request_bytes
        self._timeout = timeout
        self._limits = limits if limits is not None and limits.enabled else None
        self._metrics = metrics
        self._recorder = recorder
        self._series: dict[str, _Series] = {}
        """Per model version id: its metric children, looked up once (the lookup locks)."""

    @staticmethod
    def server_metadata() -> dict[str, Any]:
        """Name, version and protocol extensions of this server."""
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}

    async def version(
        self, principal: Principal, model: str, ref: str | None = None
    ) -> ModelVersionInfo:
        """Resolve ``model[@ref]`` in the caller's tenant (NotFound otherwise)."""
        return await self._resolver.resolve(_tenant(principal), model, ref)

    async def model_metadata(
        self, principal: Principal, model: str, ref: str | None = None
    ) -> dict[str, Any]:
        """The stored signature in protocol terms (-1 for variable dimensions)."""
        info = await self.version(principal, model, ref)
        signature = info.signature
        return {
            "name": info.model_name,
            "versions": [str(info.version)],
            "platform": "tensorflow_lite",
            "inputs": [_public(t) for t in signature.get("inputs", [])],
            "outputs": [_public(t) for t in signature.get("outputs", [])],
        }

    async def model_ready(self, principal: Principal, model: str, ref: str | None = None) -> bool:
        """Whether the version can serve (raises NotFound for an unknown model)."""
        return (await self.version(principal, model, ref)).state == "ready"

    def refusing(self) -> bool:
        """Whether some tenant was refused for its limits a moment ago (see ``admit``)."""
        return self._limits is not None and self._limits.refusing()

    def admit(self, principal: Principal, model: str, ref: str | None) -> Admission:
        """Count a call against its tenant's limits now, or refuse it, before its body is decoded.

        Synchronous, so a transport can refuse a call before it starts any
        task for it. The caller hands the admission to ``infer`` and releases
        it when the call is over. A refusal is counted like any other (audit
        log, limit metrics).
        """
        limits = self._limits
        if limits is None or principal.tenant_id is None:
            return NOT_LIMITED
        try:
            return limits.admit(principal.tenant_id)
        except TenantLimited as exc:
            call = self._call(principal, model, ref or "default", spec_for(exc).public_code)
            if call is not None and self._recorder is not None:
                self._recorder.count_refusal(call, exc.reason)
            raise

    async def infer(
        self,
        principal: Principal,
        model: str,
        ref: str | None,
        request: InferRequest,
        *,
        admission: Admission | None = None,
    ) -> InferResponse:
        """Validate ``request`` and run it on a worker.

        Without an ``admission`` from ``admit``, the call is admitted under its
        tenant's limits while it runs on a worker. Every call, refused or not,
        is queued for the audit log (batched per tenant, flushed within a
        second) when a recorder is configured.
        """
        if self._recorder is None:
            return await self._infer(principal, model, ref, request, admission)
        started = time.perf_counter()
        outcome, version, limit = "success", ref or "default", None
        try:
            response = await self._infer(principal, model, ref, request, admission)
            version = response.model_version
        except Exception as exc:
            outcome = spec_for(exc).public_code
            limit = exc.reason if isinstance(exc, TenantLimited) else None
            raise
        finally:
            await self._record(
                principal,
                model,
                version,
                outcome,
                latency_ms=(time.perf_counter() - started) * 1000,
                request_id=request.id,
                limit=limit,
            )
        return response

    async def _record(
        self,
        principal: Principal,
        model: str,
        version: str,
        outcome: str,
        *,
        latency_ms: float,
        request_id: str | None,
        limit: str | None,
    ) -> None:
        """Queue one call's audit record (tenant principals only, when auditing is on).

        A call the tenant's own ``limit`` (rate or concurrency) refused is only counted.
        """
        call = self._call(
            principal, model, version, outcome, latency_ms=latency_ms, request_id=request_id
        )
        if call is None or self._recorder is None:
            return
        if limit is not None:
            self._recorder.count_refusal(call, limit)
        else:
            await self._recorder.submit_call(call)

    def _call(
        self,
        principal: Principal,
        model: str,
        version: str,
        outcome: str,
        *,
        latency_ms: float = 0.0,
        request_id: str | None = None,
    ) -> CallRecord | None:
        """The audit log's view of one call; ``None`` when none is kept for it."""
        if self._recorder is None or principal.tenant_id is None:
            return None
        return CallRecord(
            tenant_id=principal.tenant_id,
            model=model,
            version=version,
            subject=principal.subject,
            client_id=principal.client_id,
            outcome=outcome,
            latency_ms=latency_ms,
            request_id=request_id,
        )

    async def _infer(
        self,
        principal: Principal,
        model: str,
        ref: str | None,
        request: InferRequest,
        admission: Admission | None,
    ) -> InferResponse:
        info = await self.version(principal, model, ref)
        if info.state != "ready":
            raise ModelNotReady(f"model '{model}' version {info.version} is not ready")
        _check_inputs(request.inputs, info.signature, limit=self.max_request_bytes)
        wanted = _check_outputs(request, info.signature)
        if self._metrics is None:
            outputs = await self._run(info, request, wanted, admission)
        else:
            outputs = await self._measured(self._metrics, info, request, wanted, admission)
        return InferResponse(
            model_name=info.model_name,
            model_version=str(info.version),
            outputs=tuple(outputs),
            id=request.id,
        )

    async def _run(
        self,
        info: ModelVersionInfo,
        request: InferRequest,
        wanted: list[str],
        admission: Admission | None,
    ) -> list[Tensor]:
        limits = self._limits if admission is None else None
        if limits is not None:
            limits.acquire(info.tenant_id)
        try:
            return await self._backend.infer(
                ModelKey(info.tenant_id, info.id),
                request.inputs,
                wanted,
                request_id=request.id,
                timeout=self._timeout,
                wait_for_company=request.one_per_turn,
            )
        finally:
            if limits is not None:
                limits.release(info.tenant_id)

    async def _measured(
        self,
        metrics: Metrics,
        info: ModelVersionInfo,
        request: InferRequest,
        wanted: list[str],
        admission: Admission | None,
    ) -> list[Tensor]:
        series = self._series.get(info.id)
        if series is None:
            labels = (info.tenant_id, info.model_name, str(info.version))
            metrics.names[info.id] = labels[1:]
            series = _Series(
                labels,
                metrics.inference_requests.labels(*labels, "ok"),
                metrics.inference_latency.labels(*labels),
            )
            self._series[info.id] = series
        started = time.perf_counter()
        try:
            outputs = await self._run(info, request, wanted, admission)
        except Exception as exc:
            metrics.inference_requests.labels(*series.labels, spec_for(exc).public_code).inc()
            raise
        series.ok.inc()
        series.latency.observe(time.perf_counter() - started)
        return outputs


@dataclass(frozen=True, slots=True)
class _Series:
    labels: tuple[str, str, str]
    ok: Counter
    latency: Histogram


def _public(tensor: dict[str, Any]) -> dict[str, Any]:
    return {"name": tensor["name"], "datatype": tensor["datatype"], "shape": tensor["shape"]}


def _check_inputs(inputs: Sequence[Tensor], signature: dict[str, Any], *, limit: int) -> None:
    expected = {t["name"]: t for t in signature.get("inputs", [])}
    seen: set[str] = set()
    total = 0
    for tensor in inputs:
        spec = expected.get(tensor.name)
        if spec is None:
            names = ", ".join(sorted(expected)) or "none"
            raise InvalidRequest(f"unknown input '{tensor.name}'; the model's inputs are: {names}")
        if tensor.name in seen:
            raise InvalidRequest(f"input '{tensor.name}' is given twice")
        seen.add(tensor.name)
        if tensor.datatype != spec["datatype"]:
            raise InvalidRequest(
                f"input '{tensor.name}' has datatype {tensor.datatype}; "
                f"the model expects {spec['datatype']}"
            )
        _check_shape(tensor, spec["shape"])
        total += (
            int(tensor.data.nbytes)
            if tensor.datatype != "BYTES"
            else sum(len(item) for item in tensor.data.reshape(-1))
        )
        if total > limit:
            raise PayloadTooLarge(f"request tensors exceed the limit of {limit} bytes")
    missing = sorted(set(expected) - seen)
    if missing:
        raise InvalidRequest(f"missing input '{missing[0]}'")


def _check_shape(tensor: Tensor, expected: list[int]) -> None:
    shape = list(tensor.shape)
    if len(shape) != len(expected) or any(
        want not in (-1, have) for want, have in zip(expected, shape, strict=True)
    ):
        raise InvalidRequest(
            f"input '{tensor.name}' has shape {shape}; the model expects {expected} "
            "(-1 is any size)"
        )
    if element_count(shape) == 0:
        raise InvalidRequest(f"input '{tensor.name}' is empty")


def _check_outputs(request: InferRequest, signature: dict[str, Any]) -> list[str]:
    known = [t["name"] for t in signature.get("outputs", [])]
    wanted = [output.name for output in request.outputs]
    for name in wanted:
        if name not in known:
            raise InvalidRequest(
                f"unknown output '{name}'; the model's outputs are: {', '.join(known)}"
            )
    return wanted
