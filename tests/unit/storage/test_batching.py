"""A model version's batching settings on SQLite and PostgreSQL: stored, checked, scoped, audited."""

from __future__ import annotations

import io
import math

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from storage import BatchSettings, InvalidInput, NotFound, Registry
from storage.audit import Actor

MODEL = b"not a real model, the registry does not look inside"


def _put(registry: Registry, tenant_id: str, batching: BatchSettings | None = None) -> int:
    info = registry.put_version(
        tenant_id=tenant_id,
        model_name="m",
        source=io.BytesIO(MODEL),
        format="tflite",
        batching=batching,
    )
    return info.version


def test_settings_round_trip_on_upload_and_change(registry: Registry) -> None:
    """Settings given at upload come back from every read; a change replaces them as a whole."""
    tenant = registry.create_tenant("acme")
    grouped = BatchSettings(max_batch_size=8, max_queue_delay_ms=2.5)
    version = _put(registry, tenant.id, grouped)
    info = registry.resolve(tenant.id, "m", version)
    assert info.batching == grouped
    assert registry.get_model(tenant.id, "m").versions[0].batching == grouped
    assert registry.version_batching(tenant.id, info.id) == grouped

    changed = registry.set_batching(tenant.id, "m", version, BatchSettings(enabled=False))
    assert changed.batching == BatchSettings(enabled=False)
    assert registry.version_batching(tenant.id, info.id) == BatchSettings(enabled=False)

    # Only the delay given: the batch size goes back to the server's default.
    changed = registry.set_batching(tenant.id, "m", version, BatchSettings(max_queue_delay_ms=0))
    assert changed.batching == BatchSettings(max_queue_delay_ms=0.0)

    reset = registry.set_batching(tenant.id, "m", version, None)
    assert reset.batching is None
    assert registry.resolve(tenant.id, "m", version).batching is None


def test_version_without_settings_follows_the_server(registry: Registry) -> None:
    """No settings, or settings that are all defaults, are stored as none at all."""
    tenant = registry.create_tenant("acme")
    first = _put(registry, tenant.id)
    second = _put(registry, tenant.id, BatchSettings())
    for version in (first, second):
        assert registry.resolve(tenant.id, "m", version).batching is None


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"max_batch_size": 0}, "batching.max_batch_size"),
        ({"max_batch_size": 1025}, "batching.max_batch_size"),
        ({"max_batch_size": 2.0}, "batching.max_batch_size"),
        ({"max_batch_size": True}, "batching.max_batch_size"),
        ({"max_queue_delay_ms": -0.1}, "batching.max_queue_delay_ms"),
        ({"max_queue_delay_ms": 1000.5}, "batching.max_queue_delay_ms"),
        ({"max_queue_delay_ms": math.nan}, "batching.max_queue_delay_ms"),
        ({"max_queue_delay_ms": "5"}, "batching.max_queue_delay_ms"),
        ({"enabled": "no"}, "batching.enabled"),
        ({"enabled": False, "max_batch_size": 8}, "batching.enabled"),
        ({"max_batch": 8}, "batching.max_batch"),
    ],
)
def test_out_of_range_settings_are_refused_naming_the_field(fields: dict, named: str) -> None:
    """Each bad value is refused with a message that starts with the field's name."""
    with pytest.raises(InvalidInput) as refused:
        BatchSettings.from_dict(fields)
    assert refused.value.message.startswith(named + " ")


def test_limits_are_accepted() -> None:
    """The ends of each range are valid."""
    assert BatchSettings(max_batch_size=1, max_queue_delay_ms=0).to_dict() == {
        "max_batch_size": 1,
        "max_queue_delay_ms": 0.0,
    }
    assert BatchSettings(max_batch_size=1024, max_queue_delay_ms=1000).max_batch_size == 1024


def test_database_refuses_out_of_range_values(registry: Registry, engine) -> None:
    """The migrated schema carries the range checks too, for writers that skip the registry."""
    tenant = registry.create_tenant("acme")
    _put(registry, tenant.id)
    for column, value in (("batch_max_size", 0), ("batch_max_delay_ms", 5000.0)):
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text(f"UPDATE model_versions SET {column} = :v"), {"v": value})


def test_another_tenants_version_is_not_found_like_a_missing_one(registry: Registry) -> None:
    """Changing another tenant's version fails exactly as a model that does not exist."""
    owner = registry.create_tenant("acme")
    other = registry.create_tenant("other")
    version = _put(registry, owner.id)
    info = registry.resolve(owner.id, "m", version)
    settings = BatchSettings(enabled=False)

    with pytest.raises(NotFound) as foreign:
        registry.set_batching(other.id, "m", version, settings)
    registry.put_version(
        tenant_id=other.id, model_name="x", source=io.BytesIO(MODEL), format="tflite"
    )
    with pytest.raises(NotFound) as missing:
        registry.set_batching(other.id, "m", version, settings)
    assert foreign.value.message == missing.value.message == "model 'm' not found"
    with pytest.raises(NotFound):
        registry.set_batching(owner.id, "m", version + 1, settings)
    with pytest.raises(NotFound):
        registry.version_batching(other.id, info.id)
    assert registry.resolve(owner.id, "m", version).batching is None


def test_change_is_audited_with_before_and_after(registry: Registry) -> None:
    """Upload and change each leave one entry naming the version and the settings."""
    tenant = registry.create_tenant("acme")
    actor = Actor(subject="cl_admin", client_id="cl_admin", request_id="r-1")
    version = _put(registry, tenant.id, BatchSettings(max_batch_size=4))
    registry.set_batching(tenant.id, "m", version, BatchSettings(enabled=False), actor=actor)

    (upload,) = registry.audit.query(tenant_id=tenant.id, action="model.upload")
    assert upload["details"]["batching"] == {"max_batch_size": 4}
    (entry,) = registry.audit.query(tenant_id=tenant.id, action="model.batching")
    assert entry["resource"] == f"model:m@{version}"
    assert entry["actor_client_id"] == "cl_admin"
    assert entry["details"] == {"before": {"max_batch_size": 4}, "after": {"enabled": False}}
    assert registry.audit.verify().ok


def test_change_and_its_record_commit_together(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the audit record cannot be written, the settings do not change either."""
    tenant = registry.create_tenant("acme")
    version = _put(registry, tenant.id)

    def broken(*args: object, **kwargs: object) -> int:
        msg = "audit log unavailable"
        raise RuntimeError(msg)

    monkeypatch.setattr(registry.audit, "append_action", broken)
    with pytest.raises(RuntimeError):
        registry.set_batching(tenant.id, "m", version, BatchSettings(enabled=False))
    monkeypatch.undo()
    assert registry.resolve(tenant.id, "m", version).batching is None
    assert registry.audit.query(tenant_id=tenant.id, action="model.batching") == []
