import pytest

from auth._header import MAX_TOKEN_BYTES
from auth.bearer import bearer_token
from auth.errors import Unauthenticated


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_scheme_is_case_insensitive(scheme):
    """The Bearer scheme name matches in any casing."""
    assert bearer_token(f"{scheme} abc.def.ghi") == "abc.def.ghi"


@pytest.mark.parametrize("value", [None, ""])
def test_missing_header_is_unauthenticated(value):
    """No Authorization value means no token."""
    with pytest.raises(Unauthenticated, match="bearer token is missing"):
        bearer_token(value)


@pytest.mark.parametrize(
    "value",
    [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer ",
        "Bearer  abc",
        "Bearer abc def",
        "Bearer abc\tdef",
        "Bearer abc\n",
        "Bearerabc",
        "Token abc",
        "Bearer a=b",
        "Bearer é",
    ],
)
def test_malformed_values_are_refused_without_echo(value):
    """Other schemes and malformed bearer values are refused, and the value is not echoed."""
    with pytest.raises(Unauthenticated) as caught:
        bearer_token(value)
    assert caught.value.message == "authorization must be 'Bearer <token>'"


def test_padding_characters_are_allowed_at_the_end():
    """RFC 6750 b64token allows trailing '=' characters."""
    assert bearer_token("Bearer abc==") == "abc=="


def test_overlong_value_is_refused_before_parsing():
    """A value longer than a maximal token is refused as too large."""
    with pytest.raises(Unauthenticated, match="too large"):
        bearer_token("Bearer " + "a" * (MAX_TOKEN_BYTES + 1))
