"""Access tokens: issuing our own, and verifying ours and trusted issuers' alike.

Issuance follows RFC 9068 (JWT access tokens): header exactly
``{"alg", "typ": "at+jwt", "kid"}``, claims ``iss aud sub tenant scope
client_id iat nbf exp jti``. Verification follows RFC 8725, in an order that
does the cheap, attacker-facing checks first and the signature check only on
tokens that could possibly be valid:

1. size, shape and header allow-list (``auth._header``);
2. issuer chosen by the *unverified* ``iss`` (only to pick rules and keys),
   ``typ`` checked, key looked up by ``kid``, algorithm pinned to the key's;
3. signature (PyJWT, with ``algorithms=[key.alg]``);
4. claims, strictly typed, lifetime-bounded (``auth._claims``);
5. revocation: the ``jti`` deny-list and tenant suspension.

Verified tokens are cached until they expire, so step 3 is paid once per
token, but step 5 runs on every call, cache hit or not, so a revocation or a
suspension takes effect at once.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt

from auth._cache import PrincipalCache
from auth._claims import principal_from_claims
from auth._header import MAX_TOKEN_BYTES, read_unverified
from auth.errors import TokenExpired, Unauthenticated
from auth.issuers import PLATFORM_TENANT, TOKEN_TYPE, IssuerRules, KeyResolver, normalize_type
from auth.keys import DEFAULT_LEEWAY, KeyAlgorithm, KeyState, SigningKey
from auth.permissions import PLATFORM_ONLY_SCOPES, PLATFORM_SCOPES, Scope, format_scope

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from auth.principal import Principal

DEFAULT_LIFETIME = 900
MAX_LIFETIME = 3600
DEFAULT_CACHE_SIZE = 10_000
_JTI_BYTES = 16  # 128 bits: unguessable and collision-free at any issuance rate

# Signature only: every claim is checked by ``auth._claims``, more strictly.
_SIGNATURE_ONLY = jwt.PyJWT(
    options={
        "verify_signature": True,
        "verify_exp": False,
        "verify_nbf": False,
        "verify_iat": False,
        "verify_aud": False,
        "verify_iss": False,
        "verify_sub": False,
        "verify_jti": False,
    }
)


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly signed access token, its claims, and its lifetime in seconds."""

    token: str
    claims: Mapping[str, Any]
    expires_in: int

    def oauth_response(self) -> dict[str, str | int]:
        """Build the RFC 6749 §5.1 token response body (the transport serialises it)."""
        return {
            "access_token": self.token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": self.claims["scope"],
        }


class TokenIssuer:
    """Signs access tokens with our current primary key.

    ``keys`` returns the primary ``SigningKey`` at the moment of signing, so a
    rotation (a new ``KeySet`` swapped in by the server) takes effect on the
    next token without rebuilding the issuer.
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        keys: Callable[[], SigningKey],
        default_lifetime: int = DEFAULT_LIFETIME,
        max_lifetime: int = MAX_LIFETIME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not issuer or not audience:
            raise ValueError("issuer and audience must be non-empty")
        if not 0 < default_lifetime <= max_lifetime:
            raise ValueError("need 0 < default_lifetime <= max_lifetime")
        self._issuer = issuer
        self._audience = audience
        self._keys = keys
        self._default_lifetime = default_lifetime
        self._max_lifetime = max_lifetime
        self._clock = clock

    def issue(
        self,
        *,
        subject: str,
        tenant_id: str | None,
        scopes: Iterable[Scope],
        client_id: str,
        lifetime: int | None = None,
    ) -> IssuedToken:
        """Sign a token for ``subject``; ``tenant_id=None`` makes a platform token.

        Raises ``ValueError`` on a request the policy could never honour: an
        empty subject or client id, the reserved tenant ``*``, no scope, a
        platform-only scope for a tenant or a tenant scope for the platform,
        or a lifetime outside ``1..max_lifetime``. These are server bugs, not
        client errors: scopes come from ``narrow_scopes`` and the client's roles.
        """
        granted = frozenset(scopes)
        self._check_request(
            subject=subject, tenant_id=tenant_id, scopes=granted, client_id=client_id
        )
        seconds = self._default_lifetime if lifetime is None else lifetime
        if not 0 < seconds <= self._max_lifetime:
            raise ValueError("token lifetime out of range")
        key = self._keys()
        if key.state is not KeyState.PRIMARY:
            raise ValueError("tokens are signed with the primary key only")
        now = int(self._clock())
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": subject,
            "tenant": PLATFORM_TENANT if tenant_id is None else tenant_id,
            "scope": format_scope(granted),
            "client_id": client_id,
            "iat": now,
            "nbf": now,
            "exp": now + seconds,
            "jti": secrets.token_urlsafe(_JTI_BYTES),
        }
        token = jwt.encode(
            claims,
            key.private_key,
            algorithm=key.alg,
            headers={"typ": TOKEN_TYPE, "kid": key.kid},
        )
        return IssuedToken(token=token, claims=claims, expires_in=seconds)

    def verification_rules(self, *, keys: KeyResolver) -> IssuerRules:
        """Return the rules that verify this issuer's tokens, consistent with how it signs."""
        return own_issuer_rules(
            issuer=self._issuer, audience=self._audience, max_lifetime=self._max_lifetime, keys=keys
        )

    @staticmethod
    def _check_request(
        *, subject: str, tenant_id: str | None, scopes: frozenset[Scope], client_id: str
    ) -> None:
        if not subject or not client_id:
            raise ValueError("subject and client_id must be non-empty")
        if tenant_id is not None and (not tenant_id or tenant_id == PLATFORM_TENANT):
            raise ValueError("tenant_id must be a real tenant id, or None for the platform")
        if not scopes:
            raise ValueError("a token must carry at least one scope")
        if tenant_id is None and not scopes <= PLATFORM_SCOPES:
            raise ValueError("a platform token carries platform scopes only")
        if tenant_id is not None and scopes & PLATFORM_ONLY_SCOPES:
            raise ValueError("a tenant token cannot carry platform-only scopes")


