import json
from pathlib import Path

import pytest

from compress.errors import InvalidData, InvalidOptions
from compress.formats import ModelKind
from compress.options import (
    STUDENT_ARCHITECTURES,
    CompressOptions,
    Quantization,
    check_compatible,
    parse_options,
)

DATA = Path("data.npz")


def test_empty_object_means_no_compression():
    """{} is valid: float32 conversion only, no steps."""
    options = parse_options("{}")
    assert options.quantization is Quantization.NONE
    assert not options.modifies_weights


def test_every_step_can_be_combined():
    """All steps together parse, with defaults filled in."""
    options = parse_options(
        json.dumps(
            {
                "quantization": "int8",
                "int8_io": True,
                "prune": {"sparsity": 0.8},
                "clip": {},
                "cut": {"max_layers": 2},
                "distill": {"student": "mlp-small", "temperature": 2},
                "max_accuracy_drop": 1.5,
            }
        )
    )
    assert options.prune is not None
    assert options.prune.epochs == 10
    assert options.clip is not None
    assert options.clip.percentile == 99.9
    assert options.distill is not None
    assert options.distill.alpha == 0.9
    assert options.modifies_weights


def test_a_mapping_is_accepted_as_well_as_json():
    """Already-decoded JSON objects validate the same way."""
    assert parse_options({"quantization": "float16"}).quantization is Quantization.FLOAT16


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"sparsty": 0.5}', "sparsty"),
        ('{"prune": {"sparsity": 1.0}}', "prune.sparsity"),
        ('{"prune": {"sparsity": 0.5, "epochs": -1}}', "prune.epochs"),
        ('{"quantization": "int4"}', "quantization"),
        ('{"int8_io": true}', "int8_io needs quantization 'int8'"),
        ('{"distill": {"student": "resnet-1000"}}', "unknown student"),
        ('{"max_accuracy_drop": -1}', "max_accuracy_drop"),
        ("[1, 2]", "options"),
        ("not json", "options"),
    ],
)
def test_invalid_options_name_the_offending_field(raw, field):
    """Bad options raise InvalidOptions whose message names the field and the rule."""
    with pytest.raises(InvalidOptions) as caught:
        parse_options(raw)
    assert field in caught.value.message


def test_messages_do_not_echo_the_input():
    """A refused value is not reflected back in the public message."""
    with pytest.raises(InvalidOptions) as caught:
        parse_options('{"quantization": "<script>alert(1)</script>"}')
    assert "<script>" not in caught.value.message


def test_options_are_frozen():
    """Options cannot be changed once validated."""
    options = CompressOptions()
    with pytest.raises(ValueError, match="frozen"):
        options.seed = 3  # type: ignore[misc]


def test_student_names_are_the_buildable_ones():
    """The option names the students that compress.distill can build."""
    from compress.distill import STUDENTS

    assert set(STUDENT_ARCHITECTURES) == set(STUDENTS)


def _check(options: dict, kind: ModelKind = ModelKind.KERAS, **files: Path | None) -> None:
    arguments = {"calibration": None, "evaluation": None, "training": None, "student": None}
    arguments.update(files)
    check_compatible(parse_options(options), kind=kind, **arguments)


@pytest.mark.parametrize(
    ("options", "kind", "files", "error", "message"),
    [
        ({"prune": {"sparsity": 0.5}}, ModelKind.TFLITE, {}, InvalidOptions, "need a .keras"),
        ({"clip": {}}, ModelKind.SAVED_MODEL_ZIP, {}, InvalidOptions, "need a .keras"),
        (
            {"quantization": "int8"},
            ModelKind.TFLITE,
            {"calibration": DATA},
            InvalidOptions,
            "already converted",
        ),
        (
            {"distill": {"student": "uploaded"}},
            ModelKind.KERAS,
            {"training": DATA},
            InvalidOptions,
            "student .keras",
        ),
        ({}, ModelKind.KERAS, {"student": DATA}, InvalidOptions, "not 'uploaded'"),
        ({"distill": {"student": "mlp-small"}}, ModelKind.KERAS, {}, InvalidData, "training data"),
        ({"cut": {"max_layers": 1}}, ModelKind.KERAS, {}, InvalidData, "evaluation data"),
        ({"max_accuracy_drop": 1}, ModelKind.KERAS, {}, InvalidOptions, "need evaluation data"),
        ({"quantization": "int8"}, ModelKind.KERAS, {}, InvalidOptions, "calibration"),
    ],
)
def test_impossible_combinations_are_refused_up_front(options, kind, files, error, message):
    """Options that cannot work with this upload and data fail before anything loads."""
    with pytest.raises(error, match=message):
        _check(options, kind, **files)


@pytest.mark.parametrize(
    ("options", "kind", "files"),
    [
        ({"quantization": "int8"}, ModelKind.SAVED_MODEL_TAR_GZ, {"evaluation": DATA}),
        (
            {"distill": {"student": "mlp-small"}, "prune": {"sparsity": 0.5}},
            ModelKind.TFLITE,
            {"training": DATA},
        ),
        (
            {"distill": {"student": "uploaded"}},
            ModelKind.KERAS,
            {"training": DATA, "student": DATA},
        ),
        ({}, ModelKind.TFLITE, {}),
    ],
)
def test_workable_combinations_pass(options, kind, files):
    """Distillation makes Keras steps possible for any source; int8 uses any data file."""
    _check(options, kind, **files)
