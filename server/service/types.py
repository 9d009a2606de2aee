"""The service layer's request and response types, shared by every transport.

Plain frozen dataclasses over numpy arrays: the REST and gRPC adapters parse
straight into these (no per-element model validation), and the worker hop
carries the arrays' raw bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class ModelKey:
    """Which sealed model version a worker runs: always inside one tenant."""

    tenant_id: str
    version_id: str


@dataclass(frozen=True, slots=True)
class Tensor:
    """A named tensor. ``data`` has ``shape`` and the numpy dtype of ``datatype``.

    ``BYTES`` tensors hold an object array of ``bytes``.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: npt.NDArray[Any]


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """An output the caller asked for, and whether it wants it as raw bytes."""

    name: str
    binary: bool | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InferRequest:
    """One inference call, as every transport sees it once decoded."""

    inputs: tuple[Tensor, ...]
    outputs: tuple[RequestedOutput, ...] = ()
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    one_per_turn: bool = False
    """The transport hands the event loop its calls one per turn (gRPC does), so this one
    shares a trip to a worker only if it waits for others (``server.pool.loopload``)."""


@dataclass(frozen=True, slots=True)
class InferResponse:
    """The answer to one ``InferRequest``."""

    model_name: str
    model_version: str
    outputs: tuple[Tensor, ...]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def as_array(values: Any, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """``values`` as a numpy array of ``dtype`` (no copy when it already is one)."""
    return np.asarray(values, dtype=dtype)
