"""JSON Web Keys (RFC 7517, RFC 8037): our public keys out, an issuer's keys in.

Outgoing, ``public_jwk`` renders the public half of our own signing keys for
``/.well-known/jwks.json``. Incoming, ``parse_jwks`` turns a trusted issuer's
JWKS document into ``VerificationKey`` values, each pinned to exactly one
algorithm: a token is later verified with *its key's* algorithm, never with
the one its header asks for (RFC 8725 §2.1, §3.1).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.utils import base64url_encode

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

PublicKey = (
    ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey | rsa.RSAPublicKey
)
"""Public key types a token may be verified with."""

ASYMMETRIC_ALGORITHMS: frozenset[str] = frozenset(
    {"ES256", "ES384", "ES512", "EdDSA", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)
"""Every algorithm a key may be pinned to. ``none`` and ``HS*`` never are: a
shared secret cannot be published in a JWKS, and accepting HMAC is how a
public key ends up used as an HMAC secret."""

_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_MAX_JWKS_KEYS = 100
_EC_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A public key, its id, and the one algorithm it verifies."""

    kid: str
    alg: str
    public_key: PublicKey


def jwk_thumbprint(public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url): a key id derived from the key itself.

    Deriving the ``kid`` means two keys can never share one, and a stored key
    whose bytes do not match its recorded ``kid`` is detected on load.
    """
    members = {
        k: v for k, v in _public_members(public_key).items() if k in {"kty", "crv", "x", "y"}
    }
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode("ascii")
    return base64url_encode(hashlib.sha256(canonical).digest()).decode("ascii")


def public_jwk(
    public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey, *, kid: str, alg: str
) -> dict[str, str]:
    """Render one of our public keys as a JWK, with ``kid``, ``alg`` and ``use: sig``.

    Only public members are ever written: the function takes a public key,
    so a private one cannot leak through it by mistake.
    """
    return {**_public_members(public_key), "kid": kid, "alg": alg, "use": "sig"}


def parse_jwks(document: bytes, *, algorithms: Iterable[str]) -> dict[str, VerificationKey]:
    """Verification keys by ``kid`` from a JWKS document, keeping only usable ones.

    A key is skipped (not fatal: one odd key must not take an issuer's other
    keys down) when it has no ``kid``, is not for signatures, carries private
    or symmetric material, names an algorithm outside ``algorithms``, or does
    not parse. A ``kid`` that appears twice is dropped entirely: keys are
    chosen by id, never by trial. Without an ``alg`` member the algorithm is
    inferred from the key type (EC curve, OKP → EdDSA, RSA → RS256) and must
    still be allowed. Raises ``ValueError`` if the document itself is not a JWKS.
    """
    allowed = frozenset(algorithms) & ASYMMETRIC_ALGORITHMS
    try:
        parsed = json.loads(document)
    except (ValueError, RecursionError) as error:
        raise ValueError("JWKS document is not JSON") from error
    if not isinstance(parsed, dict) or not isinstance(parsed.get("keys"), list):
        raise ValueError("JWKS document has no 'keys' list")  # noqa: TRY004 - bad content, not a bad argument
    entries: list[Any] = parsed["keys"][:_MAX_JWKS_KEYS]
    found: dict[str, VerificationKey] = {}
    duplicated: set[str] = set()
    for entry in entries:
        key = _parse_one(entry, allowed=allowed)
        if key is None:
            continue
        if key.kid in found:
            duplicated.add(key.kid)
        found[key.kid] = key
    for kid in duplicated:
        del found[kid]
    return found


def _parse_one(entry: object, *, allowed: frozenset[str]) -> VerificationKey | None:
    if not isinstance(entry, dict) or not _usable(entry):
        return None
    alg = entry.get("alg")
    # Refuse a named algorithm before PyJWK sees it: PyJWK would happily build
    # an HMAC secret or the ``none`` algorithm from it.
    if alg is not None and (not isinstance(alg, str) or alg not in allowed):
        return None
    try:
        parsed = jwt.PyJWK(entry, algorithm=alg)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError, NotImplementedError):
        return None
    public_key = parsed.key
    if parsed.algorithm_name not in allowed or not isinstance(public_key, PublicKey):
        return None
    curve = _EC_CURVES.get(parsed.algorithm_name)
    if curve is not None and not (
        isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(public_key.curve, curve)
    ):
        return None
    return VerificationKey(kid=entry["kid"], alg=parsed.algorithm_name, public_key=public_key)


def _usable(entry: Mapping[str, Any]) -> bool:
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid:
        return False
    if entry.get("use", "sig") != "sig":
        return False
    key_ops = entry.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return False
    return entry.get("kty") != "oct" and not _PRIVATE_MEMBERS & entry.keys()


def _public_members(
    public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
) -> dict[str, str]:
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        raw = public_key.public_bytes_raw()
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64(raw)}
    if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
        public_key.curve, ec.SECP256R1
    ):
        numbers = public_key.public_numbers()
        size = 32
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64(numbers.x.to_bytes(size, "big")),
            "y": _b64(numbers.y.to_bytes(size, "big")),
        }
    raise ValueError("only P-256 and Ed25519 keys are rendered as JWKs")


def _b64(data: bytes) -> str:
    return base64url_encode(data).decode("ascii")
