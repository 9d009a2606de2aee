"""Model intake: check an uploaded model, compress it, convert it to TFLite, and report.

Pure functions over files: ``compress_model`` takes an upload (``.keras``, a
SavedModel as ``.zip`` or ``.tar.gz``, or ``.tflite``), optional ``.npz`` data
files and ``CompressOptions``, and returns the TFLite bytes to serve, a
``CompressionReport`` and the model's signature. Jobs, uploads and storage are
built on top by the server; this package imports none of ``auth``,
``storage``, ``server`` or ``protos``.

Importing this package is cheap and safe where TensorFlow is absent (the
gateway imports it for options and errors): TensorFlow, Keras and LiteRT are
imported only inside the functions that need them.
"""

from compress.errors import (
    CompressionError,
    ConversionFailed,
    InputTooLarge,
    InvalidData,
    InvalidOptions,
    RuntimeUnavailable,
    UnsafeArchive,
    UnsafeModel,
    UnsupportedFormat,
)
from compress.formats import ModelKind, kind_from_filename
from compress.limits import IntakeLimits
from compress.options import (
    STUDENT_ARCHITECTURES,
    ClipOptions,
    CompressOptions,
    CutOptions,
    DistillOptions,
    PruneOptions,
    Quantization,
    Task,
    check_compatible,
    parse_options,
)
from compress.pipeline import compress_model
from compress.report import (
    CompressionReport,
    CompressionResult,
    ConversionRecord,
    ModelFigures,
    StepRecord,
)
from compress.signature import extract_signature
from compress.tflite_model import TFLiteFacts, read_tflite

__all__ = [
    "STUDENT_ARCHITECTURES",
    "ClipOptions",
    "CompressOptions",
    "CompressionError",
    "CompressionReport",
    "CompressionResult",
    "ConversionFailed",
    "ConversionRecord",
    "CutOptions",
    "DistillOptions",
    "InputTooLarge",
    "IntakeLimits",
    "InvalidData",
    "InvalidOptions",
    "ModelFigures",
    "ModelKind",
    "PruneOptions",
    "Quantization",
    "RuntimeUnavailable",
    "StepRecord",
    "TFLiteFacts",
    "Task",
    "UnsafeArchive",
    "UnsafeModel",
    "UnsupportedFormat",
    "check_compatible",
    "compress_model",
    "extract_signature",
    "kind_from_filename",
    "parse_options",
    "read_tflite",
]
