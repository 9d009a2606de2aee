"""Server settings, built once at start and passed down (no module-level instance).

Sources, highest first: values given in code (CLI flags), ``SEALSERVE_*``
environment variables, the optional config file (``--config``, TOML or JSON),
then the defaults below.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from auth import TrustedIssuer
from server.affinity import supported as affinity_supported

MAX_PORT = 65535


def is_host_port(address: str) -> bool:
    """True for ``host:port`` with a port from 1 to 65535 (``[::1]:8100`` included)."""
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) <= MAX_PORT


class Settings(BaseSettings):
    """Everything an operator can set, with the defaults ``make run`` uses."""

    model_config = SettingsConfigDict(env_prefix="SEALSERVE_", extra="forbid", frozen=True)

    env: Literal["development", "production"] = "development"
    """``production`` refuses unsafe keys and out-of-date schemas instead of fixing them."""

    data_dir: Path = Path(".sealserve")
    """Holds the SQLite database and, by default, the master key file."""

    database_url: str | None = None
    """SQLAlchemy URL; default: a SQLite file in the data directory."""

    master_key_file: Path | None = None
    """File with the base64 master key; default: ``<data_dir>/master.key``."""

    master_key: SecretStr | None = None
    """The base64 master key itself (takes precedence over the file)."""

    host: str = "127.0.0.1"
    """Address the REST and gRPC ports listen on (``0.0.0.0`` in containers)."""

    rest_port: int = Field(default=8000, ge=0, le=65535)
    grpc_port: int = Field(default=8001, ge=0, le=65535)

    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=0)
    """Local inference worker processes (in all, divided among the gateway processes)."""

    spare_workers: int = Field(default=1, ge=0, le=8)
    """Started workers each gateway keeps ready beside its local ones (0: none).

    A local worker that dies is replaced by a spare at once instead of by a
    process started then, which takes a second or more of CPU (several on a
    busy host); a new spare starts in the background. Each holds no model:
    about 70 MiB of its own memory. A worker that keeps crashing still waits
    out the restart backoff.
    """

    gateways: int = Field(default=1, ge=1, le=64)
    """Gateway processes serving the same REST and gRPC ports (``SO_REUSEPORT``).

    One process tops out at one core of HTTP, gRPC and token work; with more,
    the kernel spreads connections over them. Each runs its share of the
    workers; ``/metrics`` on any of them reports all of them.
    """

    gateway_cpu_affinity: bool = False
    """Run each gateway process, and the local workers it starts, on CPUs of its own.

    Gateway ``i`` takes the ``i``-th CPU the server may use (round robin; with
    fewer gateways than CPUs, a share of them), so a gateway's hop to its
    workers stays on its CPU (``server.affinity``). For hosts whose CPUs the
    server has to itself, best with one gateway per CPU; Linux only.
    """

    remote_workers: list[str] = Field(default_factory=list)
    """``host:port`` of workers on other hosts (``sealserve worker``), as JSON in the env.

    Every gateway process sends calls to each of them as well as to its own
    local workers, over gRPC with mutual TLS (the three ``worker_tls_*``
    files). With ``workers=0`` a gateway runs no local worker at all.
    """

    worker_tls_cert: Path | None = None
    """PEM certificate this side presents: the gateway's client certificate, or a
    ``sealserve worker``'s server certificate."""

    worker_tls_key: Path | None = None
    """PEM private key of ``worker_tls_cert``."""

    worker_tls_ca: Path | None = None
    """PEM CA certificate(s) the other side's certificate must chain to."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["console", "json"] = "console"

    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    """How long in-flight calls get to finish after SIGTERM."""

    http_keepalive_seconds: int = Field(default=75, ge=1)
    """How long an idle REST connection is kept open for its client's next request.

    Longer than the idle time after which clients and load balancers stop
    reusing a pooled connection (httpx 5 s, aiohttp 15 s, nginx upstreams and
    AWS load balancers 60 s), so it is they that end an idle connection. A
    server that ends it first races their next request on it, which then fails
    with a connection reset (uvicorn's default, 5 s, is exactly httpx's).
    """

    max_model_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    """Largest model upload, enforced while the upload streams."""

    max_request_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """Largest inference request body (and total tensor bytes)."""

    infer_timeout_seconds: float = Field(default=30.0, gt=0)
    """How long one inference call may take end to end."""

    audit_inference: bool = True
    """Record every inference call in the audit log (batched per tenant, within a second)."""

    token_issuer: str = "sealserve"  # noqa: S105 - a name, not a secret
    """``iss`` of the tokens this server issues."""

    token_audience: str = "sealserve"  # noqa: S105 - a name, not a secret
    """``aud`` of the tokens this server issues and accepts."""

    token_lifetime_seconds: int = Field(default=900, gt=0, le=3600)
    """Lifetime of issued access tokens (at most one hour)."""

    signing_algorithm: Literal["ES256", "EdDSA"] = "ES256"
    """Algorithm of newly generated token signing keys."""

    trusted_issuers: list[TrustedIssuer] = Field(default_factory=list)
    """External OIDC issuers whose tokens are accepted (JSON in ``SEALSERVE_TRUSTED_ISSUERS``)."""

    # --- worker pool ---
    worker_memory_budget_mb: int = Field(default=0, ge=0)
    """MiB of models one worker may hold; least recently used ones are evicted past it (0: none)."""

    batch_max_size: int = Field(default=32, ge=1)
    """Most rows a worker runs in one interpreter call when it batches concurrent calls."""

    batch_max_delay_ms: float = Field(default=0.0, ge=0)
    """How long a worker may hold a call to fill a batch; 0 batches only what already waits."""

    worker_max_queue: int = Field(default=1024, ge=1)
    """Calls one model may have waiting in a worker; more are refused as overloaded."""

    pool_coalesce_max_calls: int = Field(default=64, ge=1)
    """Most client calls the gateway sends to a worker in one RPC (1: no coalescing)."""

    pool_coalesce_delay_ms: float = Field(default=0.2, ge=0, le=100)
    """When calls to a worker come less than five such delays apart, how long one may wait
    for others to share its trip (0: never; at low load nothing waits)."""

    pool_coalesce_busy_delay_ms: float = Field(default=3.0, ge=0, le=100)
    """How long a gRPC call may wait to share a trip to its worker while the gateway's event
    loop is busy at least 90% of the time (calls queue then anyway, and fewer trips free the
    loop); 0: as when it is not busy. gRPC hands calls over one at a time, so they meet no
    company otherwise; REST calls parsed together go together and never wait for this."""

    pool_rpcs_per_worker: int = Field(default=2, ge=1)
    """Infer RPCs the gateway keeps in flight per worker; further calls wait and coalesce."""

    pool_max_pending: int = Field(default=4096, ge=1)
    """Calls the gateway may hold waiting for one worker; more are refused as overloaded."""

    tenant_max_concurrency: int = Field(default=0, ge=0)
    """Inference calls one tenant may have in progress (admitted, not answered); 0: no limit."""

    tenant_rate_limit: float = Field(default=0.0, ge=0)
    """Sustained inference calls per second per tenant (token bucket); 0: no limit."""

    tenant_rate_burst: int = Field(default=0, ge=0)
    """Calls a tenant may make at once above its rate; 0: one second's worth of the rate."""

    # --- model intake ---
    jobs_concurrency: int = Field(default=1, ge=1)
    """Intake jobs one gateway runs at once (each a process with TensorFlow: RAM and cores)."""

    jobs_timeout_seconds: float = Field(default=3600.0, gt=0)
    """A job running longer is killed and marked failed."""

    jobs_threads: int = Field(default=0, ge=0)
    """CPU threads each job's TensorFlow may use; 0 lets TensorFlow choose."""

    jobs_memory_mb: int = Field(default=8192, ge=0)
    """Most resident memory (MiB) one job process may hold; past it, it is killed. 0: no limit."""

    jobs_stale_seconds: float = Field(default=30.0, ge=1)
    """A running job without a heartbeat for this long is failed (its gateway died)."""

    jobs_sandbox: bool = True
    """Confine each job process with Landlock (own directory only, no TCP) where Linux has it."""

    intake_max_data_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    """Largest calibration, evaluation or training file, enforced while the upload streams."""

    intake_max_unpacked_bytes: int = Field(default=2048 * 1024 * 1024, gt=0)
    """Most bytes an uploaded archive (SavedModel, .keras, .npz) may unpack to."""

    intake_max_archive_entries: int = Field(default=10_000, gt=0)
    """Most entries in an uploaded archive."""

    intake_max_archive_ratio: float = Field(default=100.0, gt=1)
    """Most unpacked bytes per archive byte (zip bombs compress by a thousand)."""

    @model_validator(mode="after")
    def _production_needs_explicit_choices(self) -> Settings:
        if self.env == "production" and self.database_url is None:
            msg = "SEALSERVE_DATABASE_URL must be set in production"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _cpu_affinity_needs_linux(self) -> Settings:
        if self.gateway_cpu_affinity and not affinity_supported():
            msg = "SEALSERVE_GATEWAY_CPU_AFFINITY needs an OS that lets a process choose its CPUs"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _remote_workers_need_mutual_tls(self) -> Settings:
        for address in self.remote_workers:
            if not is_host_port(address):
                msg = f"remote worker address {address!r} is not host:port"
                raise ValueError(msg)
        if self.remote_workers and not self.worker_tls_files:
            msg = (
                "remote workers need mutual TLS: set SEALSERVE_WORKER_TLS_CERT, "
                "SEALSERVE_WORKER_TLS_KEY and SEALSERVE_WORKER_TLS_CA"
            )
            raise ValueError(msg)
        return self

    @property
    def worker_tls_files(self) -> tuple[Path, Path, Path] | None:
        """(certificate, key, CA) when all three are set, else None."""
        if self.worker_tls_cert and self.worker_tls_key and self.worker_tls_ca:
            return self.worker_tls_cert, self.worker_tls_key, self.worker_tls_ca
        return None

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to ``<data_dir>/sealserve.db``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'sealserve.db').resolve()}"

    @property
    def resolved_master_key_file(self) -> Path:
        """The master key file, defaulting to ``<data_dir>/master.key``."""
        return self.master_key_file or self.data_dir / "master.key"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Code, then environment, then the config file (passed as ``_config_values``)."""
        del dotenv_settings, file_secret_settings
        return (init_settings, env_settings, _ConfigFileSource(settings_cls))


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Values from the file named by ``load_settings(config_file=...)``."""

    values: dict[str, Any] = {}  # noqa: RUF012 - set per load, read once

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        del field
        return self.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.values)


class ConfigFileError(ValueError):
    """The config file cannot be read or parsed."""


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a TOML or JSON config file into field values (keys as in the env, lower case)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"cannot read config file {path}: {exc.strerror}"
        raise ConfigFileError(msg) from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        msg = f"config file {path} is not valid {path.suffix.lstrip('.') or 'TOML'}: {exc}"
        raise ConfigFileError(msg) from None
    section = data.get("sealserve", data)
    return {key.lower().removeprefix("sealserve_"): value for key, value in section.items()}


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings once: overrides > environment > config file > defaults."""
    _ConfigFileSource.values = read_config_file(config_file) if config_file else {}
    try:
        return Settings(**overrides)
    finally:
        _ConfigFileSource.values = {}
