"""Crafted access tokens and the outcome a verifier must give each, as one table.

The unit suite runs ``CASES`` against ``auth.TokenVerifier`` directly
(``tests/unit/auth/test_crafted_tokens.py``); the REST and gRPC suites are
meant to run the very same table through a real server, so both transports
are held to the same answers.

How to use it from a transport suite:

1. ``ctx = make_context()`` once per server under test;
2. persist ``ctx.keys`` as the server's signing keys (their states matter:
   one primary, one next, one previous, one retired), trust the external
   issuer with ``ctx.external.config(jwks_file=...)`` after writing
   ``ctx.external.jwks_document()`` to that file, put ``ctx.revoked_jti`` on
   the deny-list and suspend ``ctx.suspended_tenant``;
3. for each case, call an endpoint with ``Authorization: Bearer
   {case.make(ctx)}`` and map ``case.outcome``: ``ACCEPT`` → the call is
   authenticated; ``UNAUTHENTICATED`` and ``EXPIRED`` → 401 /
   UNAUTHENTICATED. ``case.message`` is the exact public message.

Tokens are built at call time against the real clock, like a client would.
Nothing here imports the server: only ``auth``, PyJWT and cryptography.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from auth import (
    KeyAlgorithm,
    KeySet,
    KeyState,
    Scope,
    SigningKey,
    TokenIssuer,
    TrustedIssuer,
    generate_signing_key,
)
from auth.jwk import jwk_thumbprint, public_jwk

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

ISSUER = "https://sealserve.test"
AUDIENCE = "sealserve"
TENANT = "acme"
MAX_LIFETIME = 3600
LEEWAY = 30
DROP: Any = object()
"""Pass as a claim or header override to remove that member."""


class Outcome(StrEnum):
    """What the verifier (or the server) must answer."""

    ACCEPT = "accept"
    UNAUTHENTICATED = "unauthenticated"
    EXPIRED = "expired"


@dataclass(frozen=True)
class ExternalIssuer:
    """A trusted OIDC issuer with an EdDSA key, whose JWKS the server loads from a file."""

    issuer: str
    audience: str
    private_key: ed25519.Ed25519PrivateKey = field(repr=False)
    kid: str

    def jwks_document(self) -> bytes:
        """Return the JWKS (public key only) to write where the server reads it."""
        jwk = public_jwk(self.private_key.public_key(), kid=self.kid, alg="EdDSA")
        return json.dumps({"keys": [jwk]}).encode()

    def config(self, *, jwks_file: Path) -> TrustedIssuer:
        """Return the trusted-issuer configuration the server must be given."""
        return TrustedIssuer(
            issuer=self.issuer,
            audience=self.audience,
            jwks_file=jwks_file,
            tenant_claim="org",
            scope_claim="scp",
            algorithms=frozenset({"EdDSA"}),
        )


@dataclass(frozen=True)
class TokenContext:
    """The server's keys and settings the crafted tokens are made against."""

    issuer: str
    audience: str
    keys: tuple[SigningKey, ...]
    external: ExternalIssuer
    revoked_jti: str
    suspended_tenant: str
    attacker_key: ec.EllipticCurvePrivateKey = field(repr=False)

    def key(self, state: KeyState) -> SigningKey:
        """Return the (single) key in ``state``."""
        return next(key for key in self.keys if key.state is state)

    @property
    def primary(self) -> SigningKey:
        """The key that signs new tokens."""
        return self.key(KeyState.PRIMARY)

    def key_set(self) -> KeySet:
        """Return the server's key set."""
        return KeySet(self.keys)

    def revoked(self, jti: str) -> bool:
        """Answer the deny-list question the way the configured server must."""
        return jti == self.revoked_jti

    def tenant_suspended(self, tenant_id: str) -> bool:
        """Answer the suspension question the way the configured server must."""
        return tenant_id == self.suspended_tenant

    def token_issuer(self) -> TokenIssuer:
        """Return an issuer configured like the server's."""
        return TokenIssuer(
            issuer=self.issuer,
            audience=self.audience,
            keys=self.key_set().signing_key,
            max_lifetime=MAX_LIFETIME,
        )

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Return valid claims for our issuer, with ``overrides`` applied (``DROP`` removes)."""
        now = int(time.time())
        base: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "cl_crafted",
            "tenant": TENANT,
            "scope": "infer models:read",
            "client_id": "cl_crafted",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": secrets.token_urlsafe(16),
        }
        return _apply(base, overrides)

    def external_claims(self, **overrides: Any) -> dict[str, Any]:
        """Return valid claims for the external issuer (its claim names), with overrides."""
        now = int(time.time())
        base: dict[str, Any] = {
            "iss": self.external.issuer,
            "aud": self.external.audience,
            "sub": "user-42",
            "org": TENANT,
            "scp": ["infer", "openid"],
            "azp": "ext-app",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": secrets.token_urlsafe(16),
        }
        return _apply(base, overrides)

    def header(self, key: SigningKey | None = None, **overrides: Any) -> dict[str, Any]:
        """Return our valid header for ``key`` (default primary), with overrides."""
        key = key or self.primary
        return _apply({"alg": str(key.alg), "typ": "at+jwt", "kid": key.kid}, overrides)


def make_context(*, issuer: str = ISSUER, audience: str = AUDIENCE) -> TokenContext:
    """Build keys in every state (primary/next ES256, previous EdDSA, retired ES256)."""
    now = int(time.time())
    keys = (
        generate_signing_key(KeyAlgorithm.ES256, now=now, state=KeyState.PRIMARY),
        generate_signing_key(KeyAlgorithm.ES256, now=now),
        _with_state(generate_signing_key(KeyAlgorithm.EDDSA, now=now - 60), KeyState.PREVIOUS),
        _with_state(generate_signing_key(KeyAlgorithm.ES256, now=now - 7200), KeyState.RETIRED),
    )
    return TokenContext(
        issuer=issuer,
        audience=audience,
        keys=keys,
        external=ExternalIssuer(
            issuer="https://idp.example.test",
            audience="sealserve-api",
            private_key=ed25519.Ed25519PrivateKey.generate(),
            kid="ext-key-1",
        ),
        revoked_jti="revoked-" + secrets.token_urlsafe(8),
        suspended_tenant="suspended-tenant",
        attacker_key=ec.generate_private_key(ec.SECP256R1()),
    )


def _with_state(key: SigningKey, state: KeyState) -> SigningKey:
    return SigningKey(
        kid=key.kid,
        alg=key.alg,
        private_key=key.private_key,
        state=state,
        created_at=key.created_at,
        activated_at=key.created_at,
        retired_after=key.created_at + MAX_LIFETIME + LEEWAY,
    )


def _apply(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for name, value in overrides.items():
        if value is DROP:
            base.pop(name, None)
        else:
            base[name] = value
    return base


# --- building blocks: a token is three base64url segments, built by hand ----


def b64(data: bytes) -> str:
    """Encode unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    """Decode unpadded base64url."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def segment(obj: Any) -> str:
    """Encode a JSON value as a token segment."""
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def compact(header: Any, claims: Any, signature: bytes = b"") -> str:
    """Assemble a compact JWS from its parts, signature given."""
    return f"{segment(header)}.{segment(claims)}.{b64(signature)}"


def signed(header: dict[str, Any], claims: Any, *, key: Any, alg: str) -> str:
    """Sign ``header.claims`` with ``key`` using PyJWT's implementation of ``alg``.

    ``alg`` is the algorithm actually used, whatever the header says.
    """
    signing_input = f"{segment(header)}.{segment(claims)}"
    signature = jwt.get_algorithm_by_name(alg).sign(signing_input.encode(), key)
    return f"{signing_input}.{b64(signature)}"


def hmac_signed(header: dict[str, Any], claims: Any, *, secret: bytes, digest: str) -> str:
    """Sign with HMAC, ``secret`` used raw (the classic public-key-as-secret attack)."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    mac = hmac.new(secret, signing_input.encode(), getattr(hashlib, digest)).digest()
    return f"{signing_input}.{b64(mac)}"