def own_issuer_rules(
    *, issuer: str, audience: str, max_lifetime: int, keys: KeyResolver
) -> IssuerRules:
    """Return the rules for tokens we issue: our algorithms, platform tokens allowed.

    For a verifier in a process that does not issue (it only needs the
    issuer's name, audience and lifetime bound, not its signing key).
    """
    return IssuerRules(
        issuer=issuer,
        audience=audience,
        keys=keys,
        algorithms=frozenset(KeyAlgorithm),
        max_lifetime=max_lifetime,
        allow_platform=True,
    )


class TokenVerifier:
    """Turns a bearer token into a ``Principal``, or raises ``Unauthenticated``.

    One verifier serves both transports. ``issuers`` are the trusted issuers'
    rules (ours from ``TokenIssuer.verification_rules``, external ones from
    ``trusted_issuer_rules``); their ``iss`` values must be distinct.
    ``revoked(jti)`` and ``tenant_suspended(tenant_id)`` are called on every
    verification and must be fast (an in-memory set the server refreshes);
    an exception from them propagates, so a broken deny-list fails closed.
    """

    def __init__(
        self,
        *,
        issuers: Iterable[IssuerRules],
        revoked: Callable[[str], bool],
        tenant_suspended: Callable[[str], bool],
        leeway: int = DEFAULT_LEEWAY,
        cache_size: int = DEFAULT_CACHE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._issuers: dict[str, IssuerRules] = {}
        for rules in issuers:
            if rules.issuer in self._issuers:
                raise ValueError("two trusted issuers share an iss value")
            self._issuers[rules.issuer] = rules
        if leeway < 0:
            raise ValueError("leeway must be >= 0")
        self._revoked = revoked
        self._tenant_suspended = tenant_suspended
        self._leeway = leeway
        self._clock = clock
        self._cache = PrincipalCache(max_entries=cache_size)

    def verify(self, token: str) -> Principal:
        """Return the principal a valid, unrevoked token stands for.

        Raises ``TokenExpired`` for an expired token and ``Unauthenticated``
        for anything else; messages are short, public, and never contain
        the token or a value read from it.
        """
        # Bound the size before the cache lookup, which hashes the whole string.
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated("token is too large")
        cached = self._cache.get(token)
        if cached is not None:
            principal, valid_until = cached
            if self._clock() >= valid_until:
                self._cache.discard(token)
                raise TokenExpired
        else:
            principal = self._verify_uncached(token)
            self._cache.put(token, principal, valid_until=principal.expires_at + self._leeway)
        self._check_revocation(principal)
        return principal

    def clear_cache(self) -> None:
        """Forget every verified token, e.g. after a signing key was pulled in an emergency."""
        self._cache.clear()

    def _verify_uncached(self, token: str) -> Principal:
        unverified = read_unverified(token)
        rules = self._issuers.get(unverified.issuer)
        if rules is None:
            raise Unauthenticated("token issuer is not trusted")
        if normalize_type(unverified.typ) not in rules.token_types:
            raise Unauthenticated("token type is not allowed")
        key = rules.keys(unverified.kid)
        if key is None:
            raise Unauthenticated("token key id is unknown")
        if unverified.alg != key.alg or key.alg not in rules.algorithms:
            raise Unauthenticated("token algorithm is not allowed")
        try:
            claims = _SIGNATURE_ONLY.decode(token, key.public_key, algorithms=[key.alg])
        except jwt.InvalidSignatureError:
            raise Unauthenticated("token signature is invalid") from None
        except jwt.PyJWTError as error:
            raise Unauthenticated("token is malformed", detail=type(error).__name__) from None
        return principal_from_claims(
            claims, rules=rules, now=int(self._clock()), leeway=self._leeway
        )

    def _check_revocation(self, principal: Principal) -> None:
        if self._revoked(principal.token_id):
            raise Unauthenticated("token has been revoked")
        if principal.tenant_id is not None and self._tenant_suspended(principal.tenant_id):
            raise Unauthenticated("tenant is suspended")
