import dataclasses
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from auth.jwk import jwk_thumbprint
from auth.keys import (
    KeyAlgorithm,
    KeySet,
    KeyState,
    SigningKey,
    generate_signing_key,
    jwks,
    retire_expired,
    rotate,
)

NOW = 1_700_000_000
LIFETIME = 3600


def _states(keys):
    return sorted(str(k.state) for k in keys)


def _by_state(keys, state):
    return [k for k in keys if k.state is state]


@pytest.mark.parametrize("alg", list(KeyAlgorithm))
def test_generate_makes_a_next_key_named_by_its_thumbprint(alg):
    """A new key is born 'next', and its kid is the RFC 7638 thumbprint of its public key."""
    key = generate_signing_key(alg, now=NOW)
    assert key.state is KeyState.NEXT
    assert key.alg is alg
    assert key.kid == jwk_thumbprint(key.private_key.public_key())
    assert (key.created_at, key.activated_at, key.retired_after) == (NOW, None, None)


def test_generate_defaults_to_the_current_time():
    """Without now, a key's creation time is read from the clock."""
    before = int(time.time())
    key = generate_signing_key(KeyAlgorithm.EDDSA)
    assert before <= key.created_at <= int(time.time())


def test_generate_as_primary_sets_activation():
    """A key generated directly as primary records when it became active."""
    key = generate_signing_key(KeyAlgorithm.ES256, now=NOW, state=KeyState.PRIMARY)
    assert key.activated_at == NOW


def test_key_types_follow_the_algorithm():
    """ES256 keys are P-256 EC keys; EdDSA keys are Ed25519."""
    es = generate_signing_key(KeyAlgorithm.ES256, now=NOW).private_key
    ed = generate_signing_key(KeyAlgorithm.EDDSA, now=NOW).private_key
    assert isinstance(es, ec.EllipticCurvePrivateKey)
    assert isinstance(es.curve, ec.SECP256R1)
    assert isinstance(ed, ed25519.Ed25519PrivateKey)


def test_repr_never_shows_key_material():
    """A key's repr names kid and state but not the private key."""
    key = generate_signing_key(KeyAlgorithm.ES256, now=NOW)
    text = repr(key)
    assert key.kid in text
    assert "private_key" not in text


@pytest.mark.parametrize("alg", list(KeyAlgorithm))
def test_private_bytes_round_trip_through_pkcs8_der(alg):
    """private_bytes is PKCS#8 DER, and from_private_bytes rebuilds the same key and metadata."""
    key = dataclasses.replace(
        generate_signing_key(alg, now=NOW), state=KeyState.PREVIOUS, retired_after=NOW + 99
    )
    data = key.private_bytes()
    assert serialization.load_der_private_key(data, password=None)  # plain PKCS#8 DER
    again = SigningKey.from_private_bytes(
        data,
        state=key.state,
        created_at=key.created_at,
        activated_at=key.activated_at,
        retired_after=key.retired_after,
        kid=key.kid,
    )
    assert again == key
    assert again.alg is alg
    assert again.private_bytes() == data


def test_from_private_bytes_detects_a_kid_mismatch():
    """Key bytes stored under another key's kid are refused on load."""
    a, b = (generate_signing_key(KeyAlgorithm.ES256, now=NOW) for _ in range(2))
    with pytest.raises(ValueError, match="kid"):
        SigningKey.from_private_bytes(a.private_bytes(), state=a.state, created_at=NOW, kid=b.kid)


@pytest.mark.parametrize(
    "private_key",
    [
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ],
)
def test_from_private_bytes_refuses_other_key_types(private_key):
    """Only P-256 and Ed25519 keys load as signing keys."""
    data = private_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="signing keys"):
        SigningKey.from_private_bytes(data, state=KeyState.NEXT, created_at=NOW)


