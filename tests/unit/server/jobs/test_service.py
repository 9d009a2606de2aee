"""JobService: what is refused before a job is queued, and what a queued job records."""

from __future__ import annotations

import asyncio

import pytest

from compress import CompressionError, InvalidData, InvalidOptions, UnsupportedFormat
from server.service.errors import InvalidRequest
from server.service.jobs import JobView, job_document
from storage import NotFound
from tests.unit.server.jobs.conftest import principal_of


def _submit(intake, files, *, options=None, name="digits"):
    upload = intake.stage(files)
    try:
        return asyncio.run(
            intake.service.submit(
                intake.principal,
                name,
                upload,
                files={part: filename for part, (filename, _) in files.items()},
                options=options,
            )
        )
    except BaseException:
        intake.service.discard(upload)
        raise


def test_a_checked_upload_is_queued_with_its_options_and_wakes_the_supervisor(
    intake, demo_model
) -> None:
    """The job is queued for this site with the validated options, minus defaults."""
    woken = []
    intake.service._on_submit = lambda: woken.append(True)
    job = _submit(
        intake,
        {
            "model": ("m.tflite", demo_model),
            "evaluation": ("e.npz", intake.evaluation.read_bytes()),
        },
        options='{"max_accuracy_drop": 1, "seed": 0}',
    )
    assert (job.state, job.source_kind, job.inputs) == ("queued", "tflite", ("model", "evaluation"))
    assert job.options == {"max_accuracy_drop": 1.0}
    assert job.actor.subject == "admin"
    assert woken == [True]
    assert sorted(p.name for p in (intake.staging / job.id / "input").iterdir()) == [
        "evaluation.npz",
        "model.tflite",
    ]
    view = asyncio.run(intake.service.get(intake.principal, job.id))
    document = job_document(view)
    assert document["links"]["self"] == f"/admin/v1/jobs/{job.id}"
    assert document["result"] is None
    assert document["log"][0].endswith("queued")


@pytest.mark.parametrize(
    ("files", "options", "error", "text"),
    [
        ({"model": ("m.h5", b"\x89HDF\r\n\x1a\n")}, None, UnsupportedFormat, "legacy HDF5"),
        ({"model": ("m.keras", b"not a zip at all")}, None, UnsupportedFormat, "wrong magic"),
        ({"model": ("m.tflite", b"PK\x03\x04....")}, None, UnsupportedFormat, "wrong magic"),
        ({"evaluation": ("e.npz", b"PK\x03\x04")}, None, InvalidRequest, "no 'model' part"),
        ({"model": ("m.tflite", None)}, '{"quantization": "int8"}', InvalidOptions, "a .tflite"),
        ({"model": ("m.tflite", None)}, '{"prune": {"sparsity": 2}}', InvalidOptions, "sparsity"),
        ({"model": ("m.tflite", None)}, "{not json", InvalidOptions, "invalid compression"),
        (
            {"model": ("m.tflite", None), "evaluation": ("e.npz", b"\x93NUMPY")},
            None,
            InvalidData,
            "not an .npz archive",
        ),
    ],
)
def test_refusals_before_anything_is_queued(intake, demo_model, files, options, error, text):
    """Format, magic bytes, missing parts, options and data: refused, nothing queued."""
    files = {
        part: (name, demo_model if data is None else data) for part, (name, data) in files.items()
    }
    with pytest.raises(error) as raised:
        _submit(intake, files, options=options)
    assert text in raised.value.message
    assert isinstance(raised.value, (CompressionError, InvalidRequest))
    assert intake.store.recent(intake.principal.tenant_id) == []
    assert list(intake.staging.iterdir()) == []


def test_bad_model_names_and_student_files_are_refused(intake, demo_model) -> None:
    """The model name must be a registry name; a student must be a .keras file."""
    with pytest.raises(InvalidRequest, match="invalid model name"):
        _submit(intake, {"model": ("m.tflite", demo_model)}, name="../etc")
    with pytest.raises(InvalidRequest, match=r"student part must be a \.keras"):
        intake.service.staged_name("student", "student.h5")
    with pytest.raises(InvalidRequest, match="unknown form part"):
        intake.service.part("payload")


def test_another_tenants_job_is_not_found(intake, demo_model) -> None:
    """A job is visible to its own tenant only."""
    job = _submit(intake, {"model": ("m.tflite", demo_model)})
    stranger = principal_of("00000000-0000-4000-8000-000000000000")
    with pytest.raises(NotFound):
        asyncio.run(intake.service.get(stranger, job.id))
    assert asyncio.run(intake.service.recent(stranger)) == []
    assert isinstance(asyncio.run(intake.service.get(intake.principal, job.id)), JobView)
