"""Worker failures map to the service layer's errors once, with safe public texts."""

from __future__ import annotations

import grpc
import pytest

from protos import worker_pb2
from server import status
from server.pool import errors
from server.service.errors import (
    DeadlineExceeded,
    InvalidRequest,
    ModelNotReady,
    Overloaded,
    ServiceError,
    WorkerCrashed,
)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errors.MODEL_NOT_FOUND, ModelNotReady),
        (errors.LOAD_FAILED, ModelNotReady),
        (errors.OVERLOADED, Overloaded),
        (errors.DEADLINE_EXCEEDED, DeadlineExceeded),
        (errors.INTERNAL, WorkerCrashed),
        (worker_pb2.CALL_ERROR_CODE_UNSPECIFIED, WorkerCrashed),
        (42, WorkerCrashed),
    ],
)
def test_codes_map_to_service_errors_with_fixed_texts(
    code: int, expected: type[ServiceError]
) -> None:
    """Every code but INVALID_INPUT gets a fixed public text; the worker's words go to detail."""
    error = errors.service_error(code, "/var/secret/path failed")
    assert type(error) is expected
    assert "secret" not in error.message
    assert error.detail == "/var/secret/path failed"


def test_invalid_input_passes_the_workers_message_through() -> None:
    """INVALID_INPUT keeps the worker's message: it names the bad tensor for the caller."""
    error = errors.service_error(errors.INVALID_INPUT, "input 'x': shape [1] does not match")
    assert isinstance(error, InvalidRequest)
    assert error.message == "input 'x': shape [1] does not match"


def test_every_mapped_error_has_a_row_in_the_one_table() -> None:
    """What the pool raises is already in server.status, so no new mapping is needed."""
    for code in (*errors.STATUS_OF_CODE, worker_pb2.CALL_ERROR_CODE_UNSPECIFIED):
        assert type(errors.service_error(code, "m")) in status.ERROR_TABLE


def test_every_call_error_code_has_an_rpc_status() -> None:
    """Each failure code (UNSPECIFIED aside) has the status a Load abort uses, one to one."""
    codes = set(worker_pb2.CallErrorCode.values()) - {worker_pb2.CALL_ERROR_CODE_UNSPECIFIED}
    assert set(errors.STATUS_OF_CODE) == codes
    assert len(set(errors.STATUS_OF_CODE.values())) == len(codes)


@pytest.mark.parametrize(
    ("rpc_status", "expected"),
    [
        (grpc.StatusCode.NOT_FOUND, ModelNotReady),
        (grpc.StatusCode.FAILED_PRECONDITION, ModelNotReady),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, Overloaded),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequest),
        (grpc.StatusCode.UNKNOWN, WorkerCrashed),
        (None, WorkerCrashed),
    ],
)
def test_rpc_statuses_read_back_through_the_same_table(
    rpc_status: grpc.StatusCode | None, expected: type[ServiceError]
) -> None:
    """An RPC that failed as a whole maps like the matching per-call code."""
    assert type(errors.rpc_service_error(rpc_status, "why")) is expected


def test_call_failed_converts_to_its_protocol_form() -> None:
    """A worker-side failure becomes the CallError the gateway reads."""
    failure = errors.CallFailed(errors.LOAD_FAILED, "the model could not be loaded")
    assert failure.to_pb() == worker_pb2.CallError(
        code=worker_pb2.CALL_ERROR_CODE_LOAD_FAILED, message="the model could not be loaded"
    )


def test_only_unavailable_is_retried() -> None:
    """Only a vanished worker is worth a retry; a refused or slow call is not."""
    assert {grpc.StatusCode.UNAVAILABLE} == errors.RETRYABLE_STATUSES
