"""Signing-key rotation end to end: keys, JWKS, issuer and verifier together."""

import pytest

from auth import (
    KeyAlgorithm,
    KeySet,
    KeyState,
    Scope,
    SigningKey,
    TokenExpired,
    TokenIssuer,
    TokenVerifier,
    Unauthenticated,
    retire_expired,
    rotate,
)
from tests.auth_cases import own_signed

T0 = 1_700_000_000
MAX_LIFETIME = 3600
LEEWAY = 30


class Gateway:
    """One gateway process: its current key set, an issuer and a verifier, on a shared clock."""

    def __init__(self, keys, clock) -> None:
        self.key_set = KeySet(keys)
        self.issuer = TokenIssuer(
            issuer="https://sealserve.test",
            audience="sealserve",
            keys=self._signing_key,
            max_lifetime=MAX_LIFETIME,
            clock=clock,
        )
        # cache_size=0: every verification re-checks the key, as a fresh process would.
        self.verifier = TokenVerifier(
            issuers=[self.issuer.verification_rules(keys=self._verification_key)],
            revoked=lambda _jti: False,
            tenant_suspended=lambda _tenant: False,
            cache_size=0,
            clock=clock,
        )

    # Both look the key set up at call time, so load() takes effect at once.
    def _signing_key(self):
        return self.key_set.signing_key()

    def _verification_key(self, kid: str):
        return self.key_set.verification_key(kid)

    def load(self, keys) -> None:
        """Swap in the key set read back from storage."""
        self.key_set = KeySet(keys)

    def token(self, lifetime: int = 900) -> str:
        """Issue a tenant client's token."""
        return self.issuer.issue(
            subject="cl_a",
            tenant_id="acme",
            scopes={Scope.INFER},
            client_id="cl_a",
            lifetime=lifetime,
        ).token

    def jwks_kids(self) -> dict[str, str]:
        """Published kids, mapped to the state of the key they name."""
        states = {key.kid: str(key.state) for key in self.key_set.keys}
        return {entry["kid"]: states[entry["kid"]] for entry in self.key_set.jwks()["keys"]}


class Clock:
    """Shared, settable time."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        """Return the current time."""
        return self.now


@pytest.fixture
def clock() -> Clock:
    """Time starts at T0."""
    return Clock()


def _rotate(keys, now):
    return rotate(
        keys, now=now, max_token_lifetime=MAX_LIFETIME, alg=KeyAlgorithm.ES256, leeway=LEEWAY
    )


def test_tokens_signed_before_a_rotation_verify_until_they_expire(clock):
    """A token signed by the old primary keeps verifying after rotation, until its own exp."""
    keys = _rotate([], T0)
    gateway = Gateway(keys, clock)
    old_token = gateway.token(lifetime=MAX_LIFETIME)
    clock.now = T0 + 600
    gateway.load(_rotate(keys, clock.now))
    assert gateway.verifier.verify(old_token).subject == "cl_a"
    new_token = gateway.token()
    assert new_token.split(".")[0] != old_token.split(".")[0]  # signed under another kid
    clock.now = T0 + MAX_LIFETIME + LEEWAY - 1
    assert gateway.verifier.verify(old_token)
    clock.now = T0 + MAX_LIFETIME + LEEWAY
    with pytest.raises(TokenExpired):
        gateway.verifier.verify(old_token)


def test_jwks_shows_next_and_previous_at_the_right_times(clock):
    """JWKS: primary+next at first; after rotation primary+next+previous; then previous retires."""
    first = _rotate([], T0)
    gateway = Gateway(first, clock)
    primary_a = next(k.kid for k in first if k.state is KeyState.PRIMARY)
    next_b = next(k.kid for k in first if k.state is KeyState.NEXT)
    assert gateway.jwks_kids() == {primary_a: "primary", next_b: "next"}

    rotated_at = T0 + 86_400
    second = _rotate(first, rotated_at)
    gateway.load(second)
    kids = gateway.jwks_kids()
    assert kids[primary_a] == "previous"
    assert kids[next_b] == "primary"
    assert sorted(kids.values()) == ["next", "previous", "primary"]

    # Just before the retirement time the previous key is still published...
    retire_at = rotated_at + MAX_LIFETIME + LEEWAY
    gateway.load(retire_expired(second, now=retire_at - 1))
    assert primary_a in gateway.jwks_kids()
    # ...and from then on it is gone.
    gateway.load(retire_expired(second, now=retire_at))
    assert primary_a not in gateway.jwks_kids()
    assert len(gateway.jwks_kids()) == 2


def test_after_retirement_the_old_key_is_rejected(clock):
    """Once the old key is retired, even a token it signs with fresh times is rejected."""
    first = _rotate([], T0)
    old_key = next(k for k in first if k.state is KeyState.PRIMARY)
    gateway = Gateway(first, clock)
    clock.now = T0 + 100
    second = _rotate(first, clock.now)
    gateway.load(second)
    clock.now = T0 + 100 + MAX_LIFETIME + LEEWAY
    gateway.load(retire_expired(second, now=int(clock.now)))
    # A token minted now with the retired key (say it leaked): fresh iat/exp, valid shape.
    forged = own_signed(old_key, now=int(clock.now))
    with pytest.raises(Unauthenticated, match="token key id is unknown"):
        gateway.verifier.verify(forged)


def test_a_gateway_still_on_the_old_key_set_accepts_the_new_primary(clock):
    """Gateway B has not reloaded yet: tokens from A's new primary (B's 'next') still verify."""
    keys = _rotate([], T0)
    gateway_a = Gateway(keys, clock)
    gateway_b = Gateway(keys, clock)
    clock.now = T0 + 60
    gateway_a.load(_rotate(keys, clock.now))
    token = gateway_a.token()
    assert gateway_b.verifier.verify(token).subject == "cl_a"


def test_two_rotations_inside_a_token_lifetime_keep_both_old_keys(clock):
    """Rotating twice quickly keeps two previous keys, so tokens from both still verify."""
    keys = _rotate([], T0)
    gateway = Gateway(keys, clock)
    token_1 = gateway.token()
    clock.now = T0 + 10
    keys = _rotate(keys, clock.now)
    gateway.load(keys)
    token_2 = gateway.token()
    clock.now = T0 + 20
    keys = _rotate(keys, clock.now)
    gateway.load(keys)
    assert gateway.verifier.verify(token_1)
    assert gateway.verifier.verify(token_2)
    assert sorted(gateway.jwks_kids().values()) == ["next", "previous", "previous", "primary"]


def test_keys_survive_a_storage_round_trip_across_rotation(clock):
    """Keys rebuilt from private_bytes and metadata verify tokens signed before the round trip."""
    keys = _rotate([], T0)
    gateway = Gateway(keys, clock)
    token = gateway.token()
    stored = [
        (k.private_bytes(), k.kid, k.state, k.created_at, k.activated_at, k.retired_after)
        for k in _rotate(keys, T0 + 5)
    ]
    reloaded = [
        SigningKey.from_private_bytes(
            data, kid=kid, state=state, created_at=c, activated_at=a, retired_after=r
        )
        for data, kid, state, c, a, r in stored
    ]
    gateway.load(reloaded)
    assert gateway.verifier.verify(token)
