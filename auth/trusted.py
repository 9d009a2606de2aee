"""Configuration of an external (OIDC) issuer whose access tokens we accept.

An operator lists trusted issuers in the server settings; each becomes an
``IssuerRules`` with a ``JwksKeyResolver`` and goes through exactly the same
verification and policy as our own tokens. Only configuration chooses where
keys come from: never a token header.
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, model_validator

from auth.issuers import TOKEN_TYPE, IssuerRules, KeyResolver
from auth.jwks_resolver import JwksKeyResolver, JwksSource, file_source, url_source

if TYPE_CHECKING:
    from collections.abc import Callable

    import httpx

ExternalAlgorithm = Literal[
    "ES256", "ES384", "ES512", "EdDSA", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"
]
"""Algorithms an external issuer's keys may use: asymmetric only, never ``none`` or HS*."""

_LOOPBACK_NAMES = frozenset({"localhost"})
_DAY = 86_400


class TrustedIssuer(BaseModel):
    """One external issuer: who it is, where its keys are, how its claims map to ours.

    Exactly one of ``jwks_file`` and ``jwks_url`` is set; a URL must be
    ``https`` (plain ``http`` only to a loopback address, for tests and
    sidecars). ``allow_platform`` lets this issuer's tokens carry the
    platform tenant ``*``; it is off by default so an external identity
    provider cannot mint platform administrators unless the operator says so.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    jwks_file: Path | None = None
    jwks_url: AnyHttpUrl | None = None
    tenant_claim: str = Field(default="tenant", min_length=1)
    scope_claim: str = Field(default="scope", min_length=1)
    algorithms: frozenset[ExternalAlgorithm] = frozenset({"ES256", "EdDSA", "RS256"})
    token_types: frozenset[str] = frozenset({TOKEN_TYPE})
    max_lifetime: int = Field(default=3600, gt=0, le=_DAY)
    allow_platform: bool = False
    min_refresh_interval: float = Field(default=60.0, ge=1.0)

    @model_validator(mode="after")
    def _one_safe_source(self) -> Self:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("set exactly one of jwks_file and jwks_url")
        if not self.algorithms:
            raise ValueError("allow at least one algorithm")
        url = self.jwks_url
        if url is not None and url.scheme != "https" and not _is_loopback(url.host or ""):
            raise ValueError("jwks_url must use https (http only to a loopback address)")
        return self


def jwks_resolver(
    config: TrustedIssuer,
    *,
    http: httpx.Client | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> JwksKeyResolver:
    """Build the key resolver of ``config``: lazy; call ``refresh()`` to load eagerly.

    Pass ``http`` to share a client (its connection pool, proxies, CA bundle)
    with the rest of the server; otherwise the resolver owns a private one
    for the life of the process.
    """
    source: JwksSource
    if config.jwks_file is not None:
        source = file_source(config.jwks_file)
    else:
        source = url_source(str(config.jwks_url), client=http)
    return JwksKeyResolver(
        source=source,
        algorithms=config.algorithms,
        min_refresh_interval=config.min_refresh_interval,
        clock=clock,
    )


def trusted_issuer_rules(config: TrustedIssuer, *, keys: KeyResolver | None = None) -> IssuerRules:
    """Build the rules for ``config``; ``keys`` defaults to ``jwks_resolver(config)``."""
    return IssuerRules(
        issuer=config.issuer,
        audience=config.audience,
        keys=keys if keys is not None else jwks_resolver(config),
        algorithms=frozenset(config.algorithms),
        max_lifetime=config.max_lifetime,
        tenant_claim=config.tenant_claim,
        scope_claim=config.scope_claim,
        token_types=config.token_types,
        allow_platform=config.allow_platform,
    )


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