def test_public_jwk_verifies_what_the_key_signs():
    """The published JWK is enough to verify a token the key signed."""
    key = generate_signing_key(KeyAlgorithm.EDDSA, now=NOW)
    token = jwt.encode({"x": 1}, key.private_key, algorithm=key.alg)
    public = jwt.PyJWK(key.public_jwk())
    assert jwt.decode(token, public, algorithms=[key.alg]) == {"x": 1}
    assert key.public_jwk()["kid"] == key.kid
    assert key.public_jwk()["use"] == "sig"


def test_jwks_publishes_next_primary_previous_never_retired_or_private():
    """The JWKS lists next, primary and previous keys, no retired key and no private member."""
    keys = [
        generate_signing_key(KeyAlgorithm.ES256, now=NOW, state=KeyState.PRIMARY),
        generate_signing_key(KeyAlgorithm.ES256, now=NOW),
        dataclasses.replace(
            generate_signing_key(KeyAlgorithm.EDDSA, now=NOW), state=KeyState.PREVIOUS
        ),
        dataclasses.replace(
            generate_signing_key(KeyAlgorithm.ES256, now=NOW), state=KeyState.RETIRED
        ),
    ]
    document = jwks(keys)
    kids = [entry["kid"] for entry in document["keys"]]
    assert kids == [keys[0].kid, keys[1].kid, keys[2].kid]  # primary first
    text = json.dumps(document)
    assert keys[3].kid not in text
    for entry in document["keys"]:
        assert not {"d", "p", "q", "k"} & entry.keys()


def test_first_rotation_on_an_empty_set_makes_primary_and_next():
    """Rotating nothing yields one primary (active now) and one next key."""
    keys = rotate([], now=NOW, max_token_lifetime=LIFETIME, alg=KeyAlgorithm.ES256)
    assert _states(keys) == ["next", "primary"]
    (primary,) = _by_state(keys, KeyState.PRIMARY)
    assert primary.activated_at == NOW


def test_rotation_moves_every_key_one_step():
    """Next becomes primary, primary becomes previous with its retirement time, a new next."""
    first = rotate([], now=NOW, max_token_lifetime=LIFETIME, alg=KeyAlgorithm.ES256)
    old_primary = _by_state(first, KeyState.PRIMARY)[0]
    old_next = _by_state(first, KeyState.NEXT)[0]
    later = NOW + 86_400
    second = rotate(
        first, now=later, max_token_lifetime=LIFETIME, alg=KeyAlgorithm.EDDSA, leeway=30
    )
    assert _states(second) == ["next", "previous", "primary"]
    (previous,) = _by_state(second, KeyState.PREVIOUS)
    (primary,) = _by_state(second, KeyState.PRIMARY)
    (new_next,) = _by_state(second, KeyState.NEXT)
    assert previous.kid == old_primary.kid
    assert previous.retired_after == later + LIFETIME + 30
    assert primary.kid == old_next.kid
    assert primary.activated_at == later
    assert new_next.alg is KeyAlgorithm.EDDSA
    assert new_next.kid not in {old_primary.kid, old_next.kid}


def test_rotation_retires_previous_keys_whose_time_has_passed():
    """A previous key past its retired_after becomes retired at the next rotation."""
    first = rotate([], now=NOW, max_token_lifetime=LIFETIME, alg=KeyAlgorithm.ES256)
    second = rotate(first, now=NOW + 10, max_token_lifetime=LIFETIME, alg=KeyAlgorithm.ES256)
    previous = _by_state(second, KeyState.PREVIOUS)[0]
    # Rotating again before it expires keeps it previous (two previous keys then).
    third = rotate(second, now=NOW + 20, max_token_lifetime=LIFETIME, alg=KeyAlgorithm.ES256)
    assert {k.kid for k in _by_state(third, KeyState.PREVIOUS)} >= {previous.kid}
    assert len(_by_state(third, KeyState.PREVIOUS)) == 2
    assert previous.retired_after is not None
    fourth = rotate(
        third,
        now=previous.retired_after,
        max_token_lifetime=LIFETIME,
        alg=KeyAlgorithm.ES256,
    )
    assert [k.kid for k in _by_state(fourth, KeyState.RETIRED)] == [previous.kid]


