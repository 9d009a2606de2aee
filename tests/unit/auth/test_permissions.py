import pytest

from auth.errors import InvalidScope
from auth.permissions import (
    PLATFORM_ONLY_SCOPES,
    PLATFORM_ROLES,
    PLATFORM_SCOPES,
    ROLE_SCOPES,
    TENANT_ROLES,
    TENANT_SCOPES,
    Role,
    Scope,
    format_scope,
    is_platform_role,
    narrow_scopes,
    parse_scope,
    scopes_for_roles,
)


def test_scope_values_are_the_wire_names():
    """Scopes are spelled exactly as they appear in OAuth2 scope strings."""
    assert {str(s) for s in Scope} == {
        "infer",
        "models:read",
        "models:write",
        "audit:read",
        "keys:rotate",
        "tenants:manage",
    }


def test_role_table_matches_the_design():
    """Each role grants exactly the scopes the design names."""
    assert {
        Role.PLATFORM_ADMIN: {Scope.TENANTS_MANAGE, Scope.KEYS_ROTATE, Scope.AUDIT_READ},
        Role.AUDITOR: {Scope.AUDIT_READ},
        Role.TENANT_ADMIN: {Scope.MODELS_WRITE, Scope.MODELS_READ, Scope.AUDIT_READ, Scope.INFER},
        Role.TENANT_CLIENT: {Scope.INFER, Scope.MODELS_READ},
    } == ROLE_SCOPES


def test_role_table_is_read_only():
    """The role table cannot be modified at run time."""
    with pytest.raises(TypeError):
        ROLE_SCOPES[Role.AUDITOR] = frozenset(Scope)  # type: ignore[index]


def test_every_role_is_platform_or_tenant():
    """Platform and tenant roles partition the roles."""
    assert set(Role) == PLATFORM_ROLES | TENANT_ROLES
    assert not PLATFORM_ROLES & TENANT_ROLES
    assert is_platform_role(Role.PLATFORM_ADMIN)
    assert is_platform_role(Role.AUDITOR)
    assert not is_platform_role(Role.TENANT_ADMIN)
    assert not is_platform_role(Role.TENANT_CLIENT)


def test_roles_stay_inside_their_scope_family():
    """Platform roles hold only platform scopes; tenant roles never a platform-only one."""
    for role in PLATFORM_ROLES:
        assert ROLE_SCOPES[role] <= PLATFORM_SCOPES
    for role in TENANT_ROLES:
        assert ROLE_SCOPES[role] <= TENANT_SCOPES
        assert not ROLE_SCOPES[role] & PLATFORM_ONLY_SCOPES


def test_scopes_for_roles_is_the_union_and_empty_by_default():
    """No role grants nothing; several roles grant the union of their scopes."""
    assert scopes_for_roles([]) == frozenset()
    assert (
        scopes_for_roles([Role.TENANT_CLIENT, Role.TENANT_ADMIN]) == ROLE_SCOPES[Role.TENANT_ADMIN]
    )


def test_parse_scope_reads_space_separated_names():
    """A scope string parses to the set of scopes it names, tolerating extra spaces."""
    assert parse_scope("infer  models:read ") == {Scope.INFER, Scope.MODELS_READ}
    assert parse_scope("") == frozenset()


@pytest.mark.parametrize("text", ["admin", "infer admin", "INFER", "infer\tmodels:read", "models"])
def test_parse_scope_refuses_unknown_names(text):
    """An unknown (or differently cased) scope name is an invalid_scope error."""
    with pytest.raises(InvalidScope) as caught:
        parse_scope(text)
    assert caught.value.error_code == "invalid_scope"
    assert text not in caught.value.message


def test_narrow_scopes_defaults_to_everything_granted():
    """Without a scope parameter the token gets every scope the client holds."""
    granted = ROLE_SCOPES[Role.TENANT_ADMIN]
    assert narrow_scopes(None, granted=granted) == granted
    assert narrow_scopes("", granted=granted) == granted
    assert narrow_scopes("   ", granted=granted) == granted


def test_narrow_scopes_returns_the_requested_subset():
    """Requesting fewer scopes than held narrows the token to them."""
    granted = ROLE_SCOPES[Role.TENANT_ADMIN]
    assert narrow_scopes("infer", granted=granted) == {Scope.INFER}


def test_narrow_scopes_refuses_a_scope_the_client_lacks():
    """Requesting a scope the client does not hold is invalid_scope, not a silent drop."""
    with pytest.raises(InvalidScope):
        narrow_scopes("infer models:write", granted=ROLE_SCOPES[Role.TENANT_CLIENT])


def test_narrow_scopes_refuses_an_empty_result():
    """A client holding no scope cannot obtain a token."""
    with pytest.raises(InvalidScope):
        narrow_scopes(None, granted=frozenset())


def test_format_scope_is_sorted_and_round_trips():
    """format_scope renders a canonical string that parses back to the same set."""
    scopes = {Scope.MODELS_READ, Scope.INFER, Scope.AUDIT_READ}
    text = format_scope(scopes)
    assert text == "audit:read infer models:read"
    assert parse_scope(text) == scopes
