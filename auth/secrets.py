"""Client credentials for the OAuth2 client-credentials grant.

A client secret is 256 random bits generated here, never chosen by a human,
so it cannot be guessed or found in a dictionary. That is why it is stored as
a *keyed fast hash* (HMAC-SHA256 under a server-held pepper) and not with a
slow password hash: stretching adds nothing against a 256-bit search space,
and a deliberately slow hash (bcrypt, scrypt, Argon2) would turn the public
token endpoint into a CPU-exhaustion lever for anyone who can send requests.
The pepper (kept out of the database, e.g. derived from the master key) means
a stolen clients table alone does not even let an attacker test a guess.

Comparisons are constant-time, and an unknown client id costs the same HMAC
and the same comparison as a wrong secret, so timing does not reveal which
client ids exist.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

CLIENT_ID_PREFIX = "cl_"
CLIENT_SECRET_PREFIX = "cs_"  # noqa: S105 - a prefix, not a secret
"""Recognisable prefixes, so secret scanners and humans can tell the two apart."""

MIN_PEPPER_BYTES = 32
_SCHEME = "hmac-sha256"
_SECRET_BYTES = 32  # 256 bits
_CLIENT_ID_BYTES = 16
# A digest no secret maps to (short of a 2**-256 accident): what an unknown
# client id is compared against, so that path runs the same HMAC and the same
# compare_digest as a wrong secret.
_DUMMY_DIGEST = secrets.token_hex(hashlib.sha256().digest_size)


def new_client_id() -> str:
    """Make a fresh, unguessable public client id (``cl_`` + 128 random bits, URL-safe)."""
    return CLIENT_ID_PREFIX + secrets.token_urlsafe(_CLIENT_ID_BYTES)


def new_client_secret() -> str:
    """Make a client secret: ``cs_`` + 256 bits from ``secrets``, shown to the operator once."""
    return CLIENT_SECRET_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)


def new_pepper() -> bytes:
    """Make a fresh 256-bit pepper, generated once per deployment.

    Store it like a signing key, wrapped by the master key (and re-wrapped
    when the master key rotates). Do not derive it from the master key:
    rotating the master key would then invalidate every client secret.
    """
    return secrets.token_bytes(MIN_PEPPER_BYTES)


def hash_client_secret(secret: str, *, pepper: bytes) -> str:
    """Compute the value to store for ``secret``: ``hmac-sha256$<hex digest>``.

    The scheme prefix lets a later scheme coexist with this one in the table.
    The pepper must be at least 32 bytes, so the keyed hash is as strong as
    the secret it protects.
    """
    return f"{_SCHEME}${_digest(secret, pepper=pepper)}"


def verify_client_secret(secret: str, stored: str | None, *, pepper: bytes) -> bool:
    """Tell whether ``secret`` matches the stored hash, in constant time.

    ``stored=None`` (the client id is unknown) does the same work against a
    dummy hash and returns ``False``, so callers can write one code path::

        ok = verify_client_secret(secret, row.secret_hash if row else None, pepper=p)

    A stored value in an unknown scheme never matches.
    """
    if stored is None:
        return dummy_verify(secret, pepper=pepper)
    scheme, _, expected = stored.partition("$")
    actual = _digest(secret, pepper=pepper)
    # Compare even when the scheme is wrong, so a malformed row costs the same.
    matches = hmac.compare_digest(actual.encode("ascii"), expected.encode("ascii", "replace"))
    return matches and scheme == _SCHEME


def dummy_verify(secret: str, *, pepper: bytes) -> bool:
    """Spend exactly the cost of a failed verification, and return ``False``.

    For the token endpoint's "no such client" and "client disabled" paths,
    so they cannot be told from "wrong secret" by timing.
    """
    hmac.compare_digest(
        _digest(secret, pepper=pepper).encode("ascii"), _DUMMY_DIGEST.encode("ascii")
    )
    return False


def _digest(secret: str, *, pepper: bytes) -> str:
    if len(pepper) < MIN_PEPPER_BYTES:
        raise ValueError(f"the client-secret pepper must be at least {MIN_PEPPER_BYTES} bytes")
    return hmac.new(pepper, secret.encode("utf-8"), hashlib.sha256).hexdigest()
