import json

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from auth.jwk import jwk_thumbprint, parse_jwks, public_jwk

ALL = {"ES256", "ES384", "EdDSA", "RS256"}


def _doc(*keys) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


def _ec_jwk(kid="ec-1", curve=None, **extra):
    key = ec.generate_private_key(curve or ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, **extra}


def _ed_jwk(kid="ed-1", **extra):
    key = ed25519.Ed25519PrivateKey.generate()
    return {**public_jwk(key.public_key(), kid=kid, alg="EdDSA"), **extra}


def test_public_jwk_for_p256_has_exactly_the_public_members():
    """An EC P-256 JWK has kty crv x y kid alg use, with 32-byte coordinates."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = public_jwk(key.public_key(), kid="k1", alg="ES256")
    assert set(jwk) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", "ES256", "sig")
    assert len(jwk["x"]) == len(jwk["y"]) == 43  # 32 bytes, unpadded base64url
    rebuilt = jwt.PyJWK(jwk).key
    assert rebuilt.public_numbers() == key.public_key().public_numbers()


def test_public_jwk_for_ed25519_follows_rfc8037():
    """An Ed25519 JWK is kty OKP, crv Ed25519, with x and no y."""
    key = ed25519.Ed25519PrivateKey.generate()
    jwk = public_jwk(key.public_key(), kid="k2", alg="EdDSA")
    assert set(jwk) == {"kty", "crv", "x", "kid", "alg", "use"}
    assert (jwk["kty"], jwk["crv"]) == ("OKP", "Ed25519")
    assert jwt.PyJWK(jwk).key.public_bytes_raw() == key.public_key().public_bytes_raw()


def test_public_jwk_refuses_other_key_types():
    """Only P-256 and Ed25519 keys are rendered: our keys are never anything else."""
    with pytest.raises(ValueError, match="P-256"):
        public_jwk(ec.generate_private_key(ec.SECP384R1()).public_key(), kid="k", alg="ES384")


def test_thumbprint_matches_rfc7638_example():
    """The thumbprint of RFC 8037 §A.3's Ed25519 key is the value the RFC gives."""
    x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    key = jwt.PyJWK({"kty": "OKP", "crv": "Ed25519", "x": x}).key
    assert jwk_thumbprint(key) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_thumbprint_is_stable_and_distinct():
    """The same key always has the same thumbprint; different keys differ."""
    a, b = (ec.generate_private_key(ec.SECP256R1()).public_key() for _ in range(2))
    assert jwk_thumbprint(a) == jwk_thumbprint(a)
    assert jwk_thumbprint(a) != jwk_thumbprint(b)


def test_parse_jwks_reads_ec_and_okp_keys_pinned_to_one_algorithm():
    """Each usable key comes back under its kid with exactly one algorithm."""
    keys = parse_jwks(_doc(_ec_jwk("ec-1"), _ed_jwk("ed-1")), algorithms=ALL)
    assert set(keys) == {"ec-1", "ed-1"}
    assert keys["ec-1"].alg == "ES256"
    assert keys["ed-1"].alg == "EdDSA"
    assert isinstance(keys["ed-1"].public_key, ed25519.Ed25519PublicKey)


def test_parse_jwks_infers_the_algorithm_from_the_curve():
    """Without an alg member, a P-384 key is ES384 and an RSA key RS256."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_jwk = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key())), "kid": "r"}
    keys = parse_jwks(_doc(_ec_jwk("p384", ec.SECP384R1()), rsa_jwk), algorithms=ALL)
    assert keys["p384"].alg == "ES384"
    assert keys["r"].alg == "RS256"


@pytest.mark.parametrize(
    ("name", "entry"),
    [
        ("no kid", {k: v for k, v in _ec_jwk().items() if k != "kid"}),
        ("empty kid", _ec_jwk(kid="")),
        ("encryption key", _ec_jwk(use="enc")),
        ("key_ops without verify", _ec_jwk(key_ops=["encrypt"])),
        ("private member d", _ec_jwk(d="AAAA")),
        ("symmetric oct key", {"kty": "oct", "k": "c2VjcmV0", "kid": "hs", "alg": "HS256"}),
        ("alg not allowed", _ec_jwk(alg="ES512")),
        ("alg none", _ec_jwk(alg="none")),
        ("alg HS256 on an EC key", _ec_jwk(alg="HS256")),
        ("alg ES256 on a P-384 key", _ec_jwk(curve=ec.SECP384R1(), alg="ES256")),
        ("alg not a string", _ec_jwk(alg=256)),
        ("alg a list", _ec_jwk(alg=["ES256"])),
        ("broken coordinates", _ec_jwk(x="AAAA")),
        ("unknown kty", {"kty": "XYZ", "kid": "x"}),
        ("not an object", "just a string"),
    ],
)
def test_parse_jwks_skips_unusable_keys(name, entry):
    """A key that cannot safely verify is skipped without taking the others down."""
    keys = parse_jwks(_doc(entry, _ed_jwk("good")), algorithms=ALL)
    assert set(keys) == {"good"}, name


def test_parse_jwks_checks_an_inferred_algorithm_too():
    """A key without alg whose inferred algorithm is not allowed is skipped."""
    entry = _ec_jwk("p384", ec.SECP384R1())
    assert parse_jwks(_doc(entry), algorithms={"ES256"}) == {}


def test_parse_jwks_drops_a_duplicated_kid_entirely():
    """Two keys with one kid are both dropped: keys are chosen by id, never by trial."""
    keys = parse_jwks(_doc(_ec_jwk("same"), _ed_jwk("same"), _ed_jwk("other")), algorithms=ALL)
    assert set(keys) == {"other"}


def test_parse_jwks_accepts_ed448_only_through_eddsa():
    """An Ed448 key (alg EdDSA) is accepted only if EdDSA is allowed."""
    key = ed448.Ed448PrivateKey.generate().public_key()
    jwk = {**json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key)), "kid": "ed448", "alg": "EdDSA"}
    assert parse_jwks(_doc(jwk), algorithms={"EdDSA"})["ed448"].alg == "EdDSA"
    assert parse_jwks(_doc(jwk), algorithms={"ES256"}) == {}


def test_parse_jwks_never_allows_hmac_even_if_asked():
    """HS* in the allowed algorithms is ignored: a JWKS never yields a shared secret."""
    entry = {"kty": "oct", "k": "c2VjcmV0", "kid": "hs"}
    assert parse_jwks(_doc(entry), algorithms={"HS256", "none"}) == {}


@pytest.mark.parametrize("document", [b"", b"not json", b"[]", b'{"keys": {}}', b'{"nokeys": []}'])
def test_parse_jwks_refuses_a_document_that_is_not_a_jwks(document):
    """A document that is not a JWKS at all is a ValueError, not an empty key set."""
    with pytest.raises(ValueError, match="JWKS"):
        parse_jwks(document, algorithms=ALL)


def test_parse_jwks_bounds_the_number_of_keys():
    """Only the first 100 keys of a document are considered."""
    entries = [_ed_jwk(f"k{i}") for i in range(101)]
    assert len(parse_jwks(_doc(*entries), algorithms=ALL)) == 100
