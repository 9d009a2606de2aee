"""The composition root: builds every long-lived object from the settings once.

Nothing else constructs engines, key rings or registries, so tests, the CLI
and the server all wire the system the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from auth import KeyAlgorithm, TokenIssuer, TokenVerifier, new_pepper, trusted_issuer_rules
from server import schema
from server.errors import StartupError
from server.jobs.layout import site_id, staging_root
from server.jobs.supervisor import JobSupervisor
from server.service.access import AccessControl, DenyList, SigningKeys
from server.service.audit import AuditRecorder, AuditReviewService
from server.service.jobs import JobService
from server.service.models import ModelAdminService
from server.service.resolver import ModelResolver
from server.service.tenants import TenantAdminService
from storage import MasterKeyRing, Registry, make_engine, make_session_factory
from storage.crypto.master import (
    MasterKeyError,
    create_master_key_file,
    load_master_key_ring_file,
    master_key_ring_from_text,
)
from storage.identity import IdentityStore
from storage.jobs import JobStore

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from server.settings import Settings

log = structlog.get_logger(__name__)


@dataclass
class Container:
    """The long-lived objects one process shares."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    master_keys: MasterKeyRing
    registry: Registry

    def close(self) -> None:
        """Release database connections."""
        self.engine.dispose()


def load_master_keys(settings: Settings, *, create: bool) -> MasterKeyRing:
    """Find the master key: the variable, else the key file.

    In development a missing key file is generated (mode 0600) when
    ``create`` is set; in production a missing or group/world-readable file is
    a start-up error, never silently fixed.
    """
    try:
        if settings.master_key is not None:
            return master_key_ring_from_text(
                settings.master_key.get_secret_value(), source="SEALSERVE_MASTER_KEY"
            )
        path = settings.resolved_master_key_file
        production = settings.env == "production"
        if not path.exists() and create and not production:
            key = create_master_key_file(path)
            log.warning("generated a new master key", path=str(path), key_id=key.key_id)
        # Several keys (one per line) during a master key rotation; see README.
        return load_master_key_ring_file(path, require_private=production)
    except MasterKeyError as exc:
        raise StartupError(exc.message) from None


def ensure_schema(engine: Engine, settings: Settings) -> None:
    """Development upgrades the schema; production refuses to run on an old one."""
    if settings.env == "development":
        if not schema.is_current(engine):  # a query; only migrating imports Alembic
            schema.upgrade(engine)
        return
    if not schema.is_current(engine):
        current = schema.current_revision(engine) or "empty"
        msg = (
            f"database schema is at {current}, the code needs {schema.head_revision(engine)}; "
            "run: sealserve db upgrade"
        )
        raise StartupError(msg)


@dataclass
class Services:
    """The use cases, built once the schema is in place (they read keys from it)."""

    identities: IdentityStore
    signing_keys: SigningKeys
    access: AccessControl
    tenants: TenantAdminService
    resolver: ModelResolver
    models: ModelAdminService
    recorder: AuditRecorder
    audit: AuditReviewService
    jobs: JobService
    supervisor: JobSupervisor
    """Runs this gateway's intake jobs; built here, started and stopped by the runner."""


PEPPER_NAME = "client-secret-pepper"
MAX_TOKEN_LIFETIME = 3600


def build_services(container: Container) -> Services:
    """Wire the services on a migrated database (creates first signing keys and pepper)."""
    settings = container.settings
    identities = IdentityStore(
        session_factory=container.sessions,
        master_keys=container.master_keys,
        audit=container.registry.audit,
    )
    pepper = identities.server_secret(PEPPER_NAME, create=new_pepper)
    signing_keys = SigningKeys(
        identities,
        alg=KeyAlgorithm(settings.signing_algorithm),
        max_token_lifetime=MAX_TOKEN_LIFETIME,
    )
    signing_keys.load()
    issuer = TokenIssuer(
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        keys=lambda: signing_keys.current.signing_key(),  # noqa: PLW0108 - the set is swapped on rotation
        default_lifetime=settings.token_lifetime_seconds,
        # The bound verification enforces, whatever lifetime we currently issue.
        max_lifetime=MAX_TOKEN_LIFETIME,
    )
    deny = DenyList(identities)
    verifier = TokenVerifier(
        issuers=[
            issuer.verification_rules(keys=signing_keys.resolve),
            *(trusted_issuer_rules(config) for config in settings.trusted_issuers),
        ],
        revoked=deny.revoked,
        tenant_suspended=deny.suspended,
    )
    access = AccessControl(
        store=identities, issuer=issuer, verifier=verifier, deny=deny, pepper=pepper
    )
    tenants = TenantAdminService(
        registry=container.registry, identities=identities, deny=deny, pepper=pepper
    )
    resolver = ModelResolver(container.registry)
    models = ModelAdminService(
        registry=container.registry, resolver=resolver, max_model_bytes=settings.max_model_bytes
    )
    recorder = AuditRecorder(container.registry.audit)
    access.recorder = recorder
    supervisor, jobs = _intake(container, resolver)
    return Services(
        identities=identities,
        signing_keys=signing_keys,
        access=access,
        tenants=tenants,
        resolver=resolver,
        models=models,
        recorder=recorder,
        audit=AuditReviewService(container.registry.audit),
        jobs=jobs,
        supervisor=supervisor,
    )


def _intake(container: Container, resolver: ModelResolver) -> tuple[JobSupervisor, JobService]:
    """The job supervisor and the job service that wakes it when an upload is queued."""
    settings = container.settings
    store = JobStore(session_factory=container.sessions, audit=container.registry.audit)
    supervisor = JobSupervisor(
        store=store, registry=container.registry, resolver=resolver, settings=settings
    )
    jobs = JobService(
        store=store,
        registry=container.registry,
        staging=staging_root(settings.data_dir),
        site=site_id(settings.data_dir),
        max_model_bytes=settings.max_model_bytes,
        max_data_bytes=settings.intake_max_data_bytes,
        on_submit=supervisor.wake,
    )
    return supervisor, jobs


def build_container(settings: Settings, *, create_keys: bool = False) -> Container:
    """Wire the engine, sessions, key ring and registry for ``settings``."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    master_keys = load_master_keys(settings, create=create_keys)
    engine = make_engine(settings.resolved_database_url)
    sessions = make_session_factory(engine)
    registry = Registry(session_factory=sessions, master_keys=master_keys)
    return Container(
        settings=settings,
        engine=engine,
        sessions=sessions,
        master_keys=master_keys,
        registry=registry,
    )
