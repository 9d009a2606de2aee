"""A model version's own dynamic-batching settings, stored beside the version.

Every field is optional: ``None`` means "the server's default" (the worker's
``batch_max_size`` and ``batch_max_delay_ms`` settings), so a version with no
settings at all follows whatever the operator configures. ``enabled=False``
turns batching off for the version: each call runs in an invocation of its
own. No setting can turn batching *on* for a model without a variable batch
dimension; the worker decides that from the model itself.

Values are checked here, where they are stored, so every way in (REST, CLI,
operator mode) refuses the same things with the same words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NoReturn

from storage.errors import InvalidInput

MAX_BATCH_SIZE = 1024
"""Largest ``max_batch_size`` a version may ask for (rows per invocation)."""
MAX_QUEUE_DELAY_MS = 1000.0
"""Longest ``max_queue_delay_ms`` a version may ask for (a call waits at most this)."""
FIELDS = ("enabled", "max_batch_size", "max_queue_delay_ms")


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """Batching settings of one model version; ``None`` in a field: the server default."""

    enabled: bool | None = None
    max_batch_size: int | None = None
    max_queue_delay_ms: float | None = None

    def __post_init__(self) -> None:
        # Typed fields, but values may come from any JSON: check the types too.
        enabled: object = self.enabled
        if enabled is not None and not isinstance(enabled, bool):
            _refuse("enabled", "must be true or false")
        size: object = self.max_batch_size
        if size is not None and (
            isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_BATCH_SIZE
        ):
            _refuse("max_batch_size", f"must be an integer from 1 to {MAX_BATCH_SIZE}")
        delay: object = self.max_queue_delay_ms
        if delay is not None and (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not math.isfinite(delay)
            or not 0 <= delay <= MAX_QUEUE_DELAY_MS
        ):
            _refuse("max_queue_delay_ms", f"must be a number from 0 to {MAX_QUEUE_DELAY_MS:g}")
        if self.max_queue_delay_ms is not None:
            # Stored as a float; normalised so a round trip compares equal.
            object.__setattr__(self, "max_queue_delay_ms", float(self.max_queue_delay_ms))
        if self.enabled is False and (size is not None or delay is not None):
            _refuse(
                "enabled",
                "is false, so max_batch_size and max_queue_delay_ms must be left out",
            )

    @property
    def is_default(self) -> bool:
        """True when every field defers to the server (nothing worth storing)."""
        return (
            self.enabled is None and self.max_batch_size is None and self.max_queue_delay_ms is None
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set, as JSON-ready values (for responses and audit details)."""
        return {name: getattr(self, name) for name in FIELDS if getattr(self, name) is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchSettings:
        """Settings from a JSON object; unknown keys are refused by name."""
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            _refuse(unknown[0], f"is not a batching setting; known: {', '.join(FIELDS)}")
        return cls(**data)


def _refuse(field: str, problem: str) -> NoReturn:
    msg = f"batching.{field} {problem}"
    raise InvalidInput(msg)
