"""Operator settings of the auth package, and the issuer and verifier they describe.

``AuthSettings`` reads ``SEALSERVE_AUTH_*`` variables on its own, or nests in
the server's settings as a field. Building the issuer and the verifier from
the same settings object keeps them consistent: the verifier's lifetime bound
and leeway are the ones the issuer signs with and rotation retires keys by.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from auth.keys import DEFAULT_LEEWAY, KeyAlgorithm, SigningKey
from auth.secrets import MIN_PEPPER_BYTES
from auth.tokens import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_LIFETIME,
    MAX_LIFETIME,
    TokenIssuer,
    TokenVerifier,
    own_issuer_rules,
)
from auth.trusted import TrustedIssuer, jwks_resolver, trusted_issuer_rules

if TYPE_CHECKING:
    from collections.abc import Callable

    import httpx

    from auth.issuers import KeyResolver

_DAY = 86_400


class AuthSettings(BaseSettings):
    """Who we are as a token issuer, what we trust, and how long tokens live.

    ``client_secret_pepper`` (at least 32 bytes of UTF-8) overrides the
    pepper the server otherwise keeps wrapped in its database; read it with
    ``pepper()``. Trusted issuers must not reuse our own ``issuer`` value.
    """

    model_config = SettingsConfigDict(env_prefix="SEALSERVE_AUTH_", extra="forbid", frozen=True)

    issuer: str = Field(default="sealserve", min_length=1)
    """Our ``iss``: best the public base URL of the gateway."""
    audience: str = Field(default="sealserve", min_length=1)
    """The ``aud`` our tokens carry and every accepted token must name."""
    signing_alg: KeyAlgorithm = KeyAlgorithm.ES256
    """Algorithm of newly generated signing keys (existing keys keep theirs)."""
    token_lifetime: int = Field(default=DEFAULT_LIFETIME, gt=0)
    max_token_lifetime: int = Field(default=MAX_LIFETIME, gt=0, le=_DAY)
    leeway: int = Field(default=DEFAULT_LEEWAY, ge=0, le=300)
    verifier_cache_size: int = Field(default=DEFAULT_CACHE_SIZE, ge=0)
    client_secret_pepper: SecretStr | None = None
    trusted_issuers: tuple[TrustedIssuer, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        pepper = self.pepper()
        if pepper is not None and len(pepper) < MIN_PEPPER_BYTES:
            raise ValueError(f"client_secret_pepper must be at least {MIN_PEPPER_BYTES} bytes")
        if self.token_lifetime > self.max_token_lifetime:
            raise ValueError("token_lifetime must not exceed max_token_lifetime")
        names = [self.issuer, *(trusted.issuer for trusted in self.trusted_issuers)]
        if len(set(names)) != len(names):
            raise ValueError("every trusted issuer needs its own iss, distinct from ours")
        return self

    def pepper(self) -> bytes | None:
        """Return the configured client-secret pepper's bytes, if one is configured."""
        if self.client_secret_pepper is None:
            return None
        return self.client_secret_pepper.get_secret_value().encode("utf-8")

    def token_issuer(self, *, keys: Callable[[], SigningKey]) -> TokenIssuer:
        """Build our issuer; ``keys`` returns the current primary (``KeySet.signing_key``)."""
        return TokenIssuer(
            issuer=self.issuer,
            audience=self.audience,
            keys=keys,
            default_lifetime=self.token_lifetime,
            max_lifetime=self.max_token_lifetime,
        )

    def token_verifier(
        self,
        *,
        keys: KeyResolver,
        revoked: Callable[[str], bool],
        tenant_suspended: Callable[[str], bool],
        http: httpx.Client | None = None,
    ) -> TokenVerifier:
        """Build the verifier for our tokens (``keys`` resolves our kids) and trusted issuers'."""
        own = own_issuer_rules(
            issuer=self.issuer,
            audience=self.audience,
            max_lifetime=self.max_token_lifetime,
            keys=keys,
        )
        external = [
            trusted_issuer_rules(config, keys=jwks_resolver(config, http=http))
            for config in self.trusted_issuers
        ]
        return TokenVerifier(
            issuers=[own, *external],
            revoked=revoked,
            tenant_suspended=tenant_suspended,
            leeway=self.leeway,
            cache_size=self.verifier_cache_size,
        )