def test_rotation_is_pure():
    """Rotate returns a new list and leaves its input untouched."""
    first = rotate([], now=NOW, max_token_lifetime=LIFETIME, alg=KeyAlgorithm.ES256)
    snapshot = list(first)
    rotate(first, now=NOW + 1, max_token_lifetime=LIFETIME, alg=KeyAlgorithm.ES256)
    assert first == snapshot
    assert [k.state for k in first] == [k.state for k in snapshot]


def test_rotation_without_a_next_key_promotes_a_fresh_one():
    """A set with a primary but no next key gets a fresh primary at once, plus a next."""
    primary = generate_signing_key(KeyAlgorithm.ES256, now=NOW, state=KeyState.PRIMARY)
    keys = rotate([primary], now=NOW + 5, max_token_lifetime=LIFETIME, alg=KeyAlgorithm.ES256)
    assert _states(keys) == ["next", "previous", "primary"]
    assert _by_state(keys, KeyState.PREVIOUS)[0].kid == primary.kid


@pytest.mark.parametrize("state", [KeyState.PRIMARY, KeyState.NEXT])
def test_rotation_refuses_a_corrupted_set(state):
    """Two primaries or two next keys (a corrupted store) are refused, not guessed at."""
    keys = [generate_signing_key(KeyAlgorithm.ES256, now=NOW, state=state) for _ in range(2)]
    with pytest.raises(ValueError, match="at most one"):
        rotate(keys, now=NOW, max_token_lifetime=LIFETIME, alg=KeyAlgorithm.ES256)
    with pytest.raises(ValueError, match="at most one"):
        KeySet(keys)


def test_key_set_refuses_duplicate_kids():
    """The same kid twice in a set is refused."""
    key = generate_signing_key(KeyAlgorithm.ES256, now=NOW)
    with pytest.raises(ValueError, match="kid"):
        KeySet([key, dataclasses.replace(key, state=KeyState.PREVIOUS)])


def test_retire_expired_only_touches_expired_previous_keys():
    """retire_expired retires previous keys at or past retired_after, nothing else."""
    base = generate_signing_key(KeyAlgorithm.ES256, now=NOW)
    due = dataclasses.replace(base, state=KeyState.PREVIOUS, retired_after=NOW)
    not_due = dataclasses.replace(
        generate_signing_key(KeyAlgorithm.ES256, now=NOW),
        state=KeyState.PREVIOUS,
        retired_after=NOW + 1,
    )
    result = retire_expired([due, not_due, base], now=NOW)
    assert [k.state for k in result] == [KeyState.RETIRED, KeyState.PREVIOUS, KeyState.NEXT]


def test_key_set_signs_with_primary_and_verifies_published_keys():
    """A key set signs with its primary and resolves next/primary/previous kids, not retired."""
    keys = rotate([], now=NOW, max_token_lifetime=LIFETIME, alg=KeyAlgorithm.ES256)
    keys = rotate(keys, now=NOW + 1, max_token_lifetime=LIFETIME, alg=KeyAlgorithm.ES256)
    retired = dataclasses.replace(
        generate_signing_key(KeyAlgorithm.ES256, now=NOW), state=KeyState.RETIRED
    )
    key_set = KeySet([*keys, retired])
    assert key_set.signing_key().state is KeyState.PRIMARY
    for key in keys:
        found = key_set.verification_key(key.kid)
        assert found is not None
        assert found.alg == key.alg
    assert key_set.verification_key(retired.kid) is None
    assert key_set.verification_key("unknown") is None
    assert len(key_set.keys) == 4
    assert len(key_set.jwks()["keys"]) == 3


def test_key_set_without_primary_cannot_sign():
    """An empty key set says plainly that a rotation is needed."""
    with pytest.raises(LookupError, match="rotation"):
        KeySet([]).signing_key()
