"""The inference routes' hot path: plain ASGI in front of the FastAPI app.

For a small model the server's own work per call is everything (the model
runs in microseconds), and most of that work was FastAPI's: matching the
path against every route, resolving dependencies, wrapping the body in a
``Request``, and three layers of middleware. The inference POSTs are the
only routes called thousands of times a second, so ``InferenceFastPath``
serves them itself and hands every other request to FastAPI unchanged.

It is the same call, not a second implementation: the same policy table and
``AccessControl.authorize_call``, the same body limit, the same codecs and
``InferenceService`` (``run_infer`` / ``run_predict``, which the documented
FastAPI routes also call), the same request id header, the same
``sealserve_http_*`` metrics, and errors rendered by the same handler as
every other route (``server.rest.errors.handle_error``).
"""

from __future__ import annotations

import itertools
import os
import re
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import structlog
from starlette.requests import Request

from auth import AuthError
from server.policy import rest_operation
from server.rest.errors import error_body, handle_error, retry_after
from server.rest.middleware import REQUEST_ID_HEADER, SAFE_REQUEST_ID
from server.rest.routes.tfserving import run_predict
from server.rest.routes.v2 import run_infer
from server.service.errors import PayloadTooLarge, TenantLimited
from server.status import public_message, spec_for

if TYPE_CHECKING:
    from collections.abc import Mapping, MutableMapping

    from starlette.types import ASGIApp, Receive, Scope, Send

    from auth import Principal
    from server.metrics import Metrics
    from server.service.access import AccessControl
    from server.service.inference import InferenceService
    from server.service.limits import Admission

# (template, pattern, protocol) in FastAPI's registration order; a path
# parameter matches what Starlette's ``{name}`` matches: one segment.
_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("/v2/models/{model}/infer", re.compile(r"/v2/models/([^/]+)/infer"), "v2"),
    (
        "/v2/models/{model}/versions/{version}/infer",
        re.compile(r"/v2/models/([^/]+)/versions/([^/]+)/infer"),
        "v2",
    ),
    ("/v1/models/{model}:predict", re.compile(r"/v1/models/([^/]+):predict"), "tfs"),
    (
        "/v1/models/{model}/versions/{version}:predict",
        re.compile(r"/v1/models/([^/]+)/versions/([^/]+):predict"),
        "tfs",
    ),
    (
        "/v1/models/{model}/labels/{label}:predict",
        re.compile(r"/v1/models/([^/]+)/labels/([^/]+):predict"),
        "tfs",
    ),
)
_JSON = b"application/json"
_BINARY = b"application/octet-stream"
_ADMISSION = "sealserve.admission"
"""Where ``refuse_now`` leaves, in the scope's state, the admission of a call it let through."""


class EarlyAnswer(NamedTuple):
    """A whole response decided from a request's head alone (see ``refuse_now``)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class _Head(NamedTuple):
    """What the inference routes read from a request's headers."""

    authorization: str | None
    content_length: bytes | None
    header_length: str | None
    request_id: str | None
    """The caller's own ``x-request-id``, when it is safe to echo."""


def _head(scope: Mapping[str, Any]) -> _Head:
    authorization = declared = header_length = request_id = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"content-length":
            declared = value
        elif name == b"inference-header-content-length":
            header_length = value.decode("latin-1")
        elif name == REQUEST_ID_HEADER and SAFE_REQUEST_ID.match(value):
            request_id = value.decode()
    return _Head(authorization, declared, header_length, request_id)


class _Disconnected(Exception):  # noqa: N818 - a condition, not an error to report
    """The client went away before sending the whole body."""


def _match(path: str) -> tuple[str, str, str, str | None] | None:
    """(template, protocol, model, version or label) of an inference POST, else None."""
    if not path.endswith(("/infer", ":predict")):
        return None
    for template, pattern, protocol in _ROUTES:
        found = pattern.fullmatch(path)
        if found is not None:
            groups = found.groups()
            return template, protocol, groups[0], groups[1] if len(groups) > 1 else None
    return None


