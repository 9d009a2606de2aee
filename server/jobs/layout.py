"""Where a job's files live: one private directory per job under the data directory.

``<data_dir>/staging/jobs/<job id>/`` holds ``input/`` (the uploaded files,
under names we choose, never the client's), ``job.json`` (what to do, written
at launch), ``work/`` (the compress library's scratch space), ``home/`` (the
job process's ``HOME`` and ``TMPDIR``, so nothing it writes lands elsewhere),
``output/`` (the result) and ``stderr.log``. The whole directory is removed
when the job ends, whatever the outcome.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from compress import ModelKind

if TYPE_CHECKING:
    from pathlib import Path

MODEL_FILES: dict[ModelKind, str] = {
    ModelKind.KERAS: "model.keras",
    ModelKind.SAVED_MODEL_ZIP: "model.zip",
    ModelKind.SAVED_MODEL_TAR_GZ: "model.tar.gz",
    ModelKind.TFLITE: "model.tflite",
}
DATA_ROLES = ("calibration", "evaluation", "training")
STUDENT_FILE = "student.keras"
PRIVATE = 0o700


def staging_root(data_dir: Path) -> Path:
    """The directory holding every job directory of this data directory."""
    return data_dir / "staging" / "jobs"


def site_id(data_dir: Path) -> str:
    """Names this host's data directory: the only place a job's staged inputs can be read."""
    place = f"{socket.gethostname()}:{data_dir.resolve()}"
    return hashlib.sha256(place.encode()).hexdigest()[:32]


def input_name(role: str, kind: ModelKind | None = None) -> str:
    """The file name a part of the upload is stored under (the client's name is never used)."""
    if role == "model":
        if kind is None:
            msg = "the model's file name depends on its kind"
            raise ValueError(msg)
        return MODEL_FILES[kind]
    if role in DATA_ROLES:
        return f"{role}.npz"
    if role == "student":
        return STUDENT_FILE
    msg = f"unknown upload part {role!r}"
    raise ValueError(msg)


@dataclass(frozen=True)
class JobDirectory:
    """The paths of one job's private directory."""

    root: Path

    @classmethod
    def of(cls, root: Path, job_id: str) -> JobDirectory:
        """The directory of ``job_id`` under ``root``; the id must be a UUID (it names a path)."""
        return cls(root / str(uuid.UUID(job_id)))

    @property
    def job_id(self) -> str:
        """The job this directory belongs to."""
        return self.root.name

    @property
    def input(self) -> Path:
        """The uploaded files."""
        return self.root / "input"

    @property
    def spec(self) -> Path:
        """What the job process is asked to do (JSON)."""
        return self.root / "job.json"

    @property
    def work(self) -> Path:
        """Scratch space handed to ``compress_model`` as its staging directory."""
        return self.root / "work"

    @property
    def home(self) -> Path:
        """``HOME`` and ``TMPDIR`` of the job process."""
        return self.root / "home"

    @property
    def output(self) -> Path:
        """Where the job process writes its result."""
        return self.root / "output"

    @property
    def result_model(self) -> Path:
        """The TFLite model to seal."""
        return self.output / "model.tflite"

    @property
    def result_json(self) -> Path:
        """The report and signature (JSON)."""
        return self.output / "result.json"

    @property
    def stderr(self) -> Path:
        """The job process's stderr: for the operator's log, never shown to the tenant."""
        return self.root / "stderr.log"

    def create(self) -> None:
        """Make the directory and its input folder, private to this user."""
        self.root.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE)
        self.root.mkdir(mode=PRIVATE)
        self.input.mkdir(mode=PRIVATE)

    def prepare_run(self) -> None:
        """Make the folders the job process writes into, empty (a requeued job runs afresh)."""
        for path in (self.work, self.home, self.output):
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(mode=PRIVATE)