def own(ctx: TokenContext, *, key: SigningKey | None = None, **claims: Any) -> str:
    """Return a token signed by one of our keys (default primary), with claim overrides."""
    key = key or ctx.primary
    return signed(ctx.header(key), ctx.claims(**claims), key=key.private_key, alg=key.alg)


def with_header(ctx: TokenContext, **header: Any) -> str:
    """Return a token signed by our primary key under a modified header."""
    key = ctx.primary
    return signed(ctx.header(key, **header), ctx.claims(), key=key.private_key, alg=key.alg)


def external(ctx: TokenContext, *, header: dict[str, Any] | None = None, **claims: Any) -> str:
    """Return a token from the trusted external issuer (EdDSA), with overrides."""
    head = _apply({"alg": "EdDSA", "typ": "at+jwt", "kid": ctx.external.kid}, header or {})
    return signed(head, ctx.external_claims(**claims), key=ctx.external.private_key, alg="EdDSA")


def _public_pem(ctx: TokenContext) -> bytes:
    return ctx.primary.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _public_jwk_bytes(ctx: TokenContext) -> bytes:
    return json.dumps(ctx.primary.public_jwk()).encode()


def _flip_payload_bit(ctx: TokenContext) -> str:
    head, body, sig = own(ctx, sub="cl_crafted").split(".")
    raw = bytearray(unb64(body))
    where = raw.index(b"cl_crafted") + 3  # inside the subject: still valid JSON
    raw[where] ^= 0x01
    return f"{head}.{b64(bytes(raw))}.{sig}"


