import pytest

from compress import errors


def test_message_is_public_and_detail_is_kept_apart():
    """An error's str() and args hold only the public message; detail is separate."""
    error = errors.UnsafeArchive("an archive entry has an absolute path", detail="/etc/passwd")
    assert error.message == "an archive entry has an absolute path"
    assert error.detail == "/etc/passwd"
    assert str(error) == "an archive entry has an absolute path"
    assert error.args == ("an archive entry has an absolute path",)


@pytest.mark.parametrize(
    "cls",
    [
        errors.UnsupportedFormat,
        errors.InputTooLarge,
        errors.UnsafeArchive,
        errors.UnsafeModel,
        errors.ConversionFailed,
        errors.InvalidOptions,
        errors.InvalidData,
        errors.RuntimeUnavailable,
    ],
)
def test_every_error_is_a_compression_error_with_a_default_message(cls):
    """Each subclass shares the one root and carries a non-empty safe default."""
    error = cls()
    assert isinstance(error, errors.CompressionError)
    assert error.message
    assert error.detail is None


def test_unsupported_format_default_lists_what_is_accepted():
    """The default refusal of a format tells the tenant what to send instead."""
    message = errors.UnsupportedFormat().message
    assert ".keras" in message
    assert ".tflite" in message
    assert ".tar.gz" in message
