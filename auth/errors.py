"""Errors raised by the auth package.

Every error carries a ``message`` that is safe to show a client and an optional
``detail`` that is only logged. Messages never contain a token, a secret or a
value taken from a token (a ``kid``, a header name the attacker chose...), so a
client cannot use them to probe the server or to get its own input reflected.

None of these classes knows about HTTP or gRPC: the server maps each class
once, in ``server/status.py`` (``Unauthenticated`` → 401/UNAUTHENTICATED,
``PermissionDenied`` → 403/PERMISSION_DENIED, the OAuth2 token-endpoint errors
→ the JSON error body of RFC 6749 §5.2 with their ``error_code``).
"""

from __future__ import annotations

from typing import ClassVar


class AuthError(Exception):
    """Root of every error the auth package raises on purpose."""

    default_message: ClassVar[str] = "authentication failed"

    def __init__(self, message: str | None = None, *, detail: str | None = None) -> None:
        self.message = message if message is not None else self.default_message
        self.detail = detail
        # Only the public message goes to ``Exception.args``: a log line or a
        # traceback that prints the exception shows what the client saw, and
        # ``detail`` is logged on purpose, as a separate field.
        super().__init__(self.message)


class Unauthenticated(AuthError):  # noqa: N818 - semantic name from the error table
    """The caller did not prove who it is: no token, or a token we do not accept."""

    default_message = "authentication required"


class TokenExpired(Unauthenticated):
    """The token was valid once but its ``exp`` has passed.

    A subclass of ``Unauthenticated`` so every handler that maps that class
    handles this one; kept apart so clients (and metrics) can tell "get a new
    token" from "this token was never good".
    """

    default_message = "token expired"


class PermissionDenied(AuthError):  # noqa: N818 - semantic name from the error table
    """The caller is authenticated but the policy does not allow the action."""

    default_message = "permission denied"


class OAuthError(AuthError):
    """An error of the OAuth2 token endpoint, carrying its RFC 6749 §5.2 code.

    ``error_code`` is the value of the ``error`` member of the token endpoint's
    JSON error response; the transport layer writes it, this package only names it.
    """

    error_code: ClassVar[str] = "invalid_request"


class InvalidClient(OAuthError):  # noqa: N818 - named after its RFC 6749 error code
    """Client authentication failed: unknown client, wrong secret, disabled client.

    The three cases share one message on purpose, so the endpoint is no oracle
    for which client ids exist.
    """

    error_code = "invalid_client"
    default_message = "client authentication failed"


class InvalidScope(OAuthError):  # noqa: N818 - named after its RFC 6749 error code
    """The requested scope is malformed, unknown, or more than the client holds."""

    error_code = "invalid_scope"
    default_message = "the requested scope is invalid or exceeds the client's scope"


class InvalidGrant(OAuthError):  # noqa: N818 - named after its RFC 6749 error code
    """The grant is not acceptable (e.g. the client's tenant is suspended)."""

    error_code = "invalid_grant"
    default_message = "the grant is invalid"


class UnsupportedGrantType(OAuthError):  # noqa: N818 - named after its RFC 6749 error code
    """The token endpoint was asked for a grant type other than ``client_credentials``."""

    error_code = "unsupported_grant_type"
    default_message = "only the client_credentials grant is supported"
