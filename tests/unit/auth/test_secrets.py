import hmac
import time

import pytest

from auth.secrets import (
    CLIENT_ID_PREFIX,
    CLIENT_SECRET_PREFIX,
    dummy_verify,
    hash_client_secret,
    new_client_id,
    new_client_secret,
    new_pepper,
    verify_client_secret,
)

PEPPER = b"p" * 32
OTHER_PEPPER = b"q" * 32


def test_client_ids_are_prefixed_random_and_urlsafe():
    """Client ids carry the cl_ prefix, 128 random bits, and only URL-safe characters."""
    ids = {new_client_id() for _ in range(200)}
    assert len(ids) == 200
    for client_id in ids:
        assert client_id.startswith(CLIENT_ID_PREFIX)
        body = client_id.removeprefix(CLIENT_ID_PREFIX)
        assert len(body) == 22  # 16 bytes, unpadded base64url
        assert all(c.isalnum() or c in "-_" for c in body)


def test_client_secrets_have_at_least_256_bits():
    """Secrets carry the cs_ prefix and at least 256 bits of randomness."""
    secrets_ = {new_client_secret() for _ in range(200)}
    assert len(secrets_) == 200
    for secret in secrets_:
        assert secret.startswith(CLIENT_SECRET_PREFIX)
        assert len(secret.removeprefix(CLIENT_SECRET_PREFIX)) * 6 >= 256


def test_hash_is_hmac_sha256_under_the_pepper():
    """The stored value is the HMAC-SHA256 of the secret keyed by the pepper, with a scheme tag."""
    stored = hash_client_secret("cs_abc", pepper=PEPPER)
    expected = hmac.new(PEPPER, b"cs_abc", "sha256").hexdigest()
    assert stored == f"hmac-sha256${expected}"
    assert "cs_abc" not in stored


def test_verify_accepts_the_right_secret_only():
    """Verification succeeds for the secret that was hashed and fails for any other."""
    secret = new_client_secret()
    stored = hash_client_secret(secret, pepper=PEPPER)
    assert verify_client_secret(secret, stored, pepper=PEPPER)
    assert not verify_client_secret(secret + "x", stored, pepper=PEPPER)
    assert not verify_client_secret("", stored, pepper=PEPPER)


def test_verify_fails_under_another_pepper():
    """A hash made under one pepper never verifies under another (a stolen table is useless)."""
    stored = hash_client_secret("cs_abc", pepper=PEPPER)
    assert not verify_client_secret("cs_abc", stored, pepper=OTHER_PEPPER)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "garbage",
        "bcrypt$" + hmac.new(PEPPER, b"cs_abc", "sha256").hexdigest(),
        "hmac-sha256$",
        "hmac-sha256$é",
    ],
)
def test_malformed_or_foreign_stored_values_never_match(stored):
    """A stored value in an unknown scheme or shape never verifies, and does not raise."""
    assert not verify_client_secret("cs_abc", stored, pepper=PEPPER)


def test_unknown_client_goes_through_the_dummy_path():
    """stored=None (unknown client id) returns False after doing the same work."""
    assert not verify_client_secret("cs_abc", None, pepper=PEPPER)
    assert dummy_verify("cs_abc", pepper=PEPPER) is False


def test_new_pepper_is_random_and_long_enough():
    """A generated pepper has 256 bits and is usable at once."""
    peppers = {new_pepper() for _ in range(50)}
    assert len(peppers) == 50
    pepper = peppers.pop()
    assert len(pepper) == 32
    assert verify_client_secret("s", hash_client_secret("s", pepper=pepper), pepper=pepper)


def test_short_pepper_is_refused():
    """A pepper under 32 bytes is a configuration error, on every path."""
    with pytest.raises(ValueError, match="pepper"):
        hash_client_secret("cs_abc", pepper=b"short")
    with pytest.raises(ValueError, match="pepper"):
        verify_client_secret("cs_abc", None, pepper=b"short")


def test_unknown_client_costs_about_the_same_as_a_wrong_secret():
    """Timing of the unknown-client path is within noise of the wrong-secret path."""
    stored = hash_client_secret(new_client_secret(), pepper=PEPPER)
    guess = new_client_secret()

    def sample(fn) -> float:
        start = time.perf_counter()
        for _ in range(2000):
            fn()
        return time.perf_counter() - start

    paths = {
        "wrong": lambda: verify_client_secret(guess, stored, pepper=PEPPER),
        "unknown": lambda: verify_client_secret(guess, None, pepper=PEPPER),
    }
    samples: dict[str, list[float]] = {"wrong": [], "unknown": []}
    for _ in range(15):  # interleaved, so both paths see the same background load
        for name, fn in paths.items():
            samples[name].append(sample(fn))
    # The fastest sample of each is the least disturbed by other work on the box.
    wrong, unknown = min(samples["wrong"]), min(samples["unknown"])
    # Loose bound: this guards against an accidental early return (10x faster),
    # not against nanosecond differences, which a busy CI box would blur anyway.
    assert 0.5 < unknown / wrong < 2.0