def _flip_signature_bit(ctx: TokenContext) -> str:
    head, body, sig = own(ctx).split(".")
    raw = bytearray(unb64(sig))
    raw[10] ^= 0x01
    return f"{head}.{body}.{b64(bytes(raw))}"


def _alter_header(ctx: TokenContext) -> str:
    # Same members, re-serialised with spaces: semantically equal, but the
    # signature covers the bytes, so it no longer verifies.
    _, body, sig = own(ctx).split(".")
    head = b64(json.dumps(ctx.header(), separators=(", ", ": ")).encode())
    return f"{head}.{body}.{sig}"


def _es256_resigned_as_es384(ctx: TokenContext) -> str:
    return signed(ctx.header(alg="ES384"), ctx.claims(), key=ctx.primary.private_key, alg="ES384")


def _attacker_signed(ctx: TokenContext) -> str:
    return signed(ctx.header(), ctx.claims(), key=ctx.attacker_key, alg="ES256")


def _embedded_jwk(ctx: TokenContext) -> str:
    attacker_public = ctx.attacker_key.public_key()
    jwk = public_jwk(attacker_public, kid=jwk_thumbprint(attacker_public), alg="ES256")
    return signed(ctx.header(jwk=jwk), ctx.claims(), key=ctx.attacker_key, alg="ES256")


def _none(casing: str, *, with_signature: bool) -> Callable[[TokenContext], str]:
    def make(ctx: TokenContext) -> str:
        signature = secrets.token_bytes(64) if with_signature else b""
        return compact(ctx.header(alg=casing), ctx.claims(), signature)

    return make


def _hs(bits: int, *, secret: Callable[[TokenContext], bytes]) -> Callable[[TokenContext], str]:
    def make(ctx: TokenContext) -> str:
        header = ctx.header(alg=f"HS{bits}")
        return hmac_signed(header, ctx.claims(), secret=secret(ctx), digest=f"sha{bits}")

    return make


@dataclass(frozen=True)
class TokenCase:
    """One crafted token: how to make it, and what the verifier must answer."""

    name: str
    make: Callable[[TokenContext], str]
    outcome: Outcome
    message: str = ""
    """Exact public error message (empty for accepted tokens)."""
    tenant: str | None = TENANT
    """For accepted tokens: the principal's tenant (None = platform)."""


