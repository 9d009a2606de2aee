import io
import json
import shutil
import tarfile
import zipfile

import numpy as np
import pytest

from compress import (
    CompressionError,
    InputTooLarge,
    IntakeLimits,
    InvalidData,
    ModelKind,
    UnsafeArchive,
    UnsafeModel,
    UnsupportedFormat,
    compress_model,
    parse_options,
)
from tests.unit.compress.conftest import (
    contents,
    save_hostile_saved_model,
    save_lambda_model,
    zip_directory,
)


@pytest.fixture
def upload(tmp_path):
    """The directory uploads arrive in, beside the staging directory."""
    directory = tmp_path / "upload"
    directory.mkdir()
    return directory


def _tar_with(path, info):
    with tarfile.open(path, "w:gz") as archive:
        data = b"graph"
        member = tarfile.TarInfo("model/saved_model.pb")
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
        archive.addfile(info)
    return path


def _hostile_keras_lambda(upload, tmp_path):
    return save_lambda_model(upload / "lambda.keras"), ModelKind.KERAS


def _hostile_saved_model(behaviour):
    def build(upload, tmp_path):
        directory = save_hostile_saved_model(tmp_path / "build" / "model", behaviour)
        archive = zip_directory(directory, upload / "model.zip")
        shutil.rmtree(tmp_path / "build")
        return archive, ModelKind.SAVED_MODEL_ZIP

    return build


def _traversal_zip(upload, tmp_path):
    path = upload / "model.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("saved_model.pb", b"graph")
        archive.writestr("../../escaped.txt", b"owned")
    return path, ModelKind.SAVED_MODEL_ZIP


def _symlink_tar(upload, tmp_path):
    info = tarfile.TarInfo("model/variables")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc"
    return _tar_with(upload / "model.tar.gz", info), ModelKind.SAVED_MODEL_TAR_GZ


def _device_tar(upload, tmp_path):
    info = tarfile.TarInfo("model/null")
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return _tar_with(upload / "model.tar.gz", info), ModelKind.SAVED_MODEL_TAR_GZ


def _zip_bomb(upload, tmp_path):
    path = upload / "model.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("saved_model.pb", bytes(50 * 1024 * 1024))
    return path, ModelKind.SAVED_MODEL_ZIP


