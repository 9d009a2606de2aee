"""Fixtures for the worker pool: a sealed registry holding the demo model, and its reference.

Each module gets its own SQLite registry (the session database of
``tests/conftest.py`` is emptied after every test, and worker processes read
the registry on their own). The reference outputs come from LiteRT run in
this process on the same bytes, which is what the workers must reproduce.
"""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from server import schema
from server.bootstrap import build_container
from server.service.types import ModelKey
from server.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Iterator

    from storage import Registry

DIGITS = Path(__file__).resolve().parents[4] / "server" / "demo" / "digits.tflite"


@dataclass(frozen=True)
class Sealed:
    """A registry with the demo model sealed in it, and the settings a worker needs to read it."""

    settings: Settings
    registry: Registry
    tenant_id: str
    key: ModelKey
    model_bytes: bytes

    def put(self, content: bytes, *, model_name: str) -> ModelKey:
        """Seal another model version and return its key."""
        version = self.registry.put_version(
            tenant_id=self.tenant_id,
            model_name=model_name,
            source=io.BytesIO(content),
            format="tflite",
        )
        return ModelKey(self.tenant_id, version.id)


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sealed]:
    """A fresh registry (SQLite, random master key) with the digits model as one version."""
    data_dir = tmp_path_factory.mktemp("pool")
    settings = Settings(
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir / 'sealserve.db'}",
        master_key=base64.b64encode(os.urandom(32)).decode(),
        log_level="WARNING",
        shutdown_grace_seconds=5,
        spare_workers=0,  # tests of spares ask for them (test_spares.py)
    )
    container = build_container(settings)
    schema.upgrade(container.engine)
    tenant = container.registry.create_tenant("acme")
    content = DIGITS.read_bytes()
    version = container.registry.put_version(
        tenant_id=tenant.id, model_name="digits", source=io.BytesIO(content), format="tflite"
    )
    yield Sealed(
        settings=settings,
        registry=container.registry,
        tenant_id=tenant.id,
        key=ModelKey(tenant.id, version.id),
        model_bytes=content,
    )
    container.close()


@dataclass(frozen=True)
class Digits:
    """The digits test split the demo model was evaluated on."""

    x_test: np.ndarray[Any, Any]
    y_test: np.ndarray[Any, Any]


@pytest.fixture(scope="session")
def digits() -> Digits:
    """scikit-learn's digits, scaled to [0, 1] float32, split as in server/demo/README.md."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    features = (data.data / 16.0).astype(np.float32)
    _, x_test, _, y_test = train_test_split(features, data.target, test_size=0.25, random_state=0)
    return Digits(x_test=x_test, y_test=y_test)


class Reference:
    """The demo model run in this process with LiteRT, the way the tests expect workers to."""

    def __init__(self, content: bytes) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._runner = Interpreter(model_content=content, num_threads=1).get_signature_runner(
            "serving_default"
        )

    def __call__(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The model's probabilities for the batch ``x``."""
        result: np.ndarray[Any, Any] = self._runner(input=x)["probabilities"]
        return result


@pytest.fixture(scope="session")
def reference() -> Reference:
    """In-process LiteRT on the demo model."""
    return Reference(DIGITS.read_bytes())
