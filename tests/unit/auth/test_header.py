import json

import pytest

from auth._header import ALLOWED_HEADER_FIELDS, MAX_TOKEN_BYTES, read_unverified
from auth.errors import Unauthenticated
from tests.auth_cases import b64, compact, segment

GOOD_HEADER = {"alg": "ES256", "typ": "at+jwt", "kid": "k1"}
CLAIMS = {"iss": "https://sealserve.test", "sub": "x"}


def _reject(token: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        read_unverified(token)
    return caught.value.message


def test_reads_alg_typ_kid_and_unverified_issuer():
    """A well-formed token yields its header fields and unverified iss."""
    found = read_unverified(compact(GOOD_HEADER, CLAIMS, b"sig"))
    assert (found.alg, found.typ, found.kid, found.issuer) == (
        "ES256",
        "at+jwt",
        "k1",
        "https://sealserve.test",
    )


def test_only_alg_typ_kid_are_allowed():
    """The header allow-list is exactly alg, typ and kid."""
    assert frozenset({"alg", "typ", "kid"}) == ALLOWED_HEADER_FIELDS


def test_size_is_checked_before_anything_is_decoded():
    """A token over 8 KiB is refused as too large even if it is otherwise garbage."""
    assert _reject("!" * (MAX_TOKEN_BYTES + 1)) == "token is too large"
    assert _reject("a." * (MAX_TOKEN_BYTES // 2 + 1)) == "token is too large"


def test_token_at_the_size_limit_is_read():
    """A token of exactly 8 KiB is not refused for its size."""
    token = compact(GOOD_HEADER, CLAIMS, b"")
    token += "A" * (MAX_TOKEN_BYTES - len(token))  # lengthen the (undecoded) signature
    assert len(token) == MAX_TOKEN_BYTES
    assert read_unverified(token).kid == "k1"


@pytest.mark.parametrize("field", ["jku", "x5u", "jwk", "x5c", "x5t", "zip", "crit", "cty", "b64"])
def test_known_dangerous_fields_are_named(field):
    """Refused well-known header fields are named in the public message."""
    token = compact({**GOOD_HEADER, field: "x"}, CLAIMS, b"sig")
    assert _reject(token) == f"token header field '{field}' is not allowed"


def test_unknown_field_names_are_not_echoed():
    """A made-up header field is refused without echoing its attacker-chosen name."""
    token = compact({**GOOD_HEADER, "evil<script>": 1}, CLAIMS, b"sig")
    message = _reject(token)
    assert message == "token header contains a field that is not allowed"
    assert "evil" not in message


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", "HS256", "hs384", "Hs512"])
def test_none_and_hmac_are_refused_in_any_casing(alg):
    """Alg none and HS* are refused before any key lookup, whatever their casing."""
    assert _reject(compact({**GOOD_HEADER, "alg": alg}, CLAIMS)) == "token algorithm is not allowed"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"typ": "at+jwt", "kid": "k1"}, "token algorithm is missing"),
        ({**GOOD_HEADER, "alg": ""}, "token algorithm is missing"),
        ({**GOOD_HEADER, "alg": None}, "token algorithm is missing"),
        ({"alg": "ES256", "kid": "k1"}, "token type is missing"),
        ({**GOOD_HEADER, "typ": 1}, "token type is missing"),
        ({"alg": "ES256", "typ": "at+jwt"}, "token key id is missing"),
        ({**GOOD_HEADER, "kid": ["k1"]}, "token key id is missing"),
        ({**GOOD_HEADER, "kid": "k" * 257}, "token key id is unknown"),
    ],
)
def test_missing_or_mistyped_header_fields(header, message):
    """Missing or mistyped alg, typ and kid each get their own message."""
    assert _reject(compact(header, CLAIMS, b"sig")) == message


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "a.b",
        "a.b.c.d",
        "..",
        "a b.c.d",
        "YQ==.YQ.YQ",
        "ü.a.b",
        f"{b64(b'[1]')}.{segment(CLAIMS)}.",
        f"{b64(b'not json')}.{segment(CLAIMS)}.",
        f"{segment(GOOD_HEADER)}.{b64(b'[]')}.",
        f"{segment(GOOD_HEADER)}.{b64(b'{')}.",
        f"{b64(b'{' * 100_000)}.e30.",  # would recurse deeply; bounded by size anyway
    ],
)
def test_malformed_tokens_are_refused(token):
    """Wrong segment counts, bad base64url or non-object JSON are malformed (or too large)."""
    assert _reject(token) in {"token is malformed", "token is too large"}


def test_duplicate_header_members_are_refused():
    """A header naming alg twice is malformed (no first-wins/last-wins ambiguity)."""
    raw = b'{"alg":"none","alg":"ES256","typ":"at+jwt","kid":"k1"}'
    assert _reject(f"{b64(raw)}.{segment(CLAIMS)}.") == "token is malformed"


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"sub": "x"}, "token claim 'iss' is missing"),
        ({"iss": None}, "token claim 'iss' is missing"),
        ({"iss": ""}, "token claim 'iss' must be a non-empty string"),
        ({"iss": 5}, "token claim 'iss' must be a non-empty string"),
    ],
)
def test_issuer_must_be_readable_to_choose_keys(claims, message):
    """Without a string iss there is no issuer to choose keys from."""
    assert _reject(compact(GOOD_HEADER, claims, b"sig")) == message


def test_messages_never_contain_the_token():
    """No public message includes the token or its header JSON."""
    token = compact({**GOOD_HEADER, "jku": "https://attacker.example/"}, CLAIMS, b"sig")
    message = _reject(token)
    assert token.split(".")[0] not in message
    assert "attacker" not in message
    assert json.dumps(GOOD_HEADER) not in message
