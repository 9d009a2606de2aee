import itertools

import pytest

from auth.errors import PermissionDenied
from auth.permissions import PLATFORM_ONLY_SCOPES, PLATFORM_SCOPES, ROLE_SCOPES, Role, Scope
from auth.policy import authorize
from auth.principal import Principal

TENANTS = ["acme", "globex", None]


def _principal(*, tenant_id: str | None, scopes) -> Principal:
    return Principal(
        subject="sub",
        tenant_id=tenant_id,
        scopes=frozenset(scopes),
        client_id="cl_x",
        token_id="jti",
        expires_at=2_000_000_000,
        issuer="https://sealserve.test",
    )


def _expected(principal: Principal, scope: Scope, target: str | None) -> bool:
    """The policy, restated as a truth table independent of the implementation."""
    if scope not in principal.scopes:
        return False
    if principal.tenant_id is None:
        return scope in PLATFORM_SCOPES
    return scope not in PLATFORM_ONLY_SCOPES and target == principal.tenant_id


def _allowed(principal: Principal, scope: Scope, target: str | None) -> bool:
    try:
        authorize(principal, scope, tenant_id=target)
    except PermissionDenied:
        return False
    return True


@pytest.mark.parametrize(
    ("held", "tenant_id", "scope", "target"),
    list(
        itertools.product(
            # every single scope held, and every scope held at once
            [frozenset({s}) for s in Scope] + [frozenset(Scope)],
            ["acme", None],
            list(Scope),
            TENANTS,
        )
    ),
)
def test_authorize_exhaustively(held, tenant_id, scope, target):
    """Every (held scopes, principal tenant, scope, target tenant) follows the truth table."""
    principal = _principal(tenant_id=tenant_id, scopes=held)
    assert _allowed(principal, scope, target) == _expected(principal, scope, target)


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("scope", list(Scope))
@pytest.mark.parametrize("target", TENANTS)
def test_roles_exhaustively(role, scope, target):
    """Every role, on its own tenant, another tenant and platform-wide, follows the table."""
    tenant_id = None if role in {Role.PLATFORM_ADMIN, Role.AUDITOR} else "acme"
    principal = _principal(tenant_id=tenant_id, scopes=ROLE_SCOPES[role])
    assert _allowed(principal, scope, target) == _expected(principal, scope, target)


def test_tenant_client_infers_on_its_own_tenant_only():
    """A tenant client may infer in its tenant, not in another one nor platform-wide."""
    client = _principal(tenant_id="acme", scopes=ROLE_SCOPES[Role.TENANT_CLIENT])
    authorize(client, Scope.INFER, tenant_id="acme")
    with pytest.raises(PermissionDenied):
        authorize(client, Scope.INFER, tenant_id="globex")
    with pytest.raises(PermissionDenied):
        authorize(client, Scope.INFER)


def test_tenant_client_cannot_write_models():
    """A tenant client lacks models:write even on its own tenant."""
    client = _principal(tenant_id="acme", scopes=ROLE_SCOPES[Role.TENANT_CLIENT])
    with pytest.raises(PermissionDenied):
        authorize(client, Scope.MODELS_WRITE, tenant_id="acme")


def test_platform_admin_acts_across_tenants_but_cannot_infer():
    """A platform admin manages any tenant and the platform, yet holds no tenant power."""
    admin = _principal(tenant_id=None, scopes=ROLE_SCOPES[Role.PLATFORM_ADMIN])
    authorize(admin, Scope.TENANTS_MANAGE)
    authorize(admin, Scope.TENANTS_MANAGE, tenant_id="acme")
    authorize(admin, Scope.KEYS_ROTATE, tenant_id="globex")
    with pytest.raises(PermissionDenied):
        authorize(admin, Scope.INFER, tenant_id="acme")


def test_platform_principal_never_uses_a_tenant_scope_even_if_granted():
    """A platform token that somehow carries infer still may not infer anywhere."""
    odd = _principal(tenant_id=None, scopes={Scope.INFER, Scope.MODELS_WRITE})
    for target in TENANTS:
        with pytest.raises(PermissionDenied):
            authorize(odd, Scope.INFER, tenant_id=target)


def test_auditor_reads_every_tenant_and_the_whole_log():
    """An auditor reads the audit log platform-wide and of any tenant, and nothing else."""
    auditor = _principal(tenant_id=None, scopes=ROLE_SCOPES[Role.AUDITOR])
    authorize(auditor, Scope.AUDIT_READ)
    authorize(auditor, Scope.AUDIT_READ, tenant_id="globex")
    with pytest.raises(PermissionDenied):
        authorize(auditor, Scope.TENANTS_MANAGE)


def test_tenant_admin_reads_only_its_own_audit_log():
    """A tenant admin reads its tenant's audit entries, not another's, not the platform's."""
    admin = _principal(tenant_id="acme", scopes=ROLE_SCOPES[Role.TENANT_ADMIN])
    authorize(admin, Scope.AUDIT_READ, tenant_id="acme")
    with pytest.raises(PermissionDenied):
        authorize(admin, Scope.AUDIT_READ, tenant_id="globex")
    with pytest.raises(PermissionDenied):
        authorize(admin, Scope.AUDIT_READ)


def test_tenant_principal_never_gets_platform_only_scopes():
    """A tenant token carrying keys:rotate (e.g. from an external issuer) is still refused."""
    odd = _principal(tenant_id="acme", scopes={Scope.KEYS_ROTATE, Scope.TENANTS_MANAGE})
    for scope in (Scope.KEYS_ROTATE, Scope.TENANTS_MANAGE):
        for target in TENANTS:
            with pytest.raises(PermissionDenied):
                authorize(odd, scope, tenant_id=target)


def test_denial_message_is_generic():
    """The public message of a denial names neither scope nor tenant; the detail does."""
    client = _principal(tenant_id="acme", scopes={Scope.INFER})
    with pytest.raises(PermissionDenied) as caught:
        authorize(client, Scope.INFER, tenant_id="globex")
    assert caught.value.message == "permission denied"
    assert caught.value.detail


def test_empty_scopes_deny_everything():
    """A principal with no scope is denied every action (deny by default)."""
    nobody = _principal(tenant_id="acme", scopes=())
    for scope in Scope:
        assert not _allowed(nobody, scope, "acme")
