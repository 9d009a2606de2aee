import json
import time

import pydantic
import pytest

from auth import (
    AuthSettings,
    KeyAlgorithm,
    KeySet,
    Scope,
    TokenExpired,
    TrustedIssuer,
    Unauthenticated,
    rotate,
)
from tests.auth_cases import make_context, signed


def test_defaults_match_the_design():
    """Defaults: ES256 keys, 15-minute tokens bounded at 1 h, 30 s leeway, nothing external."""
    settings = AuthSettings()
    assert settings.signing_alg is KeyAlgorithm.ES256
    assert (settings.token_lifetime, settings.max_token_lifetime) == (900, 3600)
    assert settings.leeway == 30
    assert settings.trusted_issuers == ()
    assert settings.pepper() is None


def test_environment_variables_use_the_auth_prefix(monkeypatch):
    """SEALSERVE_AUTH_* variables configure the settings, pepper included."""
    monkeypatch.setenv("SEALSERVE_AUTH_ISSUER", "https://gw.example")
    monkeypatch.setenv("SEALSERVE_AUTH_SIGNING_ALG", "EdDSA")
    monkeypatch.setenv("SEALSERVE_AUTH_CLIENT_SECRET_PEPPER", "p" * 32)
    settings = AuthSettings()
    assert settings.issuer == "https://gw.example"
    assert settings.signing_alg is KeyAlgorithm.EDDSA
    assert settings.pepper() == b"p" * 32
    assert "p" * 32 not in repr(settings)


def test_trusted_issuers_load_from_json_in_the_environment(monkeypatch, tmp_path):
    """SEALSERVE_AUTH_TRUSTED_ISSUERS takes a JSON list of trusted-issuer objects."""
    listing = [{"issuer": "https://idp", "audience": "api", "jwks_file": str(tmp_path / "j")}]
    monkeypatch.setenv("SEALSERVE_AUTH_TRUSTED_ISSUERS", json.dumps(listing))
    (trusted,) = AuthSettings().trusted_issuers
    assert trusted.issuer == "https://idp"
    assert trusted.jwks_file == tmp_path / "j"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"token_lifetime": 4000}, "token_lifetime"),
        ({"max_token_lifetime": 86_401}, "less than or equal"),
        ({"leeway": -1}, "greater than or equal"),
        ({"client_secret_pepper": "short"}, "pepper"),
        ({"issuer": ""}, "at least 1"),
        ({"unknown": 1}, "Extra inputs"),
    ],
)
def test_inconsistent_settings_are_refused(values, message):
    """Lifetimes out of order, a short pepper, an empty issuer or unknown fields are refused."""
    with pytest.raises(pydantic.ValidationError, match=message):
        AuthSettings(**values)


def test_trusted_issuer_cannot_reuse_our_iss(tmp_path):
    """A trusted issuer with our own iss value is refused (it would shadow our keys)."""
    trusted = TrustedIssuer(issuer="sealserve", audience="a", jwks_file=tmp_path / "j.json")
    with pytest.raises(pydantic.ValidationError, match="distinct"):
        AuthSettings(trusted_issuers=(trusted,))


def test_issuer_and_verifier_built_from_settings_agree(tmp_path):
    """Tokens from settings.token_issuer verify with settings.token_verifier, externals too."""
    ctx = make_context(issuer="https://gw.example", audience="api")
    jwks_file = tmp_path / "idp.json"
    jwks_file.write_bytes(ctx.external.jwks_document())
    settings = AuthSettings(
        issuer="https://gw.example",
        audience="api",
        token_lifetime=60,
        trusted_issuers=(ctx.external.config(jwks_file=jwks_file),),
    )
    key_set = KeySet(rotate([], now=0, max_token_lifetime=3600, alg=settings.signing_alg))
    issuer = settings.token_issuer(keys=key_set.signing_key)
    verifier = settings.token_verifier(
        keys=key_set.verification_key, revoked=lambda _j: False, tenant_suspended=lambda _t: False
    )
    issued = issuer.issue(subject="cl_a", tenant_id="acme", scopes={Scope.INFER}, client_id="cl_a")
    assert issued.expires_in == 60
    assert verifier.verify(issued.token).tenant_id == "acme"
    external = signed(
        {"alg": "EdDSA", "typ": "at+jwt", "kid": ctx.external.kid},
        ctx.external_claims(),
        key=ctx.external.private_key,
        alg="EdDSA",
    )
    assert verifier.verify(external).issuer == ctx.external.issuer


def test_verifier_from_settings_uses_the_configured_leeway():
    """A leeway of zero in settings makes a just-expired token expired."""
    settings = AuthSettings(leeway=0)
    ctx = make_context(issuer=settings.issuer, audience=settings.audience)
    verifier = settings.token_verifier(
        keys=ctx.key_set().verification_key,
        revoked=lambda _j: False,
        tenant_suspended=lambda _t: False,
    )
    now = int(time.time())
    key = ctx.primary
    token = signed(
        ctx.header(key),
        ctx.claims(iat=now - 100, nbf=now - 100, exp=now - 1),
        key=key.private_key,
        alg=key.alg,
    )
    with pytest.raises(TokenExpired):
        verifier.verify(token)
    with pytest.raises(Unauthenticated):
        verifier.verify("garbage")
