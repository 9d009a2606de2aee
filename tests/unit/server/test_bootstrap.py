"""Start-up rules: where the master key comes from and when the schema is migrated."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from server import schema
from server.bootstrap import build_container, ensure_schema, load_master_keys
from server.errors import StartupError
from server.settings import load_settings
from storage import make_engine


def test_development_generates_private_key_once(data_dir) -> None:
    """The first development start writes a 0600 key file; later starts reuse it."""
    settings = load_settings(data_dir=data_dir)
    first = load_master_keys(settings, create=True)
    path = data_dir / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_master_keys(settings, create=True).primary.key_id == first.primary.key_id


def test_production_missing_key_file_is_an_error(data_dir) -> None:
    """Production never invents a master key."""
    settings = load_settings(data_dir=data_dir, env="production", database_url="sqlite://")
    with pytest.raises(StartupError, match="does not exist"):
        load_master_keys(settings, create=True)
    assert not (data_dir / "master.key").exists()


def test_production_world_readable_key_file_is_an_error(data_dir) -> None:
    """A key file others can read stops a production start and says how to fix it."""
    path = data_dir / "master.key"
    path.write_text(base64.b64encode(os.urandom(32)).decode())
    path.chmod(0o644)
    settings = load_settings(data_dir=data_dir, env="production", database_url="sqlite://")
    with pytest.raises(StartupError, match="chmod 600"):
        load_master_keys(settings, create=False)
    path.chmod(0o600)
    assert load_master_keys(settings, create=False).primary.key_id.startswith("mk-")


def test_master_key_from_environment(data_dir) -> None:
    """SEALSERVE_MASTER_KEY (base64) wins over the file; a malformed one is refused."""
    key = base64.b64encode(os.urandom(32)).decode()
    settings = load_settings(data_dir=data_dir, master_key=key)
    assert load_master_keys(settings, create=False).primary.key_id.startswith("mk-")
    with pytest.raises(StartupError, match="not valid base64"):
        load_master_keys(load_settings(data_dir=data_dir, master_key="!!"), create=False)


def test_production_refuses_old_schema_and_development_upgrades(data_dir) -> None:
    """Production names the command to run; development migrates by itself."""
    url = f"sqlite:///{data_dir / 'x.db'}"
    engine = make_engine(url)
    production = load_settings(data_dir=data_dir, env="production", database_url=url)
    with pytest.raises(StartupError, match="run: sealserve db upgrade"):
        ensure_schema(engine, production)
    ensure_schema(engine, load_settings(data_dir=data_dir, database_url=url))
    assert schema.is_current(engine)
    ensure_schema(engine, production)  # now current: no error
    engine.dispose()


def test_container_wires_a_working_registry(data_dir) -> None:
    """The composition root builds a registry that can create tenants."""
    container = build_container(load_settings(data_dir=data_dir), create_keys=True)
    try:
        ensure_schema(container.engine, container.settings)
        assert container.registry.create_tenant("acme").name == "acme"
    finally:
        container.close()
