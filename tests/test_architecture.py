"""The dependency rule and the one error table hold for the whole code base."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc

from compress.errors import CompressionError
from server import status
from server.service.errors import ServiceError
from storage.errors import StorageError

ROOT = Path(__file__).resolve().parent.parent
ERROR_ROOTS: list[type[Exception]] = [StorageError, ServiceError, CompressionError]


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


def test_import_contracts_hold() -> None:
    """auth, storage, compress and protos stay independent; none imports server or TF."""
    result = subprocess.run(  # noqa: S603 - our own tool from the venv
        [str(Path(sys.executable).with_name("lint-imports"))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_error_class_has_its_own_row() -> None:
    """Each error class is mapped explicitly, so no error is left to a guess."""
    missing = [
        f"{cls.__module__}.{cls.__qualname__}"
        for root in ERROR_ROOTS
        for cls in {root, *_subclasses(root)}
        if cls not in status.ERROR_TABLE and not cls.__module__.startswith("tests")
    ]
    assert missing == []


def test_grpc_names_are_real_status_codes() -> None:
    """Every gRPC name in the table is a member of grpc.StatusCode."""
    for spec in status.ERROR_TABLE.values():
        assert spec.grpc in grpc.StatusCode.__members__, spec


def test_unknown_errors_are_internal_and_generic() -> None:
    """An unmapped exception leaves as INTERNAL with a generic text."""
    spec = status.spec_for(ValueError("secret detail"))
    assert spec.grpc == "INTERNAL"
    assert status.public_message(ValueError("secret detail"), spec) == status.INTERNAL_MESSAGE