def _reject(name: str, make: Callable[[TokenContext], str], message: str) -> TokenCase:
    return TokenCase(name=name, make=make, outcome=Outcome.UNAUTHENTICATED, message=message)


_ALG = "token algorithm is not allowed"
_KID_UNKNOWN = "token key id is unknown"
_BAD_SIG = "token signature is invalid"
_MALFORMED = "token is malformed"
_NOW = time.time  # read at token-build time, never at import time


def _in(seconds: int) -> int:
    return int(_NOW()) + seconds


CONTROL_CASES: tuple[TokenCase, ...] = (
    TokenCase(
        "valid: issued by TokenIssuer",
        lambda ctx: (
            ctx.token_issuer()
            .issue(subject="cl_a", tenant_id=TENANT, scopes={Scope.INFER}, client_id="cl_a")
            .token
        ),
        Outcome.ACCEPT,
    ),
    TokenCase("valid: crafted, primary ES256 key", own, Outcome.ACCEPT),
    TokenCase(
        "valid: signed by the next key (another gateway already rotated)",
        lambda ctx: own(ctx, key=ctx.key(KeyState.NEXT)),
        Outcome.ACCEPT,
    ),
    TokenCase(
        "valid: signed by the previous EdDSA key before a rotation",
        lambda ctx: own(ctx, key=ctx.key(KeyState.PREVIOUS)),
        Outcome.ACCEPT,
    ),
    TokenCase(
        "valid: platform token (tenant '*')",
        lambda ctx: own(ctx, tenant="*", scope="tenants:manage"),
        Outcome.ACCEPT,
        tenant=None,
    ),
    TokenCase(
        "valid: aud as a list containing ours",
        lambda ctx: own(ctx, aud=[ctx.audience, "other-api"]),
        Outcome.ACCEPT,
    ),
    TokenCase(
        "valid: typ 'application/at+jwt'",
        lambda ctx: with_header(ctx, typ="application/at+jwt"),
        Outcome.ACCEPT,
    ),
    TokenCase("valid: trusted external issuer, EdDSA", external, Outcome.ACCEPT),
    TokenCase(
        "valid: expired 10 s ago, within the 30 s leeway",
        lambda ctx: own(ctx, iat=_in(-610), nbf=_in(-610), exp=_in(-10)),
        Outcome.ACCEPT,
    ),
)

ALGORITHM_CASES: tuple[TokenCase, ...] = (
    *(
        _reject(
            f"alg {casing!r}, {'with' if sig else 'no'} signature",
            _none(casing, with_signature=sig),
            _ALG,
        )
        for casing in ("none", "None", "NONE", "nOnE")
        for sig in (False, True)
    ),
    *(
        _reject(f"HS{bits} keyed with our public key as {form}", _hs(bits, secret=secret), _ALG)
        for bits in (256, 384, 512)
        for form, secret in (("PEM", _public_pem), ("JWK", _public_jwk_bytes))
    ),
    _reject("ES256 key re-signed as ES384", _es256_resigned_as_es384, _ALG),
    _reject(
        "EdDSA header on an ES256 key",
        lambda ctx: signed(
            ctx.header(alg="EdDSA"), ctx.claims(), key=ctx.primary.private_key, alg="ES256"
        ),
        _ALG,
    ),
    _reject("RS256 header", lambda ctx: with_header(ctx, alg="RS256"), _ALG),
    _reject("alg missing", lambda ctx: with_header(ctx, alg=DROP), "token algorithm is missing"),
    _reject(
        "alg not a string",
        lambda ctx: with_header(ctx, alg=["ES256"]),
        "token algorithm is missing",
    ),
)

