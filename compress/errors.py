"""Errors raised by the compress package.

Every error carries a ``message`` that is safe to show the tenant who uploaded
the model and an optional ``detail`` that is only logged (a converter's stack
output, a path inside the staging directory). Messages name the rule that was
broken ("archive entry escapes the archive", "op ReadFile is not allowed"),
never a server path, so a client learns what to fix and nothing about the host.

None of these classes knows about HTTP or gRPC: ``server/status.py`` maps the
root once (400/INVALID_ARGUMENT, the upload was refused) and may map a subclass
differently (``RuntimeUnavailable`` is the operator's fault, not the tenant's).
"""

from __future__ import annotations

from typing import ClassVar


class CompressionError(Exception):
    """Root of every error the compress package raises on purpose."""

    default_message: ClassVar[str] = "the model could not be processed"

    def __init__(self, message: str | None = None, *, detail: str | None = None) -> None:
        self.message = message if message is not None else self.default_message
        self.detail = detail
        # Only the public message goes to ``Exception.args``, so a traceback or
        # a log line shows what the client saw; ``detail`` is logged on purpose.
        super().__init__(self.message)


class UnsupportedFormat(CompressionError):  # noqa: N818 - semantic name from the error table
    """The upload is not one of the accepted formats, or its bytes do not match its name."""

    default_message = (
        "unsupported model format; accepted: .keras, a SavedModel as .zip or .tar.gz, .tflite"
    )


class InputTooLarge(CompressionError):  # noqa: N818 - semantic name from the error table
    """An upload or data file is over the operator's size limit."""

    default_message = "the file is larger than the limit"


class UnsafeArchive(CompressionError):  # noqa: N818 - semantic name from the error table
    """An archive is truncated, corrupt, or holds something we never unpack.

    Links, device files, paths leaving the archive, too many entries and
    decompression bombs all land here, before anything is written outside the
    job's private staging directory.
    """

    default_message = "the archive is unsafe or corrupt"


class UnsafeModel(CompressionError):  # noqa: N818 - semantic name from the error table
    """The model holds code or ops outside the allow-lists (Lambda, custom objects, file ops)."""

    default_message = "the model contains code or operations that are not allowed"


class ConversionFailed(CompressionError):  # noqa: N818 - semantic name from the error table
    """TFLite conversion failed, or its output did not match the model it came from."""

    default_message = "the model could not be converted to TFLite with builtin ops"


class InvalidOptions(CompressionError):  # noqa: N818 - semantic name from the error table
    """The options are malformed or do not fit this model and these data files."""

    default_message = "invalid compression options"


class InvalidData(CompressionError):  # noqa: N818 - semantic name from the error table
    """A calibration, evaluation or training file is malformed or does not fit the model."""

    default_message = "invalid data file"


class RuntimeUnavailable(CompressionError):  # noqa: N818 - semantic name from the error table
    """TensorFlow or LiteRT is not installed where a compress job runs.

    This is a deployment fault, not the tenant's: the server maps it to an
    internal error, and the message names the extra the operator must install.
    """

    default_message = "model compression is not available on this server"
