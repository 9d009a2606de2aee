import pytest

from compress.errors import InputTooLarge
from compress.limits import IntakeLimits, check_file_size


def test_file_at_the_limit_passes_and_returns_its_size(tmp_path):
    """A file exactly at the limit is accepted."""
    path = tmp_path / "model.tflite"
    path.write_bytes(b"x" * 100)
    assert check_file_size(path, limit=100, what="model") == 100


def test_file_over_the_limit_is_refused_naming_the_file(tmp_path):
    """One byte over the limit is refused with the file's role and both sizes."""
    path = tmp_path / "model.tflite"
    path.write_bytes(b"x" * 101)
    with pytest.raises(InputTooLarge) as caught:
        check_file_size(path, limit=100, what="model")
    assert "model file is 101 bytes" in caught.value.message
    assert "limit of 100 bytes" in caught.value.message


@pytest.mark.parametrize(
    "field",
    ["max_source_bytes", "max_data_bytes", "max_unpacked_bytes", "max_entries", "max_ratio"],
)
def test_limits_must_be_positive(field):
    """A zero limit is a configuration error, caught when the limits are built."""
    with pytest.raises(ValueError, match="positive"):
        IntakeLimits(**{field: 0})
