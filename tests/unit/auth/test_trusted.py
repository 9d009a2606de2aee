import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pydantic
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from auth import (
    Scope,
    TokenVerifier,
    TrustedIssuer,
    Unauthenticated,
    jwks_resolver,
    trusted_issuer_rules,
)
from auth.jwk import public_jwk
from tests.auth_cases import signed

ISSUER = "https://idp.example.test"


def _config(**overrides) -> TrustedIssuer:
    values = {"issuer": ISSUER, "audience": "api", "jwks_url": "https://idp.example.test/jwks"}
    return TrustedIssuer(**{**values, **overrides})


def test_defaults_are_conservative():
    """Defaults: tenant/scope claims, asymmetric algorithms, at+jwt, 1 h, no platform tokens."""
    config = _config()
    assert (config.tenant_claim, config.scope_claim) == ("tenant", "scope")
    assert config.algorithms == {"ES256", "EdDSA", "RS256"}
    assert config.token_types == {"at+jwt"}
    assert config.max_lifetime == 3600
    assert not config.allow_platform
    assert config.min_refresh_interval == 60


def test_exactly_one_key_source(tmp_path):
    """A trusted issuer names a JWKS file or a JWKS URL, not both and not neither."""
    with pytest.raises(pydantic.ValidationError, match="exactly one"):
        TrustedIssuer(issuer=ISSUER, audience="api")
    with pytest.raises(pydantic.ValidationError, match="exactly one"):
        _config(jwks_file=tmp_path / "jwks.json")
    assert _config(jwks_url=None, jwks_file=tmp_path / "jwks.json").jwks_file


@pytest.mark.parametrize(
    "url",
    ["http://idp.example.test/jwks", "http://10.0.0.1/jwks", "ftp://idp.example.test/jwks"],
)
def test_jwks_url_must_be_https(url):
    """Keys fetched over plain HTTP could be swapped in transit, so http is refused."""
    with pytest.raises(pydantic.ValidationError):
        _config(jwks_url=url)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/jwks", "http://localhost/jwks", "http://[::1]:9/jwks"]
)
def test_plain_http_is_allowed_to_loopback(url):
    """A loopback JWKS endpoint (tests, sidecars) may use plain HTTP."""
    assert _config(jwks_url=url).jwks_url is not None


@pytest.mark.parametrize("algorithms", [["HS256"], ["none"], ["ES256", "HS512"], []])
def test_symmetric_or_no_algorithms_are_refused(algorithms):
    """HS*, none, or an empty list cannot be configured for an external issuer."""
    with pytest.raises(pydantic.ValidationError):
        _config(algorithms=algorithms)


@pytest.mark.parametrize(
    "overrides",
    [{"issuer": ""}, {"audience": ""}, {"max_lifetime": 0}, {"max_lifetime": 86_401}, {"x": 1}],
)
def test_invalid_settings_are_refused(overrides):
    """Empty names, unreasonable lifetimes and unknown fields are refused."""
    with pytest.raises(pydantic.ValidationError):
        _config(**overrides)


def test_config_is_frozen():
    """A loaded configuration cannot be changed afterwards."""
    config = _config()
    with pytest.raises(pydantic.ValidationError):
        config.allow_platform = True


def test_rules_carry_the_configuration(tmp_path):
    """trusted_issuer_rules maps every setting onto the verifier's issuer rules."""
    config = _config(
        jwks_url=None,
        jwks_file=tmp_path / "jwks.json",
        tenant_claim="org",
        scope_claim="scp",
        algorithms=["EdDSA"],
        token_types=["JWT"],
        max_lifetime=7200,
        allow_platform=True,
    )
    rules = trusted_issuer_rules(config)
    assert (rules.issuer, rules.audience) == (ISSUER, "api")
    assert (rules.tenant_claim, rules.scope_claim) == ("org", "scp")
    assert rules.algorithms == {"EdDSA"}
    assert rules.token_types == {"jwt"}
    assert rules.max_lifetime == 7200
    assert rules.allow_platform


class _Idp:
    """An external identity provider: an Ed25519 key, and a real HTTP JWKS endpoint."""

    def __init__(self) -> None:
        self.key = ed25519.Ed25519PrivateKey.generate()
        body = json.dumps(
            {"keys": [public_jwk(self.key.public_key(), kid="idp-1", alg="EdDSA")]}
        ).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def token(self, **claims) -> str:
        """Sign a valid access token, with claim overrides."""
        now = int(time.time())
        base = {
            "iss": ISSUER,
            "aud": "api",
            "sub": "user-1",
            "tenant": "acme",
            "scope": "infer",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": "j-1",
        }
        header = {"alg": "EdDSA", "typ": "at+jwt", "kid": "idp-1"}
        return signed(header, {**base, **claims}, key=self.key, alg="EdDSA")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def idp() -> Iterator[_Idp]:
    """A running external identity provider."""
    running = _Idp()
    yield running
    running.close()


def test_external_token_verifies_through_a_jwks_url(idp):
    """A token from a trusted issuer verifies with keys fetched from its JWKS URL."""
    config = TrustedIssuer(issuer=ISSUER, audience="api", jwks_url=idp.url, algorithms=["EdDSA"])
    with httpx.Client(timeout=2.0) as http:
        resolver = jwks_resolver(config, http=http)
        resolver.refresh()
        verifier = TokenVerifier(
            issuers=[trusted_issuer_rules(config, keys=resolver)],
            revoked=lambda _jti: False,
            tenant_suspended=lambda _tenant: False,
        )
        principal = verifier.verify(idp.token())
    assert principal.issuer == ISSUER
    assert principal.tenant_id == "acme"
    assert principal.scopes == {Scope.INFER}
    assert principal.client_id is None


def test_external_token_with_disallowed_algorithm_is_refused(idp):
    """If the operator allows only ES256, the IdP's EdDSA key is not even loaded."""
    config = TrustedIssuer(issuer=ISSUER, audience="api", jwks_url=idp.url, algorithms=["ES256"])
    with httpx.Client(timeout=2.0) as http:
        verifier = TokenVerifier(
            issuers=[trusted_issuer_rules(config, keys=jwks_resolver(config, http=http))],
            revoked=lambda _jti: False,
            tenant_suspended=lambda _tenant: False,
        )
        with pytest.raises(Unauthenticated, match="token key id is unknown"):
            verifier.verify(idp.token())