def _truncated_keras(upload, tmp_path):
    whole = save_lambda_model(tmp_path / "whole.keras").read_bytes()
    (tmp_path / "whole.keras").unlink()
    path = upload / "model.keras"
    path.write_bytes(whole[: len(whole) // 2])
    return path, ModelKind.KERAS


def _wrong_magic(upload, tmp_path):
    path = upload / "model.tflite"
    path.write_bytes(b"GIF89a definitely not a model")
    return path, ModelKind.TFLITE


HOSTILE = {
    "keras-lambda": (_hostile_keras_lambda, UnsafeModel, "Lambda layers are not accepted"),
    "saved-model-read-file": (_hostile_saved_model("read_file"), UnsafeModel, "op 'ReadFile'"),
    "saved-model-write-file": (_hostile_saved_model("write_file"), UnsafeModel, "op 'WriteFile'"),
    "saved-model-py-function": (
        _hostile_saved_model("py_function"),
        UnsafeModel,
        "op 'EagerPyFunc', which runs Python code",
    ),
    "zip-traversal": (_traversal_zip, UnsafeArchive, "leaves the archive"),
    "tar-symlink": (_symlink_tar, UnsafeArchive, "symbolic link"),
    "tar-device": (_device_tar, UnsafeArchive, "device file"),
    "zip-bomb": (_zip_bomb, UnsafeArchive, "decompression bomb"),
    "truncated-archive": (_truncated_keras, UnsafeArchive, "truncated or corrupt"),
    "wrong-magic": (_wrong_magic, UnsupportedFormat, "wrong magic bytes"),
}


@pytest.mark.parametrize("case", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_uploads_are_refused_leaving_nothing_outside_staging(
    tmp_path, upload, staging, case
):
    """Each hostile upload is refused with a clear message; nothing is left anywhere but the upload."""
    build, error, message = case
    source, kind = build(upload, tmp_path)
    before = contents(tmp_path)
    with pytest.raises(error) as caught:
        compress_model(source=source, kind=kind, staging=staging, options=parse_options({}))
    assert message in caught.value.message
    assert contents(tmp_path) == before
    assert list(staging.iterdir()) == []


def test_upload_over_the_size_limit_is_refused_before_reading(cnn, tmp_path, staging):
    """A model over the operator's limit is refused by its size, and nothing is written."""
    before = contents(tmp_path)
    with pytest.raises(InputTooLarge, match="model file is"):
        compress_model(
            source=cnn.path,
            kind=ModelKind.KERAS,
            staging=staging,
            options=parse_options({}),
            limits=IntakeLimits(max_source_bytes=10_000),
        )
    assert contents(tmp_path) == before


def test_max_accuracy_drop_fails_an_over_compressed_model_with_its_report(cnn, data_files, staging):
    """99% pruning without fine-tuning exceeds the bound: passed is false, with the reason."""
    result = compress_model(
        source=cnn.path,
        kind=ModelKind.KERAS,
        staging=staging,
        options=parse_options({"prune": {"sparsity": 0.99, "epochs": 0}, "max_accuracy_drop": 1.0}),
        evaluation=data_files.evaluation,
    )
    report = result.report
    assert report.passed is False
    assert report.accuracy_drop_points is not None
    assert report.accuracy_drop_points > 1.0
    (reason,) = report.reasons
    assert reason.startswith(f"accuracy dropped {report.accuracy_drop_points:.2f} points")
    assert "allowed 1" in reason
    assert result.tflite
    assert json.loads(json.dumps(report.to_dict()))["passed"] is False


def test_a_result_within_its_bound_passes(cnn, data_files, staging):
    """A bound that holds leaves passed true and no reasons."""
    result = compress_model(
        source=cnn.path,
        kind=ModelKind.KERAS,
        staging=staging,
        options=parse_options({"quantization": "dynamic", "max_accuracy_drop": 1.0}),
        evaluation=data_files.evaluation,
    )
    assert result.report.passed
    assert result.report.reasons == ()


def test_progress_is_reported_and_staging_is_left_empty(cnn, data_files, staging):
    """Stages are reported in order up to done, and the job's directory is removed."""
    seen = []
    compress_model(
        source=cnn.path,
        kind=ModelKind.KERAS,
        staging=staging,
        options=parse_options({"quantization": "float16"}),
        evaluation=data_files.evaluation,
        progress=lambda stage, fraction: seen.append((stage, fraction)),
    )
    assert [stage for stage, _ in seen] == [
        "loading",
        "converting",
        "converting",
        "evaluating",
        "done",
    ]
    fractions = [fraction for _, fraction in seen]
    assert fractions == sorted(fractions)
    assert seen[-1] == ("done", 1.0)
    assert list(staging.iterdir()) == []


def test_a_tflite_upload_is_served_as_uploaded(cnn_tflite, upload, data_files, staging):
    """A .tflite without options is checked, measured and returned byte for byte."""
    path = upload / "model.tflite"
    path.write_bytes(cnn_tflite)
    result = compress_model(
        source=path,
        kind=ModelKind.TFLITE,
        staging=staging,
        options=parse_options({}),
        evaluation=data_files.evaluation,
    )
    assert result.tflite == cnn_tflite
    assert result.report.source_kind == "tflite"
    assert result.report.conversions == ()
    assert result.report.agreement == 1.0


def test_a_tflite_teacher_can_be_distilled(cnn_tflite, upload, data_files, staging):
    """Distillation needs only the teacher's predictions, so a .tflite can teach."""
    path = upload / "model.tflite"
    path.write_bytes(cnn_tflite)
    result = compress_model(
        source=path,
        kind=ModelKind.TFLITE,
        staging=staging,
        options=parse_options(
            {"distill": {"student": "mlp-small", "epochs": 5}, "quantization": "int8"}
        ),
        training=data_files.training,
        evaluation=data_files.evaluation,
    )
    assert [step.name for step in result.report.steps] == ["distill", "quantize"]
    assert result.report.result.parameters == 64 * 16 + 16 + 16 * 10 + 10


@pytest.mark.parametrize("fixture", ["cnn_saved_model_zip", "cnn_saved_model_tgz"])
def test_a_saved_model_upload_is_quantized(request, fixture, data_files, staging):
    """A SavedModel archive converts, quantizes to int8 and reports like a .keras."""
    result = compress_model(
        source=request.getfixturevalue(fixture),
        kind=ModelKind.SAVED_MODEL_ZIP if fixture.endswith("zip") else ModelKind.SAVED_MODEL_TAR_GZ,
        staging=staging,
        options=parse_options({"quantization": "int8"}),
        evaluation=data_files.evaluation,
    )
    report = result.report
    assert report.size_ratio >= 3.4
    assert report.accuracy_drop_points is not None
    assert report.accuracy_drop_points <= 0.5
    assert {record.converter for record in report.conversions} == {"saved-model"}


def test_data_that_does_not_fit_the_model_is_refused(cnn, tmp_path, staging):
    """Evaluation rows of the wrong shape are refused naming the file's role."""
    path = tmp_path / "flat.npz"
    np.savez(path, x=np.zeros((4, 64), np.float32), y=np.zeros(4, np.int64))
    with pytest.raises(InvalidData, match="evaluation file's x has rows of shape"):
        compress_model(
            source=cnn.path,
            kind=ModelKind.KERAS,
            staging=staging,
            options=parse_options({}),
            evaluation=path,
        )
    assert list(staging.iterdir()) == []


def test_staging_must_exist(cnn, tmp_path):
    """A missing staging directory is a caller bug, not a tenant error."""
    with pytest.raises(ValueError, match="staging"):
        compress_model(
            source=cnn.path,
            kind=ModelKind.KERAS,
            staging=tmp_path / "missing",
            options=parse_options({}),
        )


def test_every_refusal_is_a_compression_error():
    """The server maps one root: every refusal above derives from CompressionError."""
    for _, error, _ in HOSTILE.values():
        assert issubclass(error, CompressionError)
