import json
import timeit

import jwt
import pytest

from auth import (
    IssuedToken,
    KeyAlgorithm,
    KeySet,
    KeyState,
    Scope,
    TokenExpired,
    TokenIssuer,
    TokenVerifier,
    Unauthenticated,
    own_issuer_rules,
    rotate,
)
from tests.auth_cases import unb64

NOW = 1_700_000_000
ISSUER = "https://sealserve.test"
AUDIENCE = "sealserve"


class Clock:
    """A settable clock passed to issuer and verifier (time is a parameter, not a global)."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        """Return the current time."""
        return self.now


class DenyList:
    """The server's revocation state: revoked jtis and suspended tenants."""

    def __init__(self) -> None:
        self.jtis: set[str] = set()
        self.tenants: set[str] = set()
        self.calls = 0

    def revoked(self, jti: str) -> bool:
        """Answer whether jti is revoked, counting the calls."""
        self.calls += 1
        return jti in self.jtis

    def suspended(self, tenant_id: str) -> bool:
        """Answer whether the tenant is suspended."""
        return tenant_id in self.tenants


@pytest.fixture(params=list(KeyAlgorithm))
def key_set(request) -> KeySet:
    """A fresh key set whose primary signs with each supported algorithm in turn."""
    return KeySet(rotate([], now=NOW, max_token_lifetime=3600, alg=request.param))


@pytest.fixture
def clock() -> Clock:
    """The shared clock."""
    return Clock()


@pytest.fixture
def deny() -> DenyList:
    """Empty revocation state."""
    return DenyList()


@pytest.fixture
def issuer(key_set, clock) -> TokenIssuer:
    """Our token issuer."""
    return TokenIssuer(issuer=ISSUER, audience=AUDIENCE, keys=key_set.signing_key, clock=clock)


@pytest.fixture
def verifier(issuer, key_set, clock, deny) -> TokenVerifier:
    """A caching verifier for our issuer."""
    return TokenVerifier(
        issuers=[issuer.verification_rules(keys=key_set.verification_key)],
        revoked=deny.revoked,
        tenant_suspended=deny.suspended,
        clock=clock,
    )


def _issue(issuer: TokenIssuer, **overrides) -> IssuedToken:
    values = {
        "subject": "cl_a",
        "tenant_id": "acme",
        "scopes": {Scope.INFER, Scope.MODELS_READ},
        "client_id": "cl_a",
    }
    return issuer.issue(**{**values, **overrides})


def _segments(token: str) -> tuple[dict, dict]:
    head, body, _ = token.split(".")
    return json.loads(unb64(head)), json.loads(unb64(body))


def test_header_is_exactly_alg_typ_kid(issuer, key_set):
    """The JOSE header holds alg, typ at+jwt and kid, and nothing else."""
    header, _ = _segments(_issue(issuer).token)
    primary = key_set.signing_key()
    assert header == {"alg": str(primary.alg), "typ": "at+jwt", "kid": primary.kid}


def test_claims_are_the_rfc9068_set(issuer):
    """Claims are iss aud sub tenant scope client_id iat nbf exp jti, with the default lifetime."""
    issued = _issue(issuer)
    _, claims = _segments(issued.token)
    assert claims == dict(issued.claims)
    assert set(claims) == {
        "iss",
        "aud",
        "sub",
        "tenant",
        "scope",
        "client_id",
        "iat",
        "nbf",
        "exp",
        "jti",
    }
    assert (claims["iss"], claims["aud"], claims["sub"]) == (ISSUER, AUDIENCE, "cl_a")
    assert claims["tenant"] == "acme"
    assert claims["scope"] == "infer models:read"
    assert claims["iat"] == claims["nbf"] == NOW
    assert claims["exp"] == NOW + 900
    assert issued.expires_in == 900


def test_jti_is_random_with_at_least_128_bits(issuer):
    """Each token gets a distinct jti carrying at least 128 bits."""
    jtis = {_issue(issuer).claims["jti"] for _ in range(200)}
    assert len(jtis) == 200
    assert all(len(unb64(jti)) >= 16 for jti in jtis)


def test_platform_token_uses_the_reserved_tenant(issuer, verifier):
    """tenant_id None is written as tenant '*' and read back as a platform principal."""
    issued = _issue(issuer, tenant_id=None, scopes={Scope.TENANTS_MANAGE})
    assert issued.claims["tenant"] == "*"
    assert verifier.verify(issued.token).tenant_id is None


