"""Which upload formats we accept, and whether a file's bytes match its claimed format.

The caller knows the file name the tenant used; ``kind_from_filename`` turns it
into a ``ModelKind`` or refuses it with a message listing what is accepted.
``check_magic`` then refuses a file whose first bytes do not fit that kind, so
a renamed HDF5 or pickle never reaches a parser written for something else.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from compress.errors import UnsupportedFormat

if TYPE_CHECKING:
    from pathlib import Path

ACCEPTED = ".keras, a SavedModel directory packed as .zip or .tar.gz, or .tflite"


class ModelKind(StrEnum):
    """An accepted model upload format."""

    KERAS = "keras"
    SAVED_MODEL_ZIP = "saved_model_zip"
    SAVED_MODEL_TAR_GZ = "saved_model_tar_gz"
    TFLITE = "tflite"


_SUFFIXES: tuple[tuple[str, ModelKind], ...] = (
    (".keras", ModelKind.KERAS),
    (".zip", ModelKind.SAVED_MODEL_ZIP),
    (".tar.gz", ModelKind.SAVED_MODEL_TAR_GZ),
    (".tgz", ModelKind.SAVED_MODEL_TAR_GZ),
    (".tflite", ModelKind.TFLITE),
)

# Formats people try, and why each is refused: the reason is the message.
_REFUSED: tuple[tuple[tuple[str, ...], str], ...] = (
    ((".h5", ".hdf5"), "legacy HDF5 Keras files are not accepted; save with model.save('m.keras')"),
    (
        (".pkl", ".pickle", ".joblib", ".pt", ".pth"),
        "pickled files are not accepted: loading them runs code",
    ),
    ((".pb", ".pbtxt"), "pack the whole SavedModel directory as .zip or .tar.gz"),
    ((".tar",), "uncompressed tar is not accepted; use .tar.gz"),
)

_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_GZIP_MAGIC = b"\x1f\x8b"
_TFLITE_IDENTIFIER = b"TFL3"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# Pickle protocols 2 to 5 start with PROTO (0x80) and the protocol number.
_PICKLE_PREFIXES = tuple(bytes([0x80, protocol]) for protocol in range(2, 6))


def kind_from_filename(name: str) -> ModelKind:
    """Map an upload's file name to its ``ModelKind``, or refuse it with what is accepted."""
    lowered = name.lower()
    for suffix, kind in _SUFFIXES:
        if lowered.endswith(suffix):
            return kind
    for suffixes, reason in _REFUSED:
        if lowered.endswith(suffixes):
            raise UnsupportedFormat(f"{reason}; accepted: {ACCEPTED}")
    raise UnsupportedFormat(f"unsupported model format; accepted: {ACCEPTED}")


def _expected_magic(kind: ModelKind, head: bytes) -> bool:
    if kind in {ModelKind.KERAS, ModelKind.SAVED_MODEL_ZIP}:
        return head.startswith(_ZIP_MAGIC)
    if kind is ModelKind.SAVED_MODEL_TAR_GZ:
        return head.startswith(_GZIP_MAGIC)
    return head[4:8] == _TFLITE_IDENTIFIER


def _recognise(head: bytes) -> str | None:
    if head.startswith(_HDF5_MAGIC):
        return "an HDF5 file (legacy Keras .h5), which is not accepted"
    if head.startswith(_PICKLE_PREFIXES):
        return "a Python pickle, which is not accepted: loading it runs code"
    if head.startswith(_EMPTY_ZIP_MAGIC):
        return "an empty zip archive"
    return None


def check_magic(path: Path, *, kind: ModelKind) -> None:
    """Refuse ``path`` unless its first bytes are those of ``kind``.

    When the bytes betray another known format the message says which one, so
    "model.keras" that is really an HDF5 file gets a useful answer.
    """
    with path.open("rb") as handle:
        head = handle.read(16)
    if _expected_magic(kind, head):
        return
    known = _recognise(head)
    if known is not None:
        raise UnsupportedFormat(f"the file is {known}; accepted: {ACCEPTED}")
    raise UnsupportedFormat(
        f"the file's content does not match its {kind.value} format (wrong magic bytes); "
        f"accepted: {ACCEPTED}",
    )