KEY_ID_CASES: tuple[TokenCase, ...] = (
    _reject(
        "kid path traversal", lambda ctx: with_header(ctx, kid="../../etc/passwd"), _KID_UNKNOWN
    ),
    _reject("kid SQL injection", lambda ctx: with_header(ctx, kid="' OR 1=1--"), _KID_UNKNOWN),
    _reject("kid unknown", lambda ctx: with_header(ctx, kid="no-such-key"), _KID_UNKNOWN),
    _reject("kid missing", lambda ctx: with_header(ctx, kid=DROP), "token key id is missing"),
    _reject("kid empty", lambda ctx: with_header(ctx, kid=""), "token key id is missing"),
    _reject("kid not a string", lambda ctx: with_header(ctx, kid=7), "token key id is missing"),
    _reject("kid over-long (300 chars)", lambda ctx: with_header(ctx, kid="k" * 300), _KID_UNKNOWN),
    _reject(
        "kid of a retired key",
        lambda ctx: own(ctx, key=ctx.key(KeyState.RETIRED)),
        _KID_UNKNOWN,
    ),
    _reject("signed by an attacker's ES256 key under our kid", _attacker_signed, _BAD_SIG),
)


def _duplicate_alg(ctx: TokenContext) -> str:
    key = ctx.primary
    header = f'{{"alg":"none","alg":"{key.alg}","typ":"at+jwt","kid":"{key.kid}"}}'
    signing_input = f"{b64(header.encode())}.{segment(ctx.claims())}"
    signature = jwt.get_algorithm_by_name(key.alg).sign(signing_input.encode(), key.private_key)
    return f"{signing_input}.{b64(signature)}"


HEADER_CASES: tuple[TokenCase, ...] = (
    _reject(
        "jku header",
        lambda ctx: with_header(ctx, jku="https://attacker.example/jwks.json"),
        "token header field 'jku' is not allowed",
    ),
    _reject(
        "x5u header",
        lambda ctx: with_header(ctx, x5u="https://attacker.example/cert.pem"),
        "token header field 'x5u' is not allowed",
    ),
    _reject(
        "jwk header (attacker's embedded key)",
        _embedded_jwk,
        "token header field 'jwk' is not allowed",
    ),
    _reject(
        "x5c header",
        lambda ctx: with_header(ctx, x5c=[b64(b"not a certificate")]),
        "token header field 'x5c' is not allowed",
    ),
    _reject(
        "zip header",
        lambda ctx: with_header(ctx, zip="DEF"),
        "token header field 'zip' is not allowed",
    ),
    _reject(
        "crit header",
        lambda ctx: with_header(ctx, crit=["exp"]),
        "token header field 'crit' is not allowed",
    ),
    _reject(
        "unknown header field (name not echoed)",
        lambda ctx: with_header(ctx, **{"<script>": "x"}),
        "token header contains a field that is not allowed",
    ),
    _reject("typ missing", lambda ctx: with_header(ctx, typ=DROP), "token type is missing"),
    _reject(
        "typ 'JWT' (not an access token)",
        lambda ctx: with_header(ctx, typ="JWT"),
        "token type is not allowed",
    ),
    _reject("duplicate 'alg' header member", _duplicate_alg, _MALFORMED),
)