def test_signature_verifies_with_the_published_jwk(issuer, key_set):
    """A third party holding only our JWKS can verify our tokens with PyJWT."""
    issued = _issue(issuer)
    jwk = jwt.PyJWK(key_set.jwks()["keys"][0])
    claims = jwt.decode(
        issued.token,
        jwk,
        algorithms=[jwk.algorithm_name],
        audience=AUDIENCE,
        issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert claims["sub"] == "cl_a"


def test_oauth_response_follows_rfc6749(issuer):
    """The token response has access_token, token_type Bearer, expires_in and scope."""
    issued = _issue(issuer, lifetime=60)
    assert issued.oauth_response() == {
        "access_token": issued.token,
        "token_type": "Bearer",
        "expires_in": 60,
        "scope": "infer models:read",
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"subject": ""}, "non-empty"),
        ({"client_id": ""}, "non-empty"),
        ({"tenant_id": ""}, "real tenant id"),
        ({"tenant_id": "*"}, "real tenant id"),
        ({"scopes": set()}, "at least one scope"),
        ({"tenant_id": None, "scopes": {Scope.INFER}}, "platform scopes only"),
        ({"tenant_id": "acme", "scopes": {Scope.KEYS_ROTATE}}, "platform-only"),
        ({"lifetime": 0}, "lifetime"),
        ({"lifetime": 3601}, "lifetime"),
    ],
)
def test_issue_refuses_requests_the_policy_cannot_honour(issuer, overrides, message):
    """Empty names, the reserved tenant, scope families mixed up, or a bad lifetime raise."""
    with pytest.raises(ValueError, match=message):
        _issue(issuer, **overrides)


def test_issue_refuses_a_key_that_is_not_primary(key_set):
    """Only the primary key signs, even if a caller hands over another one."""
    next_key = next(k for k in key_set.keys if k.state is KeyState.NEXT)
    issuer = TokenIssuer(issuer=ISSUER, audience=AUDIENCE, keys=lambda: next_key)
    with pytest.raises(ValueError, match="primary"):
        _issue(issuer)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"issuer": ""}, "non-empty"),
        ({"audience": ""}, "non-empty"),
        ({"default_lifetime": 0}, "lifetime"),
        ({"default_lifetime": 4000, "max_lifetime": 3600}, "lifetime"),
    ],
)
def test_issuer_configuration_is_validated(kwargs, message, key_set):
    """An issuer with no name or an impossible lifetime is refused."""
    values = {"issuer": ISSUER, "audience": AUDIENCE, "keys": key_set.signing_key, **kwargs}
    with pytest.raises(ValueError, match=message):
        TokenIssuer(**values)


def test_verify_round_trip(issuer, verifier):
    """A token we issue verifies into the principal it describes."""
    issued = _issue(issuer)
    principal = verifier.verify(issued.token)
    assert principal.subject == "cl_a"
    assert principal.tenant_id == "acme"
    assert principal.scopes == {Scope.INFER, Scope.MODELS_READ}
    assert principal.token_id == issued.claims["jti"]
    assert principal.expires_at == NOW + 900
    assert principal.issuer == ISSUER


def test_cache_hit_returns_the_same_principal(issuer, verifier):
    """The second verification of a token is served from the cache."""
    token = _issue(issuer).token
    assert verifier.verify(token) is verifier.verify(token)


def test_revocation_applies_on_a_cache_hit(issuer, verifier, deny):
    """Revoking a cached token's jti rejects it at once, and it recovers if un-revoked."""
    issued = _issue(issuer)
    verifier.verify(issued.token)
    deny.jtis.add(issued.claims["jti"])
    with pytest.raises(Unauthenticated, match="token has been revoked"):
        verifier.verify(issued.token)
    deny.jtis.clear()
    assert verifier.verify(issued.token).subject == "cl_a"


def test_suspension_applies_on_a_cache_hit(issuer, verifier, deny):
    """Suspending a tenant rejects its cached tokens at once, and not other tenants'."""
    acme = _issue(issuer).token
    globex = _issue(issuer, tenant_id="globex").token
    verifier.verify(acme)
    verifier.verify(globex)
    deny.tenants.add("acme")
    with pytest.raises(Unauthenticated, match="tenant is suspended"):
        verifier.verify(acme)
    assert verifier.verify(globex).tenant_id == "globex"


def test_platform_tokens_are_not_checked_against_tenant_suspension(issuer, verifier, deny):
    """A platform principal has no tenant to suspend."""
    deny.tenants.add("*")
    token = _issue(issuer, tenant_id=None, scopes={Scope.AUDIT_READ}).token
    assert verifier.verify(token).tenant_id is None


def test_deny_list_is_consulted_on_every_call(issuer, verifier, deny):
    """revoked() runs on each verification, hit or miss."""
    token = _issue(issuer).token
    for _ in range(5):
        verifier.verify(token)
    assert deny.calls == 5


