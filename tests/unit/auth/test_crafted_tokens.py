"""The shared crafted-token table, run against the verifier itself."""

import time
from collections import Counter

import pytest

from auth import TokenExpired, TokenVerifier, Unauthenticated, trusted_issuer_rules
from tests.auth_cases import CASES, Outcome, TokenCase, TokenContext, make_context

REJECTED = [c for c in CASES if c.outcome is not Outcome.ACCEPT]
ACCEPTED = [c for c in CASES if c.outcome is Outcome.ACCEPT]


@pytest.fixture(scope="module")
def ctx() -> TokenContext:
    """One server context (keys in every state, external issuer) for the whole module."""
    return make_context()


@pytest.fixture(scope="module")
def make_verifier(ctx, tmp_path_factory):
    """Build verifiers trusting our issuer and the external one, as the server would."""
    jwks_file = tmp_path_factory.mktemp("jwks") / "external.json"
    jwks_file.write_bytes(ctx.external.jwks_document())

    def make(*, cache_size: int) -> TokenVerifier:
        own = ctx.token_issuer().verification_rules(keys=ctx.key_set().verification_key)
        external = trusted_issuer_rules(ctx.external.config(jwks_file=jwks_file))
        return TokenVerifier(
            issuers=[own, external],
            revoked=ctx.revoked,
            tenant_suspended=ctx.tenant_suspended,
            cache_size=cache_size,
        )

    return make


def test_table_is_large_and_names_are_unique():
    """The table holds at least 40 cases, each with a unique name, and some controls."""
    assert len(CASES) >= 40
    duplicates = [name for name, n in Counter(c.name for c in CASES).items() if n > 1]
    assert not duplicates
    assert len(ACCEPTED) >= 2


def test_rejections_name_their_reason():
    """Every rejected case states the exact public message it expects."""
    assert all(c.message for c in REJECTED)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_crafted_token(case: TokenCase, ctx, make_verifier):
    """Each crafted token gets exactly the outcome and public message the table states."""
    # No cache: every case is judged on its own, not by an earlier answer.
    verifier = make_verifier(cache_size=0)
    token = case.make(ctx)
    if case.outcome is Outcome.ACCEPT:
        principal = verifier.verify(token)
        assert principal.tenant_id == case.tenant
        assert principal.expires_at > time.time() - 60
        return
    expected = TokenExpired if case.outcome is Outcome.EXPIRED else Unauthenticated
    with pytest.raises(expected) as caught:
        verifier.verify(token)
    if case.outcome is Outcome.UNAUTHENTICATED:
        assert not isinstance(caught.value, TokenExpired)
    assert caught.value.message == case.message
    assert str(caught.value) == case.message


@pytest.mark.parametrize("case", REJECTED, ids=lambda c: c.name)
def test_crafted_token_is_rejected_by_a_warm_cache(case: TokenCase, ctx, make_verifier):
    """A caching verifier that has already accepted every control still rejects each case."""
    verifier = make_verifier(cache_size=1000)
    for control in ACCEPTED:
        verifier.verify(control.make(ctx))
    for _ in range(2):  # and a second time, in case a failure were cached
        with pytest.raises(Unauthenticated):
            verifier.verify(case.make(ctx))
