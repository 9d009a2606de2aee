"""The push command's helpers: flags into options, which uploads are jobs, the report tables."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from server.cli_intake import FlagError, Upload, build_options, report_tables


def _options(**flags):
    defaults = {
        "options_json": None,
        "quantize": None,
        "prune": None,
        "clip": None,
        "cut": None,
        "distill": None,
        "student_uploaded": False,
        "max_accuracy_drop": None,
    }
    return build_options(**{**defaults, **flags})


def test_flags_go_on_top_of_the_options_json() -> None:
    """JSON is the base; each flag sets its own key and keeps the JSON's other settings."""
    options = _options(
        options_json='{"prune": {"epochs": 5}, "seed": 3, "distill": {"epochs": 10}}',
        quantize="int8",
        prune=80,
        clip=99.5,
        cut=2,
        distill="student.keras",
        student_uploaded=True,
        max_accuracy_drop=0.5,
    )
    assert options == {
        "prune": {"epochs": 5, "sparsity": 0.8},
        "seed": 3,
        "quantization": "int8",
        "clip": {"percentile": 99.5},
        "cut": {"max_layers": 2},
        "distill": {"epochs": 10, "student": "uploaded"},
        "max_accuracy_drop": 0.5,
    }
    assert _options(prune=0.8) == {"prune": {"sparsity": 0.8}}
    assert _options(distill="cnn-tiny") == {"distill": {"student": "cnn-tiny"}}
    assert _options() == {}


@pytest.mark.parametrize("text", ["[1]", "{broken", '{"prune": 3}'])
def test_bad_options_json_is_refused(text) -> None:
    """Not an object, not JSON, or a step that is not an object: a clear error."""
    with pytest.raises(FlagError):
        _options(options_json=text, prune=0.5)


def test_only_a_bare_tflite_skips_the_job() -> None:
    """A .tflite alone is sealed at once; options, data or another format make a job."""
    tflite, keras, data = Path("m.tflite"), Path("m.keras"), Path("e.npz")
    assert not Upload({"model": tflite}, {}).is_job
    assert Upload({"model": tflite}, {"max_accuracy_drop": 1}).is_job
    assert Upload({"model": tflite, "evaluation": data}, {}).is_job
    assert Upload({"model": keras}, {}).is_job


def test_the_report_prints_as_tables() -> None:
    """Figures before and after, then the steps; no report, no table."""
    figures = {
        "tflite_bytes": 1000,
        "zstd_bytes": 900,
        "parameters": 50,
        "sparsity": 0.0,
        "latency_us": 10.0,
        "accuracy": 0.99,
        "mse": None,
    }
    report = {
        "original": figures,
        "result": {**figures, "tflite_bytes": 250, "accuracy": 0.985},
        "size_ratio": 4.0,
        "accuracy_drop_points": 0.5,
        "agreement": 0.99,
        "passed": False,
        "reasons": ["accuracy dropped 0.50 points, more than the allowed 0.1"],
        "steps": [
            {"name": "quantize", "settings": {"mode": "int8", "int8_io": False}, "outcome": {}}
        ],
    }
    job = {"model": "m", "version": 2, "result": {"size_stored": 200, "report": report}}
    console = Console(record=True, width=120)
    for table in report_tables(job):
        console.print(table)
    text = console.export_text()
    assert "99.00%" in text
    assert "98.50%" in text
    assert "4.00x" in text
    assert "no: accuracy dropped 0.50 points" in text
    assert "mode=int8, int8_io=no" in text
    assert report_tables({"model": "m", "version": None, "result": None}) == []
