"""The one parser of ``Authorization: Bearer <token>``, for both transports.

REST reads the ``Authorization`` header and gRPC the ``authorization``
metadata; both hand the raw value here, so they accept and refuse exactly the
same inputs (RFC 6750 §2.1; the scheme name is case-insensitive, RFC 9110 §11.1).
"""

from __future__ import annotations

import re

from auth._header import MAX_TOKEN_BYTES
from auth.errors import Unauthenticated

_SCHEME = "bearer"
# RFC 6750 §2.1 ``b64token``; a JWS compact token is a subset of it.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_MAX_VALUE = MAX_TOKEN_BYTES + len("Bearer ")


def bearer_token(authorization: str | None) -> str:
    """Return the token of an ``Authorization`` value; raise ``Unauthenticated`` if none.

    Exactly one space separates scheme and token, and the token must match
    the RFC 6750 ``b64token`` grammar. The value's length is bounded before
    any parsing. The error never echoes the value.
    """
    if not authorization:
        raise Unauthenticated("bearer token is missing")
    if len(authorization) > _MAX_VALUE:
        raise Unauthenticated("token is too large")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != _SCHEME or not _B64TOKEN.fullmatch(token):
        raise Unauthenticated("authorization must be 'Bearer <token>'")
    return token
