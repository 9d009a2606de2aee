"""Operator limits on what an upload may cost before anything runs.

These are the operator's, not the tenant's: they come from server settings,
never from the options JSON, so a tenant cannot raise them. The defaults suit
small and medium models; the HTTP layer enforces ``max_source_bytes`` while
streaming, and this package checks again so a job never trusts its caller.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from compress.errors import InputTooLarge

if TYPE_CHECKING:
    from pathlib import Path

_MIB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class IntakeLimits:
    """Size, count and ratio bounds for uploads, archives and data files.

    ``max_ratio`` bounds unpacked bytes over archive bytes once an archive
    unpacks to more than ``ratio_floor_bytes``: real model archives compress a
    few times at most (float weights barely compress), a zip bomb a thousand.
    The floor keeps tiny archives of zero-filled tensors from tripping it.
    """

    max_source_bytes: int = 512 * _MIB
    max_data_bytes: int = 512 * _MIB
    max_unpacked_bytes: int = 2048 * _MIB
    max_entries: int = 10_000
    max_ratio: float = 100.0
    ratio_floor_bytes: int = 1 * _MIB

    def __post_init__(self) -> None:
        numbers = (
            self.max_source_bytes,
            self.max_data_bytes,
            self.max_unpacked_bytes,
            self.max_entries,
            self.max_ratio,
        )
        if min(numbers) <= 0 or self.ratio_floor_bytes < 0:
            msg = "intake limits must be positive"
            raise ValueError(msg)


def check_file_size(path: Path, *, limit: int, what: str) -> int:
    """Return the size of ``path``; raise ``InputTooLarge`` when it is over ``limit``.

    ``what`` names the file in the message ("model", "evaluation data") so the
    tenant knows which upload to shrink.
    """
    size = os.stat(path).st_size  # noqa: PTH116 - one stat call, no Path object churn
    if size > limit:
        raise InputTooLarge(
            f"the {what} file is {size} bytes, over the limit of {limit} bytes",
        )
    return size
