from pathlib import Path

import pytest

from auth import errors


def test_message_is_public_and_detail_is_kept_apart():
    """An error's str() and args hold only the public message; detail is separate."""
    error = errors.Unauthenticated("token is malformed", detail="header: JSONDecodeError")
    assert error.message == "token is malformed"
    assert error.detail == "header: JSONDecodeError"
    assert str(error) == "token is malformed"
    assert error.args == ("token is malformed",)


def test_default_message_when_none_given():
    """Each class has a safe default message, and detail defaults to None."""
    error = errors.PermissionDenied()
    assert error.message == "permission denied"
    assert error.detail is None


def test_token_expired_is_unauthenticated():
    """TokenExpired is handled wherever Unauthenticated is, with its own message."""
    error = errors.TokenExpired()
    assert isinstance(error, errors.Unauthenticated)
    assert error.message == "token expired"


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (errors.InvalidClient, "invalid_client"),
        (errors.InvalidScope, "invalid_scope"),
        (errors.InvalidGrant, "invalid_grant"),
        (errors.UnsupportedGrantType, "unsupported_grant_type"),
    ],
)
def test_oauth_errors_carry_their_rfc6749_code(cls, code):
    """Token-endpoint errors expose the RFC 6749 error code, on the class and instances."""
    assert cls.error_code == code
    assert cls().error_code == code
    assert issubclass(cls, errors.OAuthError)


@pytest.mark.parametrize(
    "cls",
    [
        errors.Unauthenticated,
        errors.TokenExpired,
        errors.PermissionDenied,
        errors.InvalidClient,
        errors.InvalidScope,
        errors.InvalidGrant,
        errors.UnsupportedGrantType,
    ],
)
def test_every_error_has_one_root(cls):
    """Every auth error derives from AuthError, so the server can map the whole family."""
    assert issubclass(cls, errors.AuthError)
    assert cls().message


def test_errors_know_nothing_of_transports():
    """The errors module imports no HTTP or gRPC library."""
    text = Path(errors.__file__).read_text(encoding="utf-8")
    for name in ("fastapi", "starlette", "grpc", "http"):
        assert f"import {name}" not in text
