import pickle

import pytest

from compress.errors import UnsupportedFormat
from compress.formats import ModelKind, check_magic, kind_from_filename


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("model.keras", ModelKind.KERAS),
        ("MODEL.KERAS", ModelKind.KERAS),
        ("saved.zip", ModelKind.SAVED_MODEL_ZIP),
        ("saved.tar.gz", ModelKind.SAVED_MODEL_TAR_GZ),
        ("saved.tgz", ModelKind.SAVED_MODEL_TAR_GZ),
        ("model.tflite", ModelKind.TFLITE),
    ],
)
def test_accepted_names_map_to_their_kind(name, kind):
    """Each accepted suffix names exactly one kind, case-insensitively."""
    assert kind_from_filename(name) is kind


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("model.h5", "HDF5"),
        ("model.hdf5", "HDF5"),
        ("model.pkl", "pickled"),
        ("model.joblib", "pickled"),
        ("model.pt", "pickled"),
        ("saved_model.pb", "SavedModel directory"),
        ("model.tar", "uncompressed tar"),
        ("model.onnx", "unsupported"),
        ("model", "unsupported"),
    ],
)
def test_refused_names_say_why_and_what_is_accepted(name, hint):
    """Refused formats name the reason and list the accepted formats."""
    with pytest.raises(UnsupportedFormat) as caught:
        kind_from_filename(name)
    assert hint in caught.value.message
    assert ".keras" in caught.value.message
    assert ".tflite" in caught.value.message


def test_matching_magic_bytes_pass(tmp_path):
    """A zip for .keras, gzip for .tar.gz and TFL3 at offset 4 for .tflite are accepted."""
    zipped = tmp_path / "a"
    zipped.write_bytes(b"PK\x03\x04" + b"\0" * 30)
    gzipped = tmp_path / "b"
    gzipped.write_bytes(b"\x1f\x8b\x08" + b"\0" * 30)
    tflite = tmp_path / "c"
    tflite.write_bytes(b"\x1c\0\0\0TFL3" + b"\0" * 30)
    check_magic(zipped, kind=ModelKind.KERAS)
    check_magic(zipped, kind=ModelKind.SAVED_MODEL_ZIP)
    check_magic(gzipped, kind=ModelKind.SAVED_MODEL_TAR_GZ)
    check_magic(tflite, kind=ModelKind.TFLITE)


@pytest.mark.parametrize("kind", list(ModelKind))
def test_wrong_magic_bytes_are_refused(tmp_path, kind):
    """A file whose first bytes are not its format's is refused, naming the mismatch."""
    path = tmp_path / "model"
    path.write_bytes(b"this is not a model at all")
    with pytest.raises(UnsupportedFormat) as caught:
        check_magic(path, kind=kind)
    assert "magic bytes" in caught.value.message


def test_hdf5_renamed_to_keras_is_named_as_hdf5(tmp_path):
    """A legacy .h5 renamed .keras is recognised and refused as HDF5."""
    path = tmp_path / "model.keras"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(UnsupportedFormat, match="HDF5"):
        check_magic(path, kind=ModelKind.KERAS)


def test_pickle_renamed_to_tflite_is_named_as_pickle(tmp_path):
    """A pickle renamed .tflite is recognised and refused as a pickle."""
    path = tmp_path / "model.tflite"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=4))
    with pytest.raises(UnsupportedFormat, match="pickle"):
        check_magic(path, kind=ModelKind.TFLITE)
