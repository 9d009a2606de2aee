"""Authentication and authorization for sealserve, as a pure library.

Tokens (issue, verify), signing keys and their JWKS, client credentials,
principals, scopes and the one policy function. Persistence (wrapped signing
keys, the clients table, the ``jti`` deny-list) belongs to the server and
storage; this package gives them the logic and the (de)serialisation, and
imports neither.
"""

from auth.bearer import bearer_token
from auth.errors import (
    AuthError,
    InvalidClient,
    InvalidGrant,
    InvalidScope,
    OAuthError,
    PermissionDenied,
    TokenExpired,
    Unauthenticated,
    UnsupportedGrantType,
)
from auth.issuers import PLATFORM_TENANT, TOKEN_TYPE, IssuerRules, KeyResolver
from auth.jwk import VerificationKey, parse_jwks
from auth.jwks_resolver import JwksKeyResolver
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
from auth.permissions import (
    PLATFORM_ONLY_SCOPES,
    PLATFORM_ROLES,
    PLATFORM_SCOPES,
    ROLE_SCOPES,
    TENANT_ROLES,
    Role,
    Scope,
    format_scope,
    is_platform_role,
    narrow_scopes,
    parse_scope,
    scopes_for_roles,
)
from auth.policy import authorize
from auth.principal import Principal
from auth.secrets import (
    dummy_verify,
    hash_client_secret,
    new_client_id,
    new_client_secret,
    new_pepper,
    verify_client_secret,
)
from auth.tokens import IssuedToken, TokenIssuer, TokenVerifier, own_issuer_rules
from auth.trusted import TrustedIssuer, jwks_resolver, trusted_issuer_rules

__all__ = [
    "PLATFORM_ONLY_SCOPES",
    "PLATFORM_ROLES",
    "PLATFORM_SCOPES",
    "PLATFORM_TENANT",
    "ROLE_SCOPES",
    "TENANT_ROLES",
    "TOKEN_TYPE",
    "AuthError",
    "InvalidClient",
    "InvalidGrant",
    "InvalidScope",
    "IssuedToken",
    "IssuerRules",
    "JwksKeyResolver",
    "KeyAlgorithm",
    "KeyResolver",
    "KeySet",
    "KeyState",
    "OAuthError",
    "PermissionDenied",
    "Principal",
    "Role",
    "Scope",
    "SigningKey",
    "TokenExpired",
    "TokenIssuer",
    "TokenVerifier",
    "TrustedIssuer",
    "Unauthenticated",
    "UnsupportedGrantType",
    "VerificationKey",
    "authorize",
    "bearer_token",
    "dummy_verify",
    "format_scope",
    "generate_signing_key",
    "hash_client_secret",
    "is_platform_role",
    "jwks",
    "jwks_resolver",
    "narrow_scopes",
    "new_client_id",
    "new_client_secret",
    "new_pepper",
    "own_issuer_rules",
    "parse_jwks",
    "parse_scope",
    "retire_expired",
    "rotate",
    "scopes_for_roles",
    "trusted_issuer_rules",
    "verify_client_secret",
]
