"""Settings: environment names, config file, precedence and production checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server.settings import ConfigFileError, load_settings


def test_defaults(monkeypatch) -> None:
    """Defaults are the ones the README documents."""
    for name in ("SEALSERVE_DATA_DIR", "SEALSERVE_REST_PORT", "SEALSERVE_ENV"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.env == "development"
    assert settings.data_dir == Path(".sealserve")
    assert (settings.rest_port, settings.grpc_port) == (8000, 8001)
    assert settings.resolved_database_url.startswith("sqlite:///")
    assert settings.resolved_database_url.endswith(".sealserve/sealserve.db")
    assert settings.resolved_master_key_file == Path(".sealserve/master.key")


def test_environment_names(monkeypatch, tmp_path) -> None:
    """Every documented SEALSERVE_* variable is honoured."""
    env = {
        "SEALSERVE_DATA_DIR": str(tmp_path),
        "SEALSERVE_DATABASE_URL": "postgresql://db/x",
        "SEALSERVE_MASTER_KEY_FILE": str(tmp_path / "k"),
        "SEALSERVE_ENV": "production",
        "SEALSERVE_REST_PORT": "9000",
        "SEALSERVE_GRPC_PORT": "9001",
        "SEALSERVE_WORKERS": "3",
        "SEALSERVE_LOG_LEVEL": "DEBUG",
        "SEALSERVE_LOG_FORMAT": "json",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = load_settings()
    assert (s.data_dir, s.database_url, s.master_key_file) == (
        tmp_path,
        "postgresql://db/x",
        tmp_path / "k",
    )
    assert (s.env, s.rest_port, s.grpc_port, s.workers) == ("production", 9000, 9001, 3)
    assert (s.log_level, s.log_format) == ("DEBUG", "json")


def test_config_file_and_precedence(monkeypatch, tmp_path) -> None:
    """Overrides beat the environment, which beats the config file."""
    config = tmp_path / "sealserve.toml"
    config.write_text('[sealserve]\nrest_port = 7000\ngrpc_port = 7001\nlog_format = "json"\n')
    monkeypatch.setenv("SEALSERVE_GRPC_PORT", "7101")
    s = load_settings(config, log_format="console")
    assert (s.rest_port, s.grpc_port, s.log_format) == (7000, 7101, "console")


def test_bad_config_file_names_the_problem(tmp_path) -> None:
    """An unreadable or malformed config file is a clear error, not a trace."""
    with pytest.raises(ConfigFileError, match="cannot read"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("rest_port = = 1")
    with pytest.raises(ConfigFileError, match="not valid"):
        load_settings(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("no_such_setting = 1")
    with pytest.raises(ValidationError, match="no_such_setting"):
        load_settings(unknown)


def test_production_requires_database_url(monkeypatch) -> None:
    """Production does not fall back to a local SQLite file silently."""
    monkeypatch.delenv("SEALSERVE_DATABASE_URL", raising=False)
    with pytest.raises(ValidationError, match="SEALSERVE_DATABASE_URL"):
        load_settings(env="production")


def test_remote_workers_come_from_json_and_need_all_three_tls_files(monkeypatch, tmp_path) -> None:
    """SEALSERVE_REMOTE_WORKERS is a JSON list; without cert, key and CA it is refused."""
    monkeypatch.setenv("SEALSERVE_REMOTE_WORKERS", '["10.0.0.5:8100", "[::1]:8101"]')
    with pytest.raises(ValidationError, match="remote workers need mutual TLS"):
        load_settings(worker_tls_cert=tmp_path / "c.pem", worker_tls_key=tmp_path / "k.pem")
    files = {name: tmp_path / f"{name}.pem" for name in ("cert", "key", "ca")}
    settings = load_settings(**{f"worker_tls_{name}": path for name, path in files.items()})
    assert settings.remote_workers == ["10.0.0.5:8100", "[::1]:8101"]
    assert settings.worker_tls_files == (files["cert"], files["key"], files["ca"])


@pytest.mark.parametrize("address", ["worker-host", ":8100", "host:", "host:port", "host:70000"])
def test_a_remote_worker_address_must_be_host_and_port(address: str, tmp_path) -> None:
    """The error names the address that is not host:port."""
    with pytest.raises(
        ValidationError, match=f"remote worker address '{address}' is not host:port"
    ):
        load_settings(
            remote_workers=[address],
            worker_tls_cert=tmp_path / "c",
            worker_tls_key=tmp_path / "k",
            worker_tls_ca=tmp_path / "a",
        )