TIME_CASES: tuple[TokenCase, ...] = (
    _reject("exp missing", lambda ctx: own(ctx, exp=DROP), "token claim 'exp' is missing"),
    _reject(
        "exp as a string",
        lambda ctx: own(ctx, exp=str(_in(600))),
        "token claim 'exp' must be an integer timestamp",
    ),
    _reject(
        "exp as a float",
        lambda ctx: own(ctx, exp=_in(600) + 0.5),
        "token claim 'exp' must be an integer timestamp",
    ),
    _reject(
        "exp as a bool",
        lambda ctx: own(ctx, exp=True),
        "token claim 'exp' must be an integer timestamp",
    ),
    _reject(
        "exp negative",
        lambda ctx: own(ctx, exp=-1),
        "token claim 'exp' must be an integer timestamp",
    ),
    _reject(
        "exp far in the future",
        lambda ctx: own(ctx, exp=_in(10 * 365 * 86400)),
        "token lifetime exceeds the maximum",
    ),
    TokenCase(
        "expired",
        lambda ctx: own(ctx, iat=_in(-700), nbf=_in(-700), exp=_in(-100)),
        Outcome.EXPIRED,
        "token expired",
    ),
    _reject("nbf in the future", lambda ctx: own(ctx, nbf=_in(300)), "token is not yet valid"),
    _reject("nbf missing", lambda ctx: own(ctx, nbf=DROP), "token claim 'nbf' is missing"),
    _reject(
        "iat in the future",
        lambda ctx: own(ctx, iat=_in(300), nbf=_in(300), exp=_in(900)),
        "token was issued in the future",
    ),
    _reject("iat missing", lambda ctx: own(ctx, iat=DROP), "token claim 'iat' is missing"),
    _reject(
        "iat as a string",
        lambda ctx: own(ctx, iat="now"),
        "token claim 'iat' must be an integer timestamp",
    ),
    _reject(
        "lifetime over the maximum",
        lambda ctx: own(ctx, exp=_in(MAX_LIFETIME + 60)),
        "token lifetime exceeds the maximum",
    ),
    _reject(
        "exp before iat",
        lambda ctx: own(ctx, iat=_in(0), exp=_in(-1)),
        "token validity period is inconsistent",
    ),
)

CLAIM_CASES: tuple[TokenCase, ...] = (
    _reject("iss missing", lambda ctx: own(ctx, iss=DROP), "token claim 'iss' is missing"),
    _reject("aud missing", lambda ctx: own(ctx, aud=DROP), "token claim 'aud' is missing"),
    _reject("sub missing", lambda ctx: own(ctx, sub=DROP), "token claim 'sub' is missing"),
    _reject("jti missing", lambda ctx: own(ctx, jti=DROP), "token claim 'jti' is missing"),
    _reject("tenant missing", lambda ctx: own(ctx, tenant=DROP), "token claim 'tenant' is missing"),
    _reject(
        "aud wrong", lambda ctx: own(ctx, aud="another-service"), "token audience is not accepted"
    ),
    _reject(
        "aud list without ours",
        lambda ctx: own(ctx, aud=["a", "b"]),
        "token audience is not accepted",
    ),
    _reject(
        "aud with a prefix of ours",
        lambda ctx: own(ctx, aud=ctx.audience + "x"),
        "token audience is not accepted",
    ),
    _reject(
        "iss wrong (untrusted issuer)",
        lambda ctx: own(ctx, iss="https://evil.example"),
        "token issuer is not trusted",
    ),
    _reject(
        "iss not a string",
        lambda ctx: own(ctx, iss=[ctx.issuer]),
        "token claim 'iss' must be a non-empty string",
    ),
    _reject(
        "sub empty", lambda ctx: own(ctx, sub=""), "token claim 'sub' must be a non-empty string"
    ),
    _reject(
        "sub not a string",
        lambda ctx: own(ctx, sub=42),
        "token claim 'sub' must be a non-empty string",
    ),
    _reject(
        "jti not a string",
        lambda ctx: own(ctx, jti=12345),
        "token claim 'jti' must be a non-empty string",
    ),
    _reject(
        "tenant empty",
        lambda ctx: own(ctx, tenant=""),
        "token claim 'tenant' must be a non-empty string",
    ),
    _reject(
        "scope not a string or list",
        lambda ctx: own(ctx, scope={"infer": True}),
        "token scope claim is malformed",
    ),
    _reject("revoked jti", lambda ctx: own(ctx, jti=ctx.revoked_jti), "token has been revoked"),
    _reject(
        "suspended tenant", lambda ctx: own(ctx, tenant=ctx.suspended_tenant), "tenant is suspended"
    ),
)

