"""Calibration, evaluation and training data: ``.npz`` files holding arrays ``x`` and ``y``.

An ``.npz`` is a zip of ``.npy`` files, and ``.npy`` can hold pickled objects,
so loading one is screened like any other upload: the zip through the archive
rules, each array header read and checked (numeric dtype, no objects, a size
that matches the bytes present) before numpy allocates anything, and numpy
itself told never to unpickle.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from numpy.lib import format as npy_format

from compress.archive import screen_zip
from compress.errors import InvalidData
from compress.limits import check_file_size

if TYPE_CHECKING:
    from pathlib import Path

    from compress.limits import IntakeLimits

Array = npt.NDArray[np.generic]
FloatArray = npt.NDArray[np.float32]

_MEMBERS = {"x.npy": "x", "y.npy": "y"}
_NUMERIC_KINDS = frozenset("biuf")  # bool, signed, unsigned, float


@dataclass(frozen=True)
class Dataset:
    """Inputs ``x`` (one row per sample) and optional targets ``y`` (same length)."""

    x: Array
    y: Array | None = None

    def __len__(self) -> int:
        return len(self.x)


def _check_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, *, role: str) -> None:
    """Read an ``.npy`` header and refuse anything numpy should not be asked to allocate."""
    with archive.open(info) as stream:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = npy_format.read_array_header_2_0(stream)
        else:
            raise InvalidData(f"the {role} file uses an unsupported .npy version")
    if dtype.hasobject or dtype.kind not in _NUMERIC_KINDS:
        raise InvalidData(f"the {role} file holds non-numeric arrays; use int, float or bool")
    if math.prod(shape) * dtype.itemsize > info.file_size:
        raise InvalidData(f"the {role} file is corrupt (an array is shorter than its header)")


def _read_arrays(path: Path, *, role: str, limits: IntakeLimits) -> dict[str, Array]:
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            names: dict[str, zipfile.ZipInfo] = {}
            for info, member in screen_zip(archive, limits=limits, archive_bytes=size):
                if str(member) not in _MEMBERS:
                    raise InvalidData(
                        f"the {role} file holds {str(member)!r}; expected only arrays x and y",
                    )
                _check_header(archive, info, role=role)
                names[_MEMBERS[str(member)]] = info
        with np.load(path, allow_pickle=False) as npz:
            return {key: np.asarray(npz[key]) for key in names}
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as exc:
        raise InvalidData(f"the {role} file is not a readable .npz", detail=repr(exc)) from exc


def load_npz(path: Path, *, role: str, limits: IntakeLimits, require_labels: bool) -> Dataset:
    """Load and check one data file; ``role`` ("evaluation"...) names it in messages.

    ``x`` must be numeric with at least one sample and finite values (NaN or
    infinity poison calibration ranges and metrics alike); ``y``, when present
    or required, must have one row per sample.
    """
    check_file_size(path, limit=limits.max_data_bytes, what=f"{role} data")
    with path.open("rb") as handle:
        if handle.read(4) != b"PK\x03\x04":
            raise InvalidData(f"the {role} file is not an .npz archive")
    arrays = _read_arrays(path, role=role, limits=limits)
    x = arrays.get("x")
    y = arrays.get("y")
    if x is None or x.ndim == 0 or len(x) == 0:
        raise InvalidData(f"the {role} file needs a non-empty array x")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise InvalidData(f"the {role} file has NaN or infinite values in x")
    if y is None:
        if require_labels:
            raise InvalidData(f"the {role} file needs an array y of targets")
        return Dataset(x)
    if y.ndim not in {1, 2} or len(y) != len(x):
        raise InvalidData(f"the {role} file's y must have one row per sample of x")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise InvalidData(f"the {role} file has NaN or infinite values in y")
    return Dataset(x, y)