async def _read_body(receive: Receive, limit: int, declared: bytes | None) -> bytes:
    """The whole body, refusing (413) as soon as it passes ``limit`` bytes."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class InferenceFastPath:
    """Serves the inference POSTs; passes every other request to ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        access: AccessControl,
        inference: InferenceService,
        metrics: Metrics,
    ) -> None:
        self.app = app
        self._access = access
        self._inference = inference
        self._metrics = metrics
        self._operation = {template: rest_operation("POST", template) for template, *_ in _ROUTES}
        self._id_prefix, self._ids = os.urandom(6).hex(), itertools.count(1)
        """Request ids: unique per process start, 32 hex digits like a uuid, no syscall."""
        self._histograms = {
            template: metrics.http_latency.labels(template) for template, *_ in _ROUTES
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] == "http" and scope["method"] == "POST":
            found = _match(scope["path"])
            if found is not None:
                await self._serve(scope, receive, send, found)
                return
        await self.app(scope, receive, send)

    def refuse_now(self, scope: MutableMapping[str, Any]) -> EarlyAnswer | None:
        """The 429 for an inference call its tenant's limits refuse, decided from its head.

        Called by the HTTP protocol (``server.rest.protocol``) as soon as a
        request's headers are parsed, before any task, body or ASGI message
        exists for it: a tenant flooding the server far over its rate limit
        then takes less of the event loop that the other tenants' calls
        share. Anything else is ``None``, and the request goes the ordinary
        way: another route or a token that does not verify is checked again
        there; a call within its tenant's limits is admitted here, and its
        admission waits in the scope for ``_serve``, so that the calls of a
        burst that arrive together each take their own token. Only runs
        while some tenant was refused a moment ago, so normal traffic pays
        one clock read.
        """
        inference = self._inference
        if scope["method"] != "POST" or not inference.refusing():
            return None
        route = _match(scope["path"])
        if route is None:
            return None
        started = time.perf_counter()
        template, _, model, ref = route
        head = _head(scope)
        try:
            principal = self._access.check(self._operation[template], head.authorization)
            if principal is None:
                return None
            admission = inference.admit(principal, model, ref)
        except TenantLimited as exc:
            request_id = head.request_id or self._new_request_id()
            spec = spec_for(exc)
            body = error_body(public_message(exc, spec), spec.public_code, request_id)
            headers = [
                (b"content-type", _JSON),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", (retry_after(exc) or "1").encode()),
                (REQUEST_ID_HEADER, request_id.encode()),
            ]
            self._metrics.count_http(template, "POST", spec.http)
            self._histograms[template].observe(time.perf_counter() - started)
            return EarlyAnswer(spec.http, headers, body)
        except AuthError:
            return None  # the ordinary path refuses it, and counts the refusal
        scope.setdefault("state", {})[_ADMISSION] = admission
        return None

    def body_limit(self, scope: Mapping[str, Any]) -> int:
        """The body limit of an inference call, whose body ``_serve`` reads whole; 0 for others."""
        if scope.get("method") == "POST" and _match(scope.get("path", "")) is not None:
            return self._inference.max_request_bytes
        return 0

    def _new_request_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):020x}"

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: tuple[str, str, str, str | None],
    ) -> None:
        template, protocol, model, ref = route
        started = time.perf_counter()
        authorization, declared, header_length, request_id = _head(scope)
        request_id = request_id or self._new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        admission: Admission | None = state.pop(_ADMISSION, None)
        status = 500
        try:
            try:
                principal: Principal | None = await self._access.authorize_call(
                    self._operation[template], authorization
                )
                assert principal is not None  # noqa: S101 - the policy names a scope for these
                inference = self._inference
                body = await _read_body(receive, inference.max_request_bytes, declared)
                headers = [(b"x-request-id", request_id.encode())]
                if protocol == "v2":
                    content, length = await run_infer(
                        inference,
                        principal,
                        model,
                        ref,
                        body=body,
                        header_length=header_length,
                        admission=admission,
                    )
                    if length is None:
                        headers.append((b"content-type", _JSON))
                    else:
                        headers.append((b"content-type", _BINARY))
                        headers.append((b"inference-header-content-length", length.encode()))
                else:
                    content = await run_predict(
                        inference, principal, model, ref, body=body, admission=admission
                    )
                    headers.append((b"content-type", _JSON))
            except _Disconnected:
                status = 499  # nginx's "client closed request", for the metrics only
                return
            except Exception as exc:  # noqa: BLE001 - rendered like on every other route
                status = await self._refuse(scope, receive, send, exc, request_id)
                return
            headers.append((b"content-length", str(len(content)).encode()))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": content})
            status = 200
        finally:
            if admission is not None:  # a no-op if run_infer / run_predict released it
                admission.release()
            self._metrics.count_http(template, "POST", status)
            self._histograms[template].observe(time.perf_counter() - started)

    @staticmethod
    async def _refuse(
        scope: Scope, receive: Receive, send: Send, exc: Exception, request_id: str
    ) -> int:
        """Answer ``exc`` through the app's one error handler; the status sent."""
        client: Any = scope.get("client")
        with structlog.contextvars.bound_contextvars(
            request_id=request_id, client_addr=client[0] if client else None
        ):
            response = await handle_error(Request(scope, receive), exc)
        response.headers[REQUEST_ID_HEADER.decode()] = request_id
        await response(scope, receive, send)
        return response.status_code
