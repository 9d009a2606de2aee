"""The registry on real SQLite and PostgreSQL: round trips, scoping, labels."""

from __future__ import annotations

import io
import os

import pytest

from storage import Conflict, InvalidInput, NotFound, Registry

SIZES = [0, 1, 64 * 1024, 64 * 1024 + 1, 200_000]


@pytest.mark.parametrize("size", SIZES)
def test_put_and_open_is_bit_exact(registry: Registry, size: int) -> None:
    """A model comes back byte for byte, whatever its size relative to a segment."""
    tenant = registry.create_tenant("acme")
    payload = os.urandom(size)
    info = registry.put_version(
        tenant_id=tenant.id, model_name="m", source=io.BytesIO(payload), format="tflite"
    )
    assert info.version == 1
    assert info.size_plain == size
    assert registry.open_version(tenant.id, info.id) == payload


def test_uncompressed_registry_round_trip(registry: Registry, engine, master_keys) -> None:
    """Sealing without compression stores and returns the same bytes."""
    from storage import make_session_factory

    plain = Registry(
        session_factory=make_session_factory(engine),
        master_keys=master_keys,
        segment_size=4096,
        compression="none",
    )
    tenant = plain.create_tenant("acme")
    payload = os.urandom(10_000)
    info = plain.put_version(
        tenant_id=tenant.id, model_name="m", source=io.BytesIO(payload), format="tflite"
    )
    assert info.compression == "none"
    assert plain.open_version(tenant.id, info.id) == payload


def test_compressible_model_is_stored_smaller(registry: Registry) -> None:
    """Bytes are compressed before sealing, so a sparse model takes less room at rest."""
    tenant = registry.create_tenant("acme")
    info = registry.put_version(
        tenant_id=tenant.id, model_name="m", source=io.BytesIO(bytes(500_000)), format="tflite"
    )
    version = registry.resolve(tenant.id, "m", info.version)
    assert version.size_stored < version.size_plain // 10


def test_versions_labels_and_resolution(registry: Registry) -> None:
    """Versions count up; labels move; no version means the latest ready one."""
    tenant = registry.create_tenant("acme")
    for n in range(3):
        registry.put_version(
            tenant_id=tenant.id, model_name="m", source=io.BytesIO(b"v%d" % n), format="tflite"
        )
    registry.put_version(
        tenant_id=tenant.id,
        model_name="m",
        source=io.BytesIO(b"pending"),
        format="tflite",
        state="pending",
    )
    assert registry.resolve(tenant.id, "m").version == 3
    registry.set_label(tenant.id, "m", "stable", 1)
    assert registry.resolve(tenant.id, "m", "stable").version == 1
    registry.set_label(tenant.id, "m", "stable", 2)
    assert registry.resolve(tenant.id, "m", "stable").version == 2
    assert registry.resolve(tenant.id, "m", "2").labels == ("stable",)
    model = registry.get_model(tenant.id, "m")
    assert [v.version for v in model.versions] == [1, 2, 3, 4]
    assert model.labels == {"stable": 2}
    with pytest.raises(NotFound):
        registry.set_label(tenant.id, "m", "canary", 9)
    with pytest.raises(InvalidInput):
        registry.set_label(tenant.id, "m", "7", 1)


def test_delete_version_takes_its_labels_and_last_takes_model(registry: Registry) -> None:
    """Deleting a version removes its labels; deleting the last removes the model."""
    tenant = registry.create_tenant("acme")
    for payload in (b"a", b"b"):
        registry.put_version(
            tenant_id=tenant.id, model_name="m", source=io.BytesIO(payload), format="tflite"
        )
    registry.set_label(tenant.id, "m", "stable", 2)
    registry.delete_version(tenant.id, "m", 2)
    assert registry.get_model(tenant.id, "m").labels == {}
    with pytest.raises(NotFound):
        registry.resolve(tenant.id, "m", "stable")
    registry.delete_version(tenant.id, "m", 1)
    assert registry.list_models(tenant.id) == []


def test_other_tenants_model_is_indistinguishable_from_missing(registry: Registry) -> None:
    """Tenant B gets exactly the NotFound text of a model that does not exist."""
    a = registry.create_tenant("tenant-a")
    b = registry.create_tenant("tenant-b")
    info = registry.put_version(
        tenant_id=a.id, model_name="secret", source=io.BytesIO(b"x"), format="tflite"
    )
    with pytest.raises(NotFound) as theirs:
        registry.resolve(b.id, "secret")
    c = registry.create_tenant("tenant-c")  # a tenant where nothing was ever stored
    with pytest.raises(NotFound) as missing:
        registry.resolve(c.id, "secret")
    assert str(theirs.value) == str(missing.value)
    with pytest.raises(NotFound):
        registry.open_version(b.id, info.id)
    assert registry.list_models(b.id) == []


def test_names_are_validated_and_tenants_unique(registry: Registry) -> None:
    """Bad names are refused with the reason; duplicate tenants conflict."""
    with pytest.raises(InvalidInput, match="tenant name"):
        registry.create_tenant("Bad Name")
    registry.create_tenant("acme")
    with pytest.raises(Conflict, match="already exists"):
        registry.create_tenant("acme")
    tenant = registry.get_tenant("acme")
    with pytest.raises(InvalidInput, match="model name"):
        registry.put_version(
            tenant_id=tenant.id, model_name="../etc", source=io.BytesIO(b""), format="tflite"
        )


def test_size_limit_enforced_while_streaming_leaves_nothing(registry: Registry) -> None:
    """An upload over the limit is refused and no model or version is left behind."""
    tenant = registry.create_tenant("acme")
    with pytest.raises(InvalidInput, match="larger than the limit"):
        registry.put_version(
            tenant_id=tenant.id,
            model_name="m",
            source=io.BytesIO(os.urandom(300_000)),
            format="tflite",
            max_bytes=100_000,
        )
    assert registry.list_models(tenant.id) == []


def test_suspend_and_resume(registry: Registry) -> None:
    """Tenant state changes are stored."""
    registry.create_tenant("acme")
    assert registry.set_tenant_state("acme", "suspended").state == "suspended"
    assert registry.get_tenant("acme").state == "suspended"
    assert registry.set_tenant_state("acme", "active").state == "active"
