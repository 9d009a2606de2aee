"""Our token-signing keys: generation, serialization, JWKS, rotation with overlap.

A key goes through four states, and only ever forward::

    next ──rotate──▶ primary ──rotate──▶ previous ──(retired_after passes)──▶ retired
    published,       signs new           verify only,                         not published,
    not signing      tokens              still published                      not accepted

``next`` is published a full rotation before it signs, so verifiers and
clients that cache our JWKS already hold it when it becomes primary (and
other gateways still on the old key set accept its tokens). ``previous``
stays published and accepted until every token it signed has expired:
``retired_after = rotation time + max token lifetime + leeway``.

This module is pure: ``rotate`` returns a new list and the server persists it
(the private part as ``private_bytes()``, wrapped by the master key). Key
material never appears in a ``repr``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from auth.jwk import VerificationKey, jwk_thumbprint, public_jwk

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

DEFAULT_LEEWAY = 30
"""Clock skew tolerated between issuers and verifiers, in seconds."""

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class KeyAlgorithm(StrEnum):
    """Algorithms our own keys sign with (JWS ``alg`` names)."""

    ES256 = "ES256"
    EDDSA = "EdDSA"


class KeyState(StrEnum):
    """Where a key is in its life; see the module docstring."""

    NEXT = "next"
    PRIMARY = "primary"
    PREVIOUS = "previous"
    RETIRED = "retired"


PUBLISHED_STATES: frozenset[KeyState] = frozenset(
    {KeyState.NEXT, KeyState.PRIMARY, KeyState.PREVIOUS}
)
"""States whose keys appear in the JWKS and verify tokens."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One of our signing keys, with its state and timestamps (Unix seconds).

    Immutable: a state change is a new value (``dataclasses.replace``), which
    is what lets ``rotate`` be a pure function. ``kid`` is the RFC 7638
    thumbprint of the public key. ``activated_at`` is set when the key becomes
    primary; ``retired_after`` when it becomes previous.
    """

    kid: str
    alg: KeyAlgorithm
    private_key: PrivateKey = dataclasses.field(repr=False, compare=False)
    state: KeyState
    created_at: int
    activated_at: int | None = None
    retired_after: int | None = None

    def private_bytes(self) -> bytes:
        """Export the private key as PKCS#8 DER, for storage to wrap with the master key."""
        return self.private_key.private_bytes(
            encoding=serialization.Encoding.DER,
            format=serialization.PrivateFormat.PKCS8,
            encryption_algorithm=serialization.NoEncryption(),
        )

    @classmethod
    def from_private_bytes(
        cls,
        data: bytes,
        *,
        state: KeyState,
        created_at: int,
        activated_at: int | None = None,
        retired_after: int | None = None,
        kid: str | None = None,
    ) -> SigningKey:
        """Rebuild a key from PKCS#8 DER and its stored metadata.

        The algorithm follows from the key type (P-256 → ES256, Ed25519 →
        EdDSA). If ``kid`` is given it must equal the key's thumbprint, which
        catches a row whose key bytes and id were mixed up. Raises
        ``ValueError`` for anything else.
        """
        loaded = serialization.load_der_private_key(data, password=None)
        if isinstance(loaded, ed25519.Ed25519PrivateKey):
            alg = KeyAlgorithm.EDDSA
        elif isinstance(loaded, ec.EllipticCurvePrivateKey) and isinstance(
            loaded.curve, ec.SECP256R1
        ):
            alg = KeyAlgorithm.ES256
        else:
            msg = "signing keys are P-256 (ES256) or Ed25519 (EdDSA)"
            raise ValueError(msg)  # noqa: TRY004 - the bytes hold the wrong kind of key
        thumbprint = jwk_thumbprint(loaded.public_key())
        if kid is not None and kid != thumbprint:
            raise ValueError("stored kid does not match the key it names")
        return cls(
            kid=thumbprint,
            alg=alg,
            private_key=loaded,
            state=state,
            created_at=created_at,
            activated_at=activated_at,
            retired_after=retired_after,
        )

    def public_jwk(self) -> dict[str, str]:
        """Return the public JWK (``kty crv x [y] kid alg use``); never a private member."""
        return public_jwk(self.private_key.public_key(), kid=self.kid, alg=self.alg)

    def verification_key(self) -> VerificationKey:
        """Return the public half, pinned to this key's algorithm."""
        return VerificationKey(kid=self.kid, alg=self.alg, public_key=self.private_key.public_key())


