import struct
import zipfile

import numpy as np
import pytest

from compress.data import load_npz
from compress.errors import InputTooLarge, InvalidData, UnsafeArchive
from compress.limits import IntakeLimits

LIMITS = IntakeLimits()


def test_x_and_y_load_with_their_dtypes(tmp_path):
    """A plain np.savez file loads as a Dataset with x and y intact."""
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((4, 3), np.float32), y=np.arange(4))
    data = load_npz(path, role="evaluation", limits=LIMITS, require_labels=True)
    assert data.x.shape == (4, 3)
    assert data.y is not None
    assert data.y.tolist() == [0, 1, 2, 3]
    assert len(data) == 4


def test_compressed_npz_loads_too(tmp_path):
    """np.savez_compressed files are accepted like plain ones."""
    path = tmp_path / "d.npz"
    np.savez_compressed(path, x=np.zeros((2, 2), np.float32))
    data = load_npz(path, role="calibration", limits=LIMITS, require_labels=False)
    assert data.y is None


def test_missing_labels_are_refused_when_required(tmp_path):
    """Evaluation and training files need y; the message names the file's role."""
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((2, 2)))
    with pytest.raises(InvalidData, match="training file needs an array y"):
        load_npz(path, role="training", limits=LIMITS, require_labels=True)


def test_object_arrays_are_refused_before_numpy_unpickles(tmp_path):
    """An array of Python objects (a pickle inside the .npy) is refused from its header."""
    path = tmp_path / "d.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(InvalidData, match="non-numeric"):
        load_npz(path, role="evaluation", limits=LIMITS, require_labels=False)


def test_unexpected_members_are_refused(tmp_path):
    """Only x and y may be present: anything else is named and refused."""
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones(2), y=np.ones(2), weights=np.ones(2))
    with pytest.raises(InvalidData, match=r"'weights\.npy'"):
        load_npz(path, role="evaluation", limits=LIMITS, require_labels=True)


def test_row_counts_must_match(tmp_path):
    """Targets with a different number of rows than x are refused."""
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((3, 2)), y=np.ones(2))
    with pytest.raises(InvalidData, match="one row per sample"):
        load_npz(path, role="evaluation", limits=LIMITS, require_labels=True)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_inputs_are_refused(tmp_path, bad):
    """NaN or infinity in x would poison calibration and metrics: refused."""
    path = tmp_path / "d.npz"
    np.savez(path, x=np.array([[1.0, bad]]))
    with pytest.raises(InvalidData, match="NaN or infinite"):
        load_npz(path, role="calibration", limits=LIMITS, require_labels=False)


def test_empty_x_is_refused(tmp_path):
    """A file with no samples is refused."""
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((0, 3)))
    with pytest.raises(InvalidData, match="non-empty array x"):
        load_npz(path, role="calibration", limits=LIMITS, require_labels=False)


def test_non_npz_bytes_are_refused(tmp_path):
    """A file that is not a zip at all is refused as not an .npz."""
    path = tmp_path / "d.npz"
    path.write_bytes(b"\x93NUMPY plain npy, not npz")
    with pytest.raises(InvalidData, match=r"not an \.npz"):
        load_npz(path, role="evaluation", limits=LIMITS, require_labels=True)


def test_array_shorter_than_its_header_is_refused(tmp_path):
    """An .npy header promising more data than the member holds is refused before allocation."""
    text = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000,), }"
    text = text.ljust(117, b" ") + b"\n"
    header = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", header + b"\0" * 16)
    with pytest.raises(InvalidData, match="shorter than its header"):
        load_npz(path, role="evaluation", limits=LIMITS, require_labels=False)


def test_oversized_file_is_refused_before_reading(tmp_path):
    """A data file over the operator's limit is refused by its size alone."""
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((100, 100)))
    with pytest.raises(InputTooLarge, match="evaluation data file"):
        load_npz(
            path, role="evaluation", limits=IntakeLimits(max_data_bytes=1000), require_labels=False
        )


def test_npz_bomb_is_refused_by_the_archive_rules(tmp_path):
    """An .npz expanding a thousandfold is refused like any other zip bomb."""
    path = tmp_path / "d.npz"
    np.savez_compressed(path, x=np.zeros((5000, 1000), np.float32))
    with pytest.raises(UnsafeArchive, match="decompression bomb"):
        load_npz(path, role="training", limits=LIMITS, require_labels=False)
