import pytest

from auth._claims import principal_from_claims
from auth.errors import TokenExpired, Unauthenticated
from auth.issuers import IssuerRules
from auth.permissions import Scope

NOW = 1_700_000_000
LEEWAY = 30
RULES = IssuerRules(
    issuer="https://sealserve.test",
    audience="sealserve",
    keys=lambda _kid: None,
    algorithms=frozenset({"ES256"}),
    allow_platform=True,
)


def _claims(**overrides):
    claims = {
        "iss": "https://sealserve.test",
        "aud": "sealserve",
        "sub": "cl_a",
        "tenant": "acme",
        "scope": "infer models:read",
        "client_id": "cl_a",
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 900,
        "jti": "j1",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not ...}


def _principal(claims, *, rules=RULES, now=NOW):
    return principal_from_claims(claims, rules=rules, now=now, leeway=LEEWAY)


def _reject(claims, *, rules=RULES, now=NOW) -> str:
    with pytest.raises(Unauthenticated) as caught:
        _principal(claims, rules=rules, now=now)
    return caught.value.message


def test_valid_claims_make_the_principal():
    """Every principal field comes from the matching claim."""
    principal = _principal(_claims())
    assert principal.subject == "cl_a"
    assert principal.tenant_id == "acme"
    assert principal.scopes == {Scope.INFER, Scope.MODELS_READ}
    assert principal.client_id == "cl_a"
    assert principal.token_id == "j1"
    assert principal.expires_at == NOW + 900
    assert principal.issuer == "https://sealserve.test"


def test_platform_tenant_maps_to_none():
    """The reserved tenant '*' makes a platform principal, when the issuer allows it."""
    assert _principal(_claims(tenant="*")).tenant_id is None


def test_platform_tenant_refused_when_not_allowed():
    """An issuer without allow_platform cannot mint platform principals."""
    rules = IssuerRules(
        issuer=RULES.issuer, audience=RULES.audience, keys=RULES.keys, algorithms=RULES.algorithms
    )
    assert _reject(_claims(tenant="*"), rules=rules) == "token tenant is not accepted"


@pytest.mark.parametrize("name", ["iss", "aud", "sub", "jti", "exp", "iat", "nbf", "tenant"])
@pytest.mark.parametrize("how", ["absent", "null"])
def test_every_required_claim_must_be_present(name, how):
    """Each required claim, absent or null, is reported by name."""
    claims = _claims(**{name: ... if how == "absent" else None})
    assert _reject(claims) == f"token claim '{name}' is missing"


@pytest.mark.parametrize("name", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("value", ["1700000000", 1.7e9, True, False, -1, 2**40, [NOW], {}])
def test_times_must_be_json_integers_in_range(name, value):
    """Times that are strings, floats, booleans, negative or absurd are refused."""
    assert _reject(_claims(**{name: value})) == f"token claim '{name}' must be an integer timestamp"


@pytest.mark.parametrize("name", ["sub", "jti"])
@pytest.mark.parametrize("value", ["", 0, ["x"], "x" * 257])
def test_strings_must_be_non_empty_and_bounded(name, value):
    """Sub and jti must be non-empty strings of at most 256 characters."""
    assert _reject(_claims(**{name: value})) == f"token claim '{name}' must be a non-empty string"


@pytest.mark.parametrize("aud", ["sealserve", ["sealserve"], ["other", "sealserve"]])
def test_audience_must_contain_ours_exactly(aud):
    """Aud as our exact string, or a list of strings holding it, is accepted."""
    assert _principal(_claims(aud=aud)).subject == "cl_a"


@pytest.mark.parametrize(
    "aud", ["Sealserve", "sealserve ", "seal", ["other"], [], ["sealserve", 1], 7, {"a": 1}]
)
def test_audience_mismatch_is_refused(aud):
    """A different, differently cased, partial or mistyped audience is refused."""
    assert _reject(_claims(aud=aud)) == "token audience is not accepted"


def test_issuer_must_match_exactly():
    """An iss differing from the rules' issuer (even by a slash) is refused."""
    assert _reject(_claims(iss="https://sealserve.test/")) == "token issuer is not accepted"


def test_expiry_respects_the_leeway():
    """A token is accepted until exp + leeway, and TokenExpired from then on."""
    claims = _claims(iat=NOW - 900, nbf=NOW - 900, exp=NOW)
    assert _principal(claims, now=NOW + LEEWAY - 1)
    with pytest.raises(TokenExpired):
        _principal(claims, now=NOW + LEEWAY)


def test_not_before_respects_the_leeway():
    """A token whose nbf is within the leeway is accepted; beyond it, not yet valid."""
    assert _principal(_claims(nbf=NOW + LEEWAY))
    assert _reject(_claims(nbf=NOW + LEEWAY + 1)) == "token is not yet valid"


def test_issued_in_the_future_beyond_leeway_is_refused():
    """Iat more than the leeway ahead of our clock is refused."""
    assert _principal(_claims(iat=NOW + LEEWAY, nbf=NOW + LEEWAY))
    claims = _claims(iat=NOW + LEEWAY + 1, nbf=NOW + LEEWAY + 1, exp=NOW + 900)
    assert _reject(claims) == "token was issued in the future"


def test_lifetime_is_bounded_by_the_issuer_maximum():
    """Exp - iat may equal the maximum lifetime but not exceed it."""
    assert _principal(_claims(exp=NOW + 3600))
    assert _reject(_claims(exp=NOW + 3601)) == "token lifetime exceeds the maximum"


@pytest.mark.parametrize(
    "overrides",
    [{"exp": NOW}, {"exp": NOW - 1}, {"nbf": NOW + 901}],
)
def test_inconsistent_validity_periods_are_refused(overrides):
    """Exp not after iat, or nbf after exp, is refused."""
    assert _reject(_claims(**overrides)) == "token validity period is inconsistent"


def test_scope_may_be_a_list_and_unknown_names_are_ignored():
    """A list-valued scope claim works; names we do not know grant nothing."""
    principal = _principal(_claims(scope=["infer", "openid", "admin"]))
    assert principal.scopes == {Scope.INFER}
    assert _principal(_claims(scope="openid profile")).scopes == frozenset()
    assert _principal(_claims(scope=...)).scopes == frozenset()


@pytest.mark.parametrize("scope", [7, {"infer": True}, ["infer", 7], True])
def test_malformed_scope_claim_is_refused(scope):
    """A scope claim that is neither a string nor a list of strings is refused."""
    assert _reject(_claims(scope=scope)) == "token scope claim is malformed"


def test_scope_and_tenant_claim_names_are_configurable():
    """An external issuer's claim names (org, scp) are read instead of ours."""
    rules = IssuerRules(
        issuer=RULES.issuer,
        audience=RULES.audience,
        keys=RULES.keys,
        algorithms=RULES.algorithms,
        tenant_claim="org",
        scope_claim="scp",
    )
    claims = _claims(tenant=..., scope=..., org="globex", scp=["models:read"])
    principal = _principal(claims, rules=rules)
    assert (principal.tenant_id, principal.scopes) == ("globex", {Scope.MODELS_READ})
    assert _reject(_claims(org=...), rules=rules) == "token claim 'org' is missing"


def test_client_id_falls_back_to_azp_and_may_be_absent():
    """client_id is read from client_id, else azp, else left None."""
    assert _principal(_claims(client_id=..., azp="app")).client_id == "app"
    assert _principal(_claims(client_id=...)).client_id is None
    assert _reject(_claims(client_id="")) == "token claim 'client_id' must be a non-empty string"
