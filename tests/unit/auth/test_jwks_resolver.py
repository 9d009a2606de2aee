import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from auth import Unauthenticated
from auth.jwk import public_jwk
from auth.jwks_resolver import MAX_JWKS_BYTES, JwksKeyResolver, file_source, url_source

ALGS = {"EdDSA"}


def _jwk(kid: str) -> dict:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return public_jwk(key, kid=kid, alg="EdDSA")


def _doc(*kids: str) -> bytes:
    return json.dumps({"keys": [_jwk(kid) for kid in kids]}).encode()


class Clock:
    """A settable monotonic clock, passed to the resolver."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        """Return the current time."""
        return self.now


class Source:
    """A JWKS source whose document can change, counting fetches."""

    def __init__(self, document: bytes) -> None:
        self.document = document
        self.fetches = 0
        self.fail = False

    def __call__(self) -> bytes:
        """Return the document (or fail), counting fetches."""
        self.fetches += 1
        if self.fail:
            raise OSError("unreachable")
        return self.document


class JwksServer:
    """A real HTTP server on 127.0.0.1 serving a settable body and status."""

    def __init__(self) -> None:
        self.body = _doc("k1")
        self.status = 200
        self.location: str | None = None
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                self.send_response(outer.status)
                if outer.location:
                    self.send_header("Location", outer.location)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server() -> Iterator[JwksServer]:
    """A JWKS endpoint on a loopback port."""
    with JwksServer() as running:
        yield running


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    """An HTTP client closed after the test."""
    with httpx.Client(timeout=2.0, follow_redirects=False) as client:
        yield client


def test_first_lookup_loads_the_document():
    """The JWKS is fetched lazily on the first lookup, then served from memory."""
    source = Source(_doc("k1", "k2"))
    resolver = JwksKeyResolver(source=source, algorithms=ALGS, clock=Clock())
    assert resolver("k1").kid == "k1"
    assert resolver("k2").kid == "k2"
    assert source.fetches == 1


def test_unknown_kid_refreshes_at_most_once_a_minute():
    """A flood of unknown kids costs one fetch per minute, not one per token."""
    clock = Clock()
    source = Source(_doc("k1"))
    resolver = JwksKeyResolver(source=source, algorithms=ALGS, clock=clock)
    resolver("k1")
    for i in range(100):
        assert resolver(f"made-up-{i}") is None
    assert source.fetches == 1
    clock.now += 60
    assert resolver("made-up") is None
    assert source.fetches == 2


def test_rotated_key_is_found_after_a_refresh():
    """A kid the issuer added is found on the first lookup after the rate limit allows."""
    clock = Clock()
    source = Source(_doc("k1"))
    resolver = JwksKeyResolver(source=source, algorithms=ALGS, clock=clock)
    resolver("k1")
    source.document = _doc("k1", "k2")
    assert resolver("k2") is None  # within the minute: not refetched
    clock.now += 61
    assert resolver("k2").kid == "k2"


def test_withdrawn_key_stops_verifying_after_max_age():
    """A known kid is re-checked once the document is max_age old."""
    clock = Clock()
    source = Source(_doc("k1"))
    resolver = JwksKeyResolver(source=source, algorithms=ALGS, clock=clock, max_age=600)
    assert resolver("k1") is not None
    source.document = _doc("k2")
    clock.now += 599
    assert resolver("k1") is not None
    clock.now += 1
    assert resolver("k1") is None


def test_failed_refresh_keeps_the_keys_we_have():
    """An unreachable issuer does not take away keys already loaded."""
    clock = Clock()
    source = Source(_doc("k1"))
    resolver = JwksKeyResolver(source=source, algorithms=ALGS, clock=clock)
    resolver("k1")
    source.fail = True
    clock.now += 120
    assert resolver("unknown") is None
    assert resolver("k1") is not None


def test_never_loaded_fails_closed():
    """With no document ever loaded, lookups raise Unauthenticated (fail closed)."""
    source = Source(b"")
    source.fail = True
    resolver = JwksKeyResolver(source=source, algorithms=ALGS, clock=Clock())
    with pytest.raises(Unauthenticated, match="token issuer keys are unavailable"):
        resolver("k1")


def test_invalid_document_does_not_replace_good_keys():
    """A refresh that returns junk keeps the previous keys."""
    clock = Clock()
    source = Source(_doc("k1"))
    resolver = JwksKeyResolver(source=source, algorithms=ALGS, clock=clock)
    resolver("k1")
    source.document = b"<html>maintenance</html>"
    clock.now += 120
    assert resolver("k1") is not None


def test_refresh_ignores_the_rate_limit_and_raises():
    """refresh() fetches now (for start-up) and reports failure to its caller."""
    source = Source(_doc("k1"))
    resolver = JwksKeyResolver(source=source, algorithms=ALGS, clock=Clock())
    resolver.refresh()
    resolver.refresh()
    assert source.fetches == 2
    source.fail = True
    with pytest.raises(OSError, match="unreachable"):
        resolver.refresh()


def test_only_allowed_algorithms_are_loaded():
    """Keys outside the issuer's algorithms are not resolvable."""
    resolver = JwksKeyResolver(source=Source(_doc("k1")), algorithms={"ES256"}, clock=Clock())
    assert resolver("k1") is None


def test_file_source_reads_and_bounds_the_file(tmp_path):
    """The file source returns the file's bytes and refuses an oversized file."""
    path = tmp_path / "jwks.json"
    path.write_bytes(_doc("k1"))
    assert file_source(path)() == path.read_bytes()
    path.write_bytes(b" " * (MAX_JWKS_BYTES + 1))
    with pytest.raises(ValueError, match="too large"):
        file_source(path)()


def test_url_source_fetches_over_real_http(server, http):
    """The URL source GETs the document from a real HTTP server."""
    resolver = JwksKeyResolver(source=url_source(server.url, client=http), algorithms=ALGS)
    assert resolver("k1").kid == "k1"
    assert server.requests == 1


@pytest.mark.parametrize("status", [404, 500])
def test_url_source_refuses_error_statuses(server, http, status):
    """A non-200 answer is an error, not an empty key set."""
    server.status = status
    with pytest.raises(ValueError, match=str(status)):
        url_source(server.url, client=http)()


def test_url_source_does_not_follow_redirects(server, http):
    """A redirect is refused: the configured URL is the only place keys come from."""
    server.status = 302
    server.location = "http://attacker.invalid/jwks.json"
    with pytest.raises(ValueError, match="302"):
        url_source(server.url, client=http)()


def test_url_source_bounds_the_body(server, http):
    """A body over the size limit is refused while streaming."""
    server.body = b" " * (MAX_JWKS_BYTES + 10)
    with pytest.raises(ValueError, match="too large"):
        url_source(server.url, client=http)()


def test_unreachable_url_raises_an_http_error(http):
    """A connection failure surfaces as an httpx error the resolver treats as a failed refresh."""
    with JwksServer() as stopped:
        url = stopped.url
    with pytest.raises(httpx.HTTPError):
        url_source(url, client=http)()
