"""What a token from one issuer must satisfy, for own and external issuers alike.

The verifier holds one ``IssuerRules`` per trusted ``iss``: our own issuer
and each configured external (OIDC) issuer. Both go through the same code
path; only these values differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from auth.jwk import ASYMMETRIC_ALGORITHMS, VerificationKey

KeyResolver = Callable[[str], VerificationKey | None]
"""Looks a ``kid`` up among an issuer's current verification keys.

Returns ``None`` for an unknown id. Must treat the id as an opaque lookup key
(a dict key, a bound query parameter), never as a path, URL or query text:
it comes from an unauthenticated header.
"""

TOKEN_TYPE = "at+jwt"  # noqa: S105 - a media type, not a password
"""The JWT ``typ`` of an OAuth2 access token (RFC 9068 §2.1)."""

PLATFORM_TENANT = "*"
"""Tenant claim value of a platform principal (``Principal.tenant_id is None``).

The tenant claim is required on every token, so a platform token cannot just
omit it: a missing claim must keep meaning "malformed token", never "all
tenants". ``*`` is not a valid tenant id, so it cannot collide with one.
"""


@dataclass(frozen=True, slots=True)
class IssuerRules:
    """The verification rules of one issuer.

    ``algorithms`` bounds what the issuer's keys may be pinned to (each key
    still verifies with its own single algorithm). ``token_types`` are the
    accepted ``typ`` values, compared case-insensitively and without an
    ``application/`` prefix (RFC 7515 §4.1.9). ``allow_platform`` says
    whether a token of this issuer may carry the platform tenant ``*``; only
    our own issuer should, by default.
    """

    issuer: str
    audience: str
    keys: KeyResolver
    algorithms: frozenset[str]
    max_lifetime: int = 3600
    tenant_claim: str = "tenant"
    scope_claim: str = "scope"
    token_types: frozenset[str] = frozenset({TOKEN_TYPE})
    allow_platform: bool = False

    def __post_init__(self) -> None:
        if not self.issuer or not self.audience:
            raise ValueError("an issuer needs a non-empty issuer and audience")
        if not self.algorithms or not self.algorithms <= ASYMMETRIC_ALGORITHMS:
            raise ValueError("issuer algorithms must be asymmetric JWS algorithms")
        if self.max_lifetime <= 0:
            raise ValueError("max_lifetime must be positive")
        object.__setattr__(
            self, "token_types", frozenset(normalize_type(t) for t in self.token_types)
        )


def normalize_type(typ: str) -> str:
    """Canonical form of a ``typ`` value: lower case, without ``application/``."""
    lowered = typ.lower()
    return lowered.removeprefix("application/")
