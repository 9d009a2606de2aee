"""How a failure crosses the worker hop, in both directions.

Inside a worker every expected failure is a ``CallFailed`` with a protocol
code and a message safe to show the caller. The gateway turns codes back into
the service layer's errors here, once, so ``server.status`` maps them to HTTP
and gRPC like any other error. Only ``INVALID_INPUT`` and ``ANSWER_TOO_LARGE`` pass the
worker's message through (it names the bad tensor, or the sizes); every other code gets a fixed
public text and keeps the worker's words as a logged-only ``detail``.
"""

from __future__ import annotations

import grpc

from protos import worker_pb2
from server.service.errors import (
    DeadlineExceeded,
    InvalidRequest,
    ModelNotReady,
    Overloaded,
    ServiceError,
    WorkerCrashed,
)

INVALID_INPUT = worker_pb2.CALL_ERROR_CODE_INVALID_INPUT
MODEL_NOT_FOUND = worker_pb2.CALL_ERROR_CODE_MODEL_NOT_FOUND
LOAD_FAILED = worker_pb2.CALL_ERROR_CODE_LOAD_FAILED
OVERLOADED = worker_pb2.CALL_ERROR_CODE_OVERLOADED
DEADLINE_EXCEEDED = worker_pb2.CALL_ERROR_CODE_DEADLINE_EXCEEDED
INTERNAL = worker_pb2.CALL_ERROR_CODE_INTERNAL
ANSWER_TOO_LARGE = worker_pb2.CALL_ERROR_CODE_ANSWER_TOO_LARGE

INTERNAL_MESSAGE = "the inference worker failed to run the call"
"""What the caller reads for an unexpected worker failure; the cause stays in the logs."""


class CallFailed(Exception):  # noqa: N818 - a result code carrier, not a programming error
    """One call failed inside the worker; ``message`` is safe to send to the gateway."""

    def __init__(self, code: worker_pb2.CallErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_pb(self) -> worker_pb2.CallError:
        """The protocol form of this failure."""
        return worker_pb2.CallError(code=self.code, message=self.message)


# The RPCs without a per-call result (Load) abort with these statuses; the
# gateway reads them back through the same table, so both paths agree.
STATUS_OF_CODE: dict[int, grpc.StatusCode] = {
    INVALID_INPUT: grpc.StatusCode.INVALID_ARGUMENT,
    MODEL_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    LOAD_FAILED: grpc.StatusCode.FAILED_PRECONDITION,
    OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    INTERNAL: grpc.StatusCode.INTERNAL,
    # Never a Load outcome; kept one to one so the table reads back both ways.
    ANSWER_TOO_LARGE: grpc.StatusCode.OUT_OF_RANGE,
}
_CODE_OF_STATUS = {status: code for code, status in STATUS_OF_CODE.items()}

RETRYABLE_STATUSES = frozenset({grpc.StatusCode.UNAVAILABLE})
"""RPC outcomes that mean the worker (or its socket) went away: retry elsewhere."""


def service_error(code: int, message: str) -> ServiceError:
    """The service layer's error for a worker's ``CallError``."""
    if code in (INVALID_INPUT, ANSWER_TOO_LARGE):
        return InvalidRequest(message)
    if code == MODEL_NOT_FOUND:
        return ModelNotReady("the model version is not available", detail=message)
    if code == LOAD_FAILED:
        return ModelNotReady("the model version could not be loaded", detail=message)
    if code == OVERLOADED:
        return Overloaded("the inference workers are busy; retry later", detail=message)
    if code == DEADLINE_EXCEEDED:
        return DeadlineExceeded("the inference call ran out of time", detail=message)
    return WorkerCrashed(INTERNAL_MESSAGE, detail=message)


def rpc_service_error(status: grpc.StatusCode | None, details: str | None) -> ServiceError:
    """The service layer's error for an RPC that failed as a whole (not retried)."""
    code = _CODE_OF_STATUS.get(status) if status is not None else None
    text = details or (status.name if status is not None else "no status")
    return service_error(code if code is not None else INTERNAL, text)
