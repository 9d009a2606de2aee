"""A job service and supervisor on the test database, with a tenant and the demo TFLite model.

The demo model (digits, 8x8 flattened) makes a job that needs LiteRT but not
TensorFlow, so a whole job runs in a second or two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pytest

from auth import Principal, Scope
from server.jobs.layout import site_id, staging_root
from server.jobs.supervisor import JobSupervisor
from server.service.jobs import JobService
from server.service.resolver import ModelResolver
from server.settings import load_settings
from storage import make_session_factory
from storage.jobs import JobStore
from tests.digits import DEMO_MODEL, digits_test_split

if TYPE_CHECKING:
    from pathlib import Path


@dataclass
class Intake:
    """The pieces one test works with."""

    store: JobStore
    service: JobService
    supervisor: JobSupervisor
    registry: object
    principal: Principal
    staging: Path
    evaluation: Path

    def stage(self, files: dict[str, tuple[str, bytes]]):
        """A staged upload holding ``files`` (part -> (client file name, bytes))."""
        upload = self.service.new_upload()
        try:
            for part, (filename, content) in files.items():
                upload.path(self.service.staged_name(part, filename)).write_bytes(content)
        except BaseException:
            self.service.discard(upload)
            raise
        return upload


def principal_of(tenant_id: str, subject: str = "admin") -> Principal:
    """A tenant admin of ``tenant_id``."""
    return Principal(
        subject=subject,
        tenant_id=tenant_id,
        scopes=frozenset({Scope.MODELS_READ, Scope.MODELS_WRITE}),
        client_id="cl_test",
        token_id="t",
        expires_at=0,
        issuer="test",
    )


@pytest.fixture
def make_intake(engine, registry, tmp_path):
    """Build the service and supervisor with settings overrides."""

    def build(**overrides) -> Intake:
        settings = load_settings(data_dir=tmp_path / "data", workers=1, **overrides)
        store = JobStore(session_factory=make_session_factory(engine), audit=registry.audit)
        supervisor = JobSupervisor(
            store=store, registry=registry, resolver=ModelResolver(registry), settings=settings
        )
        service = JobService(
            store=store,
            registry=registry,
            staging=staging_root(settings.data_dir),
            site=site_id(settings.data_dir),
            max_model_bytes=settings.max_model_bytes,
            max_data_bytes=settings.intake_max_data_bytes,
            on_submit=supervisor.wake,
        )
        x, y = digits_test_split()
        evaluation = tmp_path / "evaluation.npz"
        np.savez(evaluation, x=x, y=y)
        tenant = registry.create_tenant(f"t{len(registry.list_tenants())}")
        return Intake(
            store=store,
            service=service,
            supervisor=supervisor,
            registry=registry,
            principal=principal_of(tenant.id),
            staging=staging_root(settings.data_dir),
            evaluation=evaluation,
        )

    return build


@pytest.fixture
def intake(make_intake) -> Intake:
    """Default settings."""
    return make_intake()


@pytest.fixture(scope="session")
def demo_model() -> bytes:
    """The demo digits model (.tflite)."""
    return DEMO_MODEL.read_bytes()
