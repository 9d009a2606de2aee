import pytest

from auth.issuers import PLATFORM_TENANT, TOKEN_TYPE, IssuerRules, normalize_type


def _rules(**overrides) -> IssuerRules:
    values = {
        "issuer": "https://sealserve.test",
        "audience": "sealserve",
        "keys": lambda _kid: None,
        "algorithms": frozenset({"ES256"}),
    }
    return IssuerRules(**{**values, **overrides})


def test_defaults_are_strict():
    """By default an issuer accepts at+jwt only, tenant claim 'tenant', and no platform tokens."""
    rules = _rules()
    assert rules.token_types == {TOKEN_TYPE}
    assert (rules.tenant_claim, rules.scope_claim) == ("tenant", "scope")
    assert not rules.allow_platform
    assert rules.max_lifetime == 3600


def test_platform_tenant_is_not_a_plausible_tenant_id():
    """The reserved platform tenant value is '*'."""
    assert PLATFORM_TENANT == "*"


@pytest.mark.parametrize(
    ("raw", "normal"),
    [("at+jwt", "at+jwt"), ("AT+JWT", "at+jwt"), ("application/at+jwt", "at+jwt"), ("JWT", "jwt")],
)
def test_type_normalization_follows_rfc7515(raw, normal):
    """Typ compares case-insensitively and without the application/ prefix."""
    assert normalize_type(raw) == normal


def test_token_types_are_normalized_on_construction():
    """Configured token types are stored normalized, so lookups compare like with like."""
    assert _rules(token_types=frozenset({"Application/AT+JWT", "JWT"})).token_types == {
        "at+jwt",
        "jwt",
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"issuer": ""}, "non-empty issuer"),
        ({"audience": ""}, "non-empty issuer"),
        ({"algorithms": frozenset()}, "asymmetric"),
        ({"algorithms": frozenset({"HS256"})}, "asymmetric"),
        ({"algorithms": frozenset({"ES256", "none"})}, "asymmetric"),
        ({"max_lifetime": 0}, "max_lifetime"),
    ],
)
def test_unsafe_rules_are_refused(overrides, message):
    """Empty issuer/audience, no or symmetric algorithms, or a zero lifetime are refused."""
    with pytest.raises(ValueError, match=message):
        _rules(**overrides)
