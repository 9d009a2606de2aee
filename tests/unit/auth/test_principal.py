import dataclasses

import pytest

from auth.permissions import Scope
from auth.principal import Principal


def _principal(tenant_id: str | None = "acme") -> Principal:
    return Principal(
        subject="cl_abc",
        tenant_id=tenant_id,
        scopes=frozenset({Scope.INFER}),
        client_id="cl_abc",
        token_id="jti-1",
        expires_at=2_000_000_000,
        issuer="https://sealserve.test",
    )


def test_principal_is_frozen():
    """A principal cannot be widened after verification."""
    principal = _principal()
    with pytest.raises(dataclasses.FrozenInstanceError):
        principal.scopes = frozenset(Scope)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        principal.tenant_id = "other"  # type: ignore[misc]


def test_tenant_none_means_platform_principal():
    """tenant_id None marks a platform principal; any tenant id a tenant principal."""
    assert _principal(None).is_platform
    assert not _principal("acme").is_platform


def test_has_scope_reports_granted_scopes_only():
    """has_scope is true exactly for the scopes in the token."""
    principal = _principal()
    assert principal.has_scope(Scope.INFER)
    assert not principal.has_scope(Scope.MODELS_WRITE)


def test_principals_compare_and_hash_by_value():
    """Equal fields make equal, hashable principals (usable as cache values and set members)."""
    assert _principal() == _principal()
    assert len({_principal(), _principal()}) == 1
