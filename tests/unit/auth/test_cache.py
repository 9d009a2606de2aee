import threading

import pytest

from auth._cache import PrincipalCache
from auth.permissions import Scope
from auth.principal import Principal


def _principal(n: int) -> Principal:
    return Principal(
        subject=f"s{n}",
        tenant_id="acme",
        scopes=frozenset({Scope.INFER}),
        client_id="c",
        token_id=f"j{n}",
        expires_at=100,
        issuer="i",
    )


def test_put_then_get_returns_principal_and_deadline():
    """A stored token returns its principal and valid-until time."""
    cache = PrincipalCache(max_entries=10)
    cache.put("t1", _principal(1), valid_until=130)
    assert cache.get("t1") == (_principal(1), 130)
    assert cache.get("t2") is None


def test_least_recently_used_entry_is_evicted_first():
    """Beyond max_entries the least recently *used* token goes, not the oldest inserted."""
    cache = PrincipalCache(max_entries=2)
    cache.put("a", _principal(1), valid_until=1)
    cache.put("b", _principal(2), valid_until=1)
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", _principal(3), valid_until=1)
    assert cache.get("b") is None
    assert cache.get("a") is not None
    assert cache.get("c") is not None
    assert len(cache) == 2


def test_zero_size_disables_caching():
    """A cache of size zero stores nothing."""
    cache = PrincipalCache(max_entries=0)
    cache.put("a", _principal(1), valid_until=1)
    assert cache.get("a") is None


def test_negative_size_is_refused():
    """A negative size is a configuration error."""
    with pytest.raises(ValueError, match="max_entries"):
        PrincipalCache(max_entries=-1)


def test_discard_and_clear_forget_tokens():
    """Discard forgets one token (missing ones too), clear forgets all."""
    cache = PrincipalCache(max_entries=10)
    cache.put("a", _principal(1), valid_until=1)
    cache.put("b", _principal(2), valid_until=1)
    cache.discard("a")
    cache.discard("missing")
    assert cache.get("a") is None
    cache.clear()
    assert len(cache) == 0


def test_concurrent_use_keeps_the_bound():
    """Many threads putting and getting never push the cache past its bound."""
    cache = PrincipalCache(max_entries=50)

    def work(offset: int) -> None:
        for i in range(2000):
            cache.put(f"{offset}-{i}", _principal(i), valid_until=1)
            cache.get(f"{offset}-{i // 2}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 50
