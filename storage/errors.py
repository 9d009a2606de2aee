"""Errors raised by the storage layer.

Each error carries a ``message`` that is safe to show a client and an optional
``detail`` that is only logged. None of them knows about HTTP or gRPC: the
server maps each class once, in ``server/status.py``.
"""

from __future__ import annotations


class StorageError(Exception):
    """Root of every error the storage layer raises on purpose."""

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class NotFound(StorageError):  # noqa: N818 - semantic name from the error table
    """The object does not exist *in the caller's tenant*.

    Another tenant's object raises exactly this, with exactly the same text, so
    a caller cannot tell the two apart.
    """


class Conflict(StorageError):  # noqa: N818 - semantic name from the error table
    """The object already exists, or changed under us."""


class InvalidInput(StorageError):  # noqa: N818 - semantic name from the error table
    """A name or value the registry will not store (bad tenant name, label...)."""


class DecryptionFailed(StorageError):  # noqa: N818 - semantic name from the error table
    """A sealed object failed authentication: tampered, moved, truncated or wrong key.

    The message never says which check failed in a way that would help an
    attacker; the detail (logged only) does.
    """


class KeyUnavailable(StorageError):  # noqa: N818 - semantic name from the error table
    """A key named by a sealed object's header is not available to this process."""