INTEGRITY_CASES: tuple[TokenCase, ...] = (
    _reject("payload altered by one bit", _flip_payload_bit, _BAD_SIG),
    _reject("signature altered by one bit", _flip_signature_bit, _BAD_SIG),
    _reject("header altered (re-serialised)", _alter_header, _BAD_SIG),
    _reject("signature stripped", lambda ctx: own(ctx).rsplit(".", 1)[0] + ".", _BAD_SIG),
    _reject(
        "signature of impossible base64url length",
        lambda ctx: own(ctx).rsplit(".", 1)[0] + ".AAAAA",
        _MALFORMED,
    ),
    _reject(
        "over-long token (> 8 KiB)", lambda ctx: own(ctx, pad="x" * 9000), "token is too large"
    ),
    _reject("empty string", lambda _ctx: "", "token is missing"),
    _reject("garbage", lambda _ctx: "garbage", _MALFORMED),
    _reject("not a JWT (three dotted words)", lambda _ctx: "not.a.jwt", _MALFORMED),
    _reject("two segments", lambda ctx: own(ctx).rsplit(".", 1)[0], _MALFORMED),
    _reject("four segments", lambda ctx: own(ctx) + ".AAAA", _MALFORMED),
    _reject("padded base64", lambda ctx: own(ctx).replace(".", "=.", 1), _MALFORMED),
    _reject("non-ASCII characters", lambda ctx: "é" + own(ctx), _MALFORMED),
    _reject(
        "header is a JSON array", lambda ctx: compact(["ES256"], ctx.claims(), b"x"), _MALFORMED
    ),
    _reject(
        "header is not JSON", lambda ctx: f"{b64(b'{alg')}.{segment(ctx.claims())}.AAAA", _MALFORMED
    ),
    _reject(
        "payload is not a JSON object", lambda ctx: compact(ctx.header(), [1, 2], b"x"), _MALFORMED
    ),
)

EXTERNAL_CASES: tuple[TokenCase, ...] = (
    _reject(
        "external issuer claims, signed by our key under our kid",
        lambda ctx: signed(
            ctx.header(), ctx.external_claims(), key=ctx.primary.private_key, alg="ES256"
        ),
        _KID_UNKNOWN,
    ),
    _reject(
        "our issuer claims, signed by the external key under its kid",
        lambda ctx: signed(
            {"alg": "EdDSA", "typ": "at+jwt", "kid": ctx.external.kid},
            ctx.claims(),
            key=ctx.external.private_key,
            alg="EdDSA",
        ),
        _KID_UNKNOWN,
    ),
    _reject(
        "external token with our audience",
        lambda ctx: external(ctx, aud=ctx.audience),
        "token audience is not accepted",
    ),
    _reject(
        "external token claiming the platform tenant",
        lambda ctx: external(ctx, org="*"),
        "token tenant is not accepted",
    ),
    _reject(
        "external token missing its tenant claim",
        lambda ctx: external(ctx, org=DROP),
        "token claim 'org' is missing",
    ),
    _reject(
        "external token with typ JWT",
        lambda ctx: external(ctx, header={"typ": "JWT"}),
        "token type is not allowed",
    ),
    _reject(
        "external token with a 2-hour lifetime",
        lambda ctx: external(ctx, exp=_in(7200)),
        "token lifetime exceeds the maximum",
    ),
)

CASES: tuple[TokenCase, ...] = (
    *CONTROL_CASES,
    *ALGORITHM_CASES,
    *KEY_ID_CASES,
    *HEADER_CASES,
    *TIME_CASES,
    *CLAIM_CASES,
    *INTEGRITY_CASES,
    *EXTERNAL_CASES,
)
"""Every case, controls first. Names are unique (they are the test ids)."""


def own_signed(key: SigningKey, *, now: int, issuer: str = ISSUER, audience: str = AUDIENCE) -> str:
    """Return a well-formed token signed by ``key``, valid from ``now`` (for rotation tests)."""
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": "cl_crafted",
        "tenant": TENANT,
        "scope": "infer",
        "client_id": "cl_crafted",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": secrets.token_urlsafe(16),
    }
    header = {"alg": str(key.alg), "typ": "at+jwt", "kid": key.kid}
    return signed(header, claims, key=key.private_key, alg=key.alg)