def generate_signing_key(
    alg: KeyAlgorithm, *, now: int | None = None, state: KeyState = KeyState.NEXT
) -> SigningKey:
    """Generate a fresh key, born ``next`` unless told otherwise (``now``: default, the clock)."""
    created = int(time.time()) if now is None else now
    private_key: PrivateKey
    if alg is KeyAlgorithm.ES256:
        private_key = ec.generate_private_key(ec.SECP256R1())
    else:
        private_key = ed25519.Ed25519PrivateKey.generate()
    return SigningKey(
        kid=jwk_thumbprint(private_key.public_key()),
        alg=alg,
        private_key=private_key,
        state=state,
        created_at=created,
        activated_at=created if state is KeyState.PRIMARY else None,
    )


def jwks(keys: Iterable[SigningKey]) -> dict[str, list[dict[str, str]]]:
    """Build the ``/.well-known/jwks.json`` document: next, primary and previous keys only."""
    order = {KeyState.PRIMARY: 0, KeyState.NEXT: 1, KeyState.PREVIOUS: 2}
    published = sorted(
        (key for key in keys if key.state in PUBLISHED_STATES),
        key=lambda key: (order[key.state], key.created_at, key.kid),
    )
    return {"keys": [key.public_jwk() for key in published]}


def retire_expired(keys: Iterable[SigningKey], *, now: int) -> list[SigningKey]:
    """Retire every previous key whose ``retired_after`` has passed; the rest unchanged.

    Run by ``rotate``, and worth running on a timer too, so a retired key
    leaves the JWKS without waiting for the next rotation.
    """
    return [
        dataclasses.replace(key, state=KeyState.RETIRED)
        if key.state is KeyState.PREVIOUS
        and key.retired_after is not None
        and key.retired_after <= now
        else key
        for key in keys
    ]


def rotate(
    keys: Iterable[SigningKey],
    *,
    now: int,
    max_token_lifetime: int,
    alg: KeyAlgorithm,
    leeway: int = DEFAULT_LEEWAY,
) -> list[SigningKey]:
    """One rotation step; returns the new list, the input is untouched.

    next → primary (``activated_at = now``); primary → previous
    (``retired_after = now + max_token_lifetime + leeway``, the last moment a
    token it signed can still be accepted); expired previous keys → retired;
    plus a freshly generated next of ``alg``. With no next key (first
    rotation), a fresh key becomes primary at once, so an empty set yields
    primary + next. Raises ``ValueError`` if the input has two primaries or
    two next keys, which only a corrupted store can produce.
    """
    current = retire_expired(keys, now=now)
    _check_invariants(current)
    rotated: list[SigningKey] = []
    promoted = False
    for key in current:
        if key.state is KeyState.PRIMARY:
            rotated.append(
                dataclasses.replace(
                    key,
                    state=KeyState.PREVIOUS,
                    retired_after=now + max_token_lifetime + leeway,
                )
            )
        elif key.state is KeyState.NEXT:
            rotated.append(dataclasses.replace(key, state=KeyState.PRIMARY, activated_at=now))
            promoted = True
        else:
            rotated.append(key)
    if not promoted:
        rotated.append(generate_signing_key(alg, now=now, state=KeyState.PRIMARY))
    rotated.append(generate_signing_key(alg, now=now))
    return rotated


def _check_invariants(keys: Iterable[SigningKey]) -> None:
    counts: dict[KeyState, int] = dict.fromkeys(KeyState, 0)
    kids: set[str] = set()
    for key in keys:
        counts[key.state] += 1
        if key.kid in kids:
            raise ValueError("two signing keys share a kid")
        kids.add(key.kid)
    if counts[KeyState.PRIMARY] > 1 or counts[KeyState.NEXT] > 1:
        raise ValueError("a key set has at most one primary and one next key")


class KeySet:
    """An immutable snapshot of our keys, for signing and for lookup by ``kid``.

    The server builds one from storage at start-up and after every rotation
    (its own or another gateway's), and swaps it in whole; readers never see
    a half-updated set. Retired keys are kept for the record but neither
    sign nor verify.
    """

    def __init__(self, keys: Iterable[SigningKey]) -> None:
        self._keys = tuple(keys)
        _check_invariants(self._keys)
        self._verification: Mapping[str, VerificationKey] = {
            key.kid: key.verification_key() for key in self._keys if key.state in PUBLISHED_STATES
        }
        self._primary = next((k for k in self._keys if k.state is KeyState.PRIMARY), None)

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        """Every key in the set, retired ones included."""
        return self._keys

    def signing_key(self) -> SigningKey:
        """Return the primary key; ``LookupError`` if there is none (rotate once to make one)."""
        if self._primary is None:
            raise LookupError("no primary signing key: run a key rotation first")
        return self._primary

    def verification_key(self, kid: str) -> VerificationKey | None:
        """Return the key that verifies this ``kid``, if it is next, primary or previous."""
        return self._verification.get(kid)

    def jwks(self) -> dict[str, Any]:
        """Build the public JWKS document of this set."""
        return jwks(self._keys)
