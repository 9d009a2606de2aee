"""Errors raised by the service layer; mapped to HTTP and gRPC once, in ``server.status``."""

from __future__ import annotations


class ServiceError(Exception):
    """Root of the service layer's errors: a public message and a logged-only detail."""

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class InvalidRequest(ServiceError):  # noqa: N818 - semantic name from the error table
    """The request is malformed; the message names the bad field."""


class PayloadTooLarge(InvalidRequest):
    """The request body is over the configured limit."""


class ModelNotReady(ServiceError):  # noqa: N818 - semantic name from the error table
    """The model exists but cannot serve now."""


class Unavailable(ServiceError):  # noqa: N818 - semantic name from the error table
    """A dependency (database, workers) is down."""


class Overloaded(ServiceError):  # noqa: N818 - semantic name from the error table
    """A limit was hit; retry after ``retry_after`` seconds."""

    def __init__(
        self, message: str, *, retry_after: float = 1.0, detail: str | None = None
    ) -> None:
        super().__init__(message, detail=detail)
        self.retry_after = retry_after


class TenantLimited(Overloaded):
    """The tenant's own limit (``reason``: rate or concurrency) refused the call."""

    def __init__(self, message: str, *, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(message, retry_after=retry_after)
        self.reason = reason


class DeadlineExceeded(ServiceError):  # noqa: N818 - semantic name from the error table
    """The call did not finish in time."""


class WorkerCrashed(ServiceError):  # noqa: N818 - semantic name from the error table
    """The worker running the call died and the retry failed too."""
