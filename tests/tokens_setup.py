"""Prepare a server data directory for the crafted-token table (``tests/auth_cases.py``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import text

from server import schema
from server.bootstrap import build_container
from server.settings import load_settings
from server.tflite_check import check_tflite
from storage.db import unit_of_work
from storage.identity import IdentityStore, SigningKeyRecord
from storage.keys import KeyHierarchy
from tests.auth_cases import TENANT
from tests.digits import DEMO_MODEL
from tests.servers import server_env

if TYPE_CHECKING:
    from pathlib import Path

    from tests.auth_cases import TokenContext


def _ts(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def prepare_data_dir(ctx: TokenContext, data_dir: Path) -> dict[str, str]:
    """Store ``ctx``'s keys, deny-list and suspended tenant; return the server's environment."""
    jwks_file = data_dir / "external-jwks.json"
    jwks_file.write_bytes(ctx.external.jwks_document())
    trusted = ctx.external.config(jwks_file=jwks_file).model_dump(mode="json")
    env = server_env(
        data_dir,
        SEALSERVE_TOKEN_ISSUER=ctx.issuer,
        SEALSERVE_TOKEN_AUDIENCE=ctx.audience,
        SEALSERVE_TRUSTED_ISSUERS=json.dumps([trusted]),
        # The most verbose logs, so the no-secrets-in-logs check reads everything.
        SEALSERVE_LOG_LEVEL="DEBUG",
        SEALSERVE_LOG_FORMAT="json",
    )
    settings = load_settings(data_dir=data_dir)
    container = build_container(settings, create_keys=True)
    try:
        schema.upgrade(container.engine)
        store = IdentityStore(session_factory=container.sessions, master_keys=container.master_keys)
        store.save_signing_keys(
            SigningKeyRecord(
                kid=k.kid,
                alg=str(k.alg),
                state=str(k.state),
                private_key=k.private_bytes(),
                public_jwk=k.public_jwk(),
                created_at=_ts(k.created_at) or datetime.now(UTC),
                activated_at=_ts(k.activated_at),
                retired_after=_ts(k.retired_after),
            )
            for k in ctx.keys
        )
        store.revoke_token(ctx.revoked_jti, expires_at=datetime.now(UTC) + timedelta(hours=1))
        with container.engine.begin() as conn:
            for tenant_id, state in ((ctx.suspended_tenant, "suspended"), (TENANT, "active")):
                conn.execute(
                    text(
                        "INSERT INTO tenants (id, name, state, created_at) VALUES (:i, :n, :s, :c)"
                    ),
                    {"i": tenant_id, "n": tenant_id, "s": state, "c": datetime.now(UTC)},
                )
        # The table's tokens name tenant id "acme": give it a key and the digits model.
        with unit_of_work(container.sessions) as session:
            session.add(
                KeyHierarchy(container.master_keys).new_tenant_key(tenant_id=TENANT, version=1)
            )
        with DEMO_MODEL.open("rb") as source:
            container.registry.put_version(
                tenant_id=TENANT,
                model_name="digits",
                source=source,
                format="tflite",
                signature=check_tflite(DEMO_MODEL).signature,
            )
    finally:
        container.close()
    return env
