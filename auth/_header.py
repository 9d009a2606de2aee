"""Pre-verification reading of a compact JWS: size, shape, header allow-list.

Everything here runs on attacker-controlled bytes before any signature is
checked, so it is deliberately small and strict: the token's size is bounded
before it is decoded, the header may hold only ``alg``, ``typ`` and ``kid``
(RFC 8725 §3.1: we never fetch keys from ``jku``/``x5u``, never trust an
embedded ``jwk``/``x5c``, never inflate ``zip``, and understand no ``crit``
extension), and ``none``/``HS*`` are refused whatever their casing.

PyJWT's ``get_unverified_header`` is not used: it also validates ``crit``
itself, before our allow-list could give its precise answer, and it decodes
the payload and signature too, which we do not need here.
"""

from __future__ import annotations

import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from jwt.utils import base64url_decode

from auth.errors import Unauthenticated

MAX_TOKEN_BYTES = 8 * 1024
"""Largest token accepted. Ours are under 1 KiB; this bounds decode work."""

ALLOWED_HEADER_FIELDS = frozenset({"alg", "typ", "kid"})
# Header fields we name in the error message. Any other unexpected field gets
# a generic message: the name was chosen by the caller and is not echoed.
_KNOWN_REFUSED_FIELDS = frozenset(
    {"jku", "x5u", "jwk", "x5c", "x5t", "x5t#S256", "zip", "crit", "b64", "cty", "enc", "epk"}
)
_MAX_KID_LENGTH = 256
_SEGMENTS = 3
# Unpadded base64url (RFC 7515 §2). Checked up front so that the segments we
# read here are exactly the ones PyJWT later decodes strictly.
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")


@dataclass(frozen=True, slots=True)
class UnverifiedToken:
    """What may be read from a token before its signature is checked, and only to pick a key."""

    alg: str
    typ: str
    kid: str
    issuer: str


def read_unverified(token: str) -> UnverifiedToken:
    """Check the token's shape and header, and peek at ``iss`` to choose the issuer.

    Raises ``Unauthenticated`` with a short public message on any problem.
    """
    if not token:
        raise Unauthenticated("token is missing")
    if len(token) > MAX_TOKEN_BYTES:
        raise Unauthenticated("token is too large")
    segments = token.split(".")
    if len(segments) != _SEGMENTS:
        raise Unauthenticated("token is malformed", detail="not three segments")
    if not all(_SEGMENT.fullmatch(segment) for segment in segments):
        raise Unauthenticated("token is malformed", detail="not base64url")
    alg, typ, kid = _read_header(_decode_object(segments[0], what="header"))
    issuer = _decode_object(segments[1], what="payload").get("iss")
    if issuer is None:
        raise Unauthenticated("token claim 'iss' is missing")
    if not isinstance(issuer, str) or not issuer:
        raise Unauthenticated("token claim 'iss' must be a non-empty string")
    return UnverifiedToken(alg=alg, typ=typ, kid=kid, issuer=issuer)


def _read_header(header: dict[str, Any]) -> tuple[str, str, str]:
    _check_fields(header)
    alg, typ, kid = header.get("alg"), header.get("typ"), header.get("kid")
    if not isinstance(alg, str) or not alg:
        raise Unauthenticated("token algorithm is missing")
    if alg.lower() == "none" or alg.upper().startswith("HS"):
        raise Unauthenticated("token algorithm is not allowed")
    if not isinstance(typ, str) or not typ:
        raise Unauthenticated("token type is missing")
    if not isinstance(kid, str) or not kid:
        raise Unauthenticated("token key id is missing")
    if len(kid) > _MAX_KID_LENGTH:
        raise Unauthenticated("token key id is unknown", detail="kid too long")
    return alg, typ, kid


def _check_fields(header: dict[str, Any]) -> None:
    extra = header.keys() - ALLOWED_HEADER_FIELDS
    if not extra:
        return
    named = sorted(extra & _KNOWN_REFUSED_FIELDS)
    if named:
        raise Unauthenticated(f"token header field '{named[0]}' is not allowed")
    raise Unauthenticated("token header contains a field that is not allowed")


def _decode_object(segment: str, *, what: str) -> dict[str, Any]:
    try:
        raw = base64url_decode(segment.encode("ascii"))
        decoded = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (ValueError, binascii.Error, RecursionError) as error:
        raise Unauthenticated(
            "token is malformed", detail=f"{what}: {type(error).__name__}"
        ) from None
    if not isinstance(decoded, dict):
        raise Unauthenticated("token is malformed", detail=f"{what} is not a JSON object")
    return decoded


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 7515 §5.2 lets a parser reject duplicate member names; we do, so the
    # header we check is the header PyJWT later reads, member for member.
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise ValueError("duplicate member name")
        result[name] = value
    return result