def test_deny_list_failure_fails_closed(issuer, key_set, clock):
    """An exception from the revocation callable propagates; the token is not accepted."""

    def broken(_jti: str) -> bool:
        raise ConnectionError

    verifier = TokenVerifier(
        issuers=[issuer.verification_rules(keys=key_set.verification_key)],
        revoked=broken,
        tenant_suspended=lambda _t: False,
        clock=clock,
    )
    with pytest.raises(ConnectionError):
        verifier.verify(_issue(issuer).token)


def test_cached_token_expires_on_time(issuer, verifier, clock):
    """A cached token is accepted until exp + leeway, then TokenExpired, then still expired."""
    token = _issue(issuer, lifetime=60).token
    verifier.verify(token)
    clock.now = NOW + 60 + 29
    assert verifier.verify(token)
    clock.now = NOW + 60 + 30
    with pytest.raises(TokenExpired):
        verifier.verify(token)
    with pytest.raises(TokenExpired):
        verifier.verify(token)  # evicted, re-verified from scratch, still expired


def test_clear_cache_forces_reverification(issuer, key_set, clock, deny):
    """After clear_cache, a token whose key was pulled is rejected."""
    holder = {"keys": key_set}

    def current_key(kid: str):
        # Looked up at call time, so swapping holder["keys"] takes effect.
        return holder["keys"].verification_key(kid)

    verifier = TokenVerifier(
        issuers=[issuer.verification_rules(keys=current_key)],
        revoked=deny.revoked,
        tenant_suspended=deny.suspended,
        clock=clock,
    )
    token = _issue(issuer).token
    verifier.verify(token)
    holder["keys"] = KeySet([])  # emergency: every key withdrawn
    assert verifier.verify(token)  # still cached
    verifier.clear_cache()
    with pytest.raises(Unauthenticated, match="token key id is unknown"):
        verifier.verify(token)


def test_oversized_token_is_refused_before_the_cache(verifier):
    """A token over 8 KiB is refused by length alone, before it is hashed for the cache."""
    with pytest.raises(Unauthenticated, match="token is too large"):
        verifier.verify("a" * (8 * 1024 + 1))


def test_own_issuer_rules_work_without_a_signing_key(issuer, key_set, clock, deny):
    """A verify-only process builds our rules from names alone and accepts our tokens."""
    rules = own_issuer_rules(
        issuer=ISSUER, audience=AUDIENCE, max_lifetime=3600, keys=key_set.verification_key
    )
    verifier = TokenVerifier(
        issuers=[rules], revoked=deny.revoked, tenant_suspended=deny.suspended, clock=clock
    )
    assert verifier.verify(_issue(issuer).token).subject == "cl_a"


def test_failures_are_not_cached(issuer, verifier, deny):
    """A token rejected for revocation is accepted once un-revoked (no negative cache)."""
    issued = _issue(issuer)
    deny.jtis.add(issued.claims["jti"])
    with pytest.raises(Unauthenticated):
        verifier.verify(issued.token)
    deny.jtis.clear()
    assert verifier.verify(issued.token)


def test_issuers_must_be_distinct(issuer, key_set):
    """Two trusted issuers with one iss would make key selection ambiguous."""
    rules = issuer.verification_rules(keys=key_set.verification_key)
    with pytest.raises(ValueError, match="iss"):
        TokenVerifier(issuers=[rules, rules], revoked=bool, tenant_suspended=bool)


def test_negative_leeway_is_refused(issuer, key_set):
    """A negative leeway is a configuration error."""
    rules = issuer.verification_rules(keys=key_set.verification_key)
    with pytest.raises(ValueError, match="leeway"):
        TokenVerifier(issuers=[rules], revoked=bool, tenant_suspended=bool, leeway=-1)


def test_verification_rules_match_the_issuer(issuer):
    """Our own rules accept both our algorithms, platform tokens, and our max lifetime."""
    rules = issuer.verification_rules(keys=lambda _kid: None)
    assert rules.algorithms == {"ES256", "EdDSA"}
    assert rules.allow_platform
    assert rules.max_lifetime == 3600
    assert (rules.issuer, rules.audience) == (ISSUER, AUDIENCE)


def test_cache_hit_costs_well_under_20_microseconds(issuer, verifier):
    """Informal benchmark: a cache hit (with revocation checks) takes far less than 20 µs."""
    token = _issue(issuer).token
    verifier.verify(token)
    runs = 20_000
    best = min(timeit.repeat(lambda: verifier.verify(token), number=runs, repeat=5)) / runs
    assert best < 20e-6, f"cache hit took {best * 1e6:.2f} µs"
