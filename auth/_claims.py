"""Strict validation of a verified token's claims, and the ``Principal`` they make.

PyJWT has checked the signature by the time this runs; this module checks
everything else, by RFC 8725 and RFC 9068, more strictly than PyJWT would:
times must be JSON integers (PyJWT's ``int()`` would take ``"1700000000"``,
``1.7e9`` or ``true``), strings must be non-empty, and the lifetime is
bounded. Keeping the rules in one place gives each failure one precise
public message, and makes the verifier's behaviour the same for our own
tokens and an external issuer's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from auth.errors import TokenExpired, Unauthenticated
from auth.issuers import PLATFORM_TENANT, IssuerRules
from auth.permissions import Scope
from auth.principal import Principal

if TYPE_CHECKING:
    from collections.abc import Mapping

_MAX_STRING = 256
# Far beyond any real timestamp, but keeps arithmetic on times in sane bounds.
_MAX_TIME = 2**40
_SCOPES_BY_NAME: Mapping[str, Scope] = {str(scope): scope for scope in Scope}


def principal_from_claims(
    claims: Mapping[str, Any], *, rules: IssuerRules, now: int, leeway: int
) -> Principal:
    """Validate ``claims`` against ``rules`` at time ``now`` and build the principal.

    Raises ``TokenExpired`` for a token past ``exp`` (plus leeway) and
    ``Unauthenticated`` for everything else. Scope names we do not know are
    ignored, not rejected: an external issuer may add its own (``openid``),
    and an unknown name grants nothing.
    """
    for name in ("iss", "aud", "sub", "jti", "exp", "iat", "nbf", rules.tenant_claim):
        if claims.get(name) is None:
            raise Unauthenticated(f"token claim '{name}' is missing")
    if claims["iss"] != rules.issuer:
        raise Unauthenticated("token issuer is not accepted")
    _check_audience(claims["aud"], rules.audience)
    subject = _string(claims, "sub")
    token_id = _string(claims, "jti")
    exp, iat, nbf = _time(claims, "exp"), _time(claims, "iat"), _time(claims, "nbf")
    if iat > now + leeway:
        raise Unauthenticated("token was issued in the future")
    if exp <= iat or nbf > exp:
        raise Unauthenticated("token validity period is inconsistent")
    if exp - iat > rules.max_lifetime:
        raise Unauthenticated("token lifetime exceeds the maximum")
    if nbf > now + leeway:
        raise Unauthenticated("token is not yet valid")
    if exp + leeway <= now:
        raise TokenExpired
    return Principal(
        subject=subject,
        tenant_id=_tenant(claims, rules),
        scopes=_scopes(claims.get(rules.scope_claim)),
        client_id=_client_id(claims),
        token_id=token_id,
        expires_at=exp,
        issuer=rules.issuer,
    )


def _check_audience(aud: object, audience: str) -> None:
    # A string must match exactly; a list (RFC 7519 §4.1.3) must hold only
    # strings and contain ours exactly. No prefix, case or URL normalization.
    if isinstance(aud, str):
        accepted = aud == audience
    elif isinstance(aud, list) and all(isinstance(item, str) for item in aud):
        accepted = audience in aud
    else:
        accepted = False
    if not accepted:
        raise Unauthenticated("token audience is not accepted")


def _string(claims: Mapping[str, Any], name: str) -> str:
    value = claims[name]
    if not isinstance(value, str) or not value or len(value) > _MAX_STRING:
        raise Unauthenticated(f"token claim '{name}' must be a non-empty string")
    return value


def _time(claims: Mapping[str, Any], name: str) -> int:
    value = claims[name]
    # ``type(...) is int`` on purpose: ``bool`` is a subclass of ``int``.
    if type(value) is not int or not 0 <= value < _MAX_TIME:
        raise Unauthenticated(f"token claim '{name}' must be an integer timestamp")
    return value


def _tenant(claims: Mapping[str, Any], rules: IssuerRules) -> str | None:
    tenant = _string(claims, rules.tenant_claim)
    if tenant != PLATFORM_TENANT:
        return tenant
    if not rules.allow_platform:
        raise Unauthenticated("token tenant is not accepted")
    return None


def _scopes(value: object) -> frozenset[Scope]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        names: list[Any] = value.split(" ")
    elif isinstance(value, list):
        names = value
    else:
        raise Unauthenticated("token scope claim is malformed")
    if not all(isinstance(name, str) for name in names):
        raise Unauthenticated("token scope claim is malformed")
    return frozenset(_SCOPES_BY_NAME[name] for name in names if name in _SCOPES_BY_NAME)


def _client_id(claims: Mapping[str, Any]) -> str | None:
    # RFC 9068 names the client ``client_id``; many OIDC providers use ``azp``.
    for name in ("client_id", "azp"):
        if name in claims:
            return _string(claims, name)
    return None
