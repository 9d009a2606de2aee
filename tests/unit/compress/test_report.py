import json

from compress.report import CompressionReport, ConversionRecord, ModelFigures, StepRecord


def _figures(**overrides):
    values = {
        "tflite_bytes": 1000,
        "zstd_bytes": 900,
        "parameters": 250,
        "sparsity": 0.0,
        "latency_us": 12.5,
        "accuracy": 0.98,
    }
    values.update(overrides)
    return ModelFigures(**values)


def test_report_is_json_serialisable_as_is():
    """to_dict() output goes through json.dumps unchanged, nested records included."""
    report = CompressionReport(
        source_kind="keras",
        task="classification",
        evaluation_samples=450,
        original=_figures(),
        result=_figures(tflite_bytes=250, zstd_bytes=200, accuracy=0.975),
        agreement=0.99,
        accuracy_drop_points=0.5,
        mse_increase=None,
        size_ratio=4.0,
        zstd_ratio=4.5,
        steps=(
            StepRecord(
                name="quantize", settings={"mode": "int8"}, outcome={"calibration_samples": 200}
            ),
        ),
        conversions=(
            ConversionRecord(
                model="result",
                quantization="int8",
                converter="keras-export",
                agreement=1.0,
                samples=256,
            ),
        ),
        passed=True,
    )
    data = json.loads(json.dumps(report.to_dict()))
    assert data["result"]["tflite_bytes"] == 250
    assert data["steps"][0]["settings"] == {"mode": "int8"}
    assert data["conversions"][0]["converter"] == "keras-export"
    assert data["reasons"] == []
    assert data["original"]["mse"] is None
