"""The demo API's keys: the provider's, fetched and cached (refetched on an unknown kid, at most once a
minute), or read in-process beside it; and its verifier's refusals that need a key to forge."""

import json
import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from joserfc import jws, jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from myapp.devstack.api import (
    AccessTokenVerifier,
    InvalidAccessToken,
    IssuerVerifiers,
    KeysUnavailable,
    PublishedKeySet,
    RemoteKeySet,
)
from tests.support.fake_provider import b64
from tests.support.servers import running_wsgi


def rsa_key(private=False):
    return RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"}, private=private, auto_kid=True)


class JWKSServer:
    def __init__(self):
        self.keys = [rsa_key()]
        self.fetches = 0
        self.status = "200 OK"
        self.body = None

    def __call__(self, environ, start_response):
        self.fetches += 1
        body = self.body or json.dumps(KeySet(self.keys).as_dict(private=False)).encode()
        start_response(self.status, [("Content-Type", "application/json")])
        return [body]


class Clock:
    now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def jwks():
    server = JWKSServer()
    with running_wsgi(lambda base_url: server, threads=2) as base_url:
        server.url = base_url + "/jwks"
        yield server


def test_first_fetch_then_cache(jwks):
    keys = RemoteKeySet(jwks.url, clock=Clock())
    kid = jwks.keys[0].kid
    assert keys.key_for(kid).kid == kid
    assert keys.key_for(kid).kid == kid
    assert keys.key_for(None).kid == kid
    assert jwks.fetches == 1


def test_unknown_kid_refetches_at_most_once_a_minute(jwks):
    clock = Clock()
    keys = RemoteKeySet(jwks.url, clock=clock)
    keys.key_for(jwks.keys[0].kid)
    rotated = rsa_key()
    jwks.keys.append(rotated)

    assert keys.key_for(rotated.kid) is None
    assert jwks.fetches == 1
    clock.now += 60
    assert keys.key_for(rotated.kid).kid == rotated.kid
    assert jwks.fetches == 2
    assert keys.key_for("still-unknown") is None
    assert jwks.fetches == 2


def test_without_kid_only_a_single_key_qualifies(jwks):
    jwks.keys.append(rsa_key())
    assert RemoteKeySet(jwks.url, clock=Clock()).key_for(None) is None


def test_unreachable_jwks(jwks):
    jwks.status = "500 Internal Server Error"
    with pytest.raises(KeysUnavailable, match="cannot fetch the provider's keys"):
        RemoteKeySet(jwks.url, clock=Clock()).key_for("any")


def test_a_key_set_nested_past_pythons_stack_is_unavailable(jwks):
    """RecursionError, not ValueError, from its JSON: it escaped as one (helper-118)."""
    jwks.body = b"[" * 100_000
    with pytest.raises(KeysUnavailable, match="cannot fetch the provider's keys"):
        RemoteKeySet(jwks.url, clock=Clock()).key_for("any")


def test_published_keys_by_kid_and_without_one():
    first, second = rsa_key(), rsa_key()
    keys = PublishedKeySet([first, second])
    assert keys.key_for(second.kid) is second
    assert keys.key_for("unknown") is None
    assert keys.key_for(None) is None  # two candidates: a token without kid names neither
    assert PublishedKeySet([first]).key_for(None) is first


def test_published_keys_are_rsa_only():
    ec = ECKey.generate_key("P-256", auto_kid=True)
    assert PublishedKeySet([ec]).key_for(ec.kid) is None


@pytest.fixture
def signer():
    return rsa_key(private=True)


@pytest.fixture
def verifier(signer):
    public = RSAKey.import_key(signer.as_dict(private=False))
    return AccessTokenVerifier(keys=PublishedKeySet([public]), issuer="https://idp.test", audience="https://api.test", leeway=30)


def claims(**overrides):
    now = int(time.time())
    return {"iss": "https://idp.test", "aud": "https://api.test", "sub": "alice", "exp": now + 60, **overrides}


def test_verifier_accepts_the_providers_token(verifier, signer):
    token = jwt.encode({"alg": "RS256", "kid": signer.kid}, claims(), signer)
    assert verifier.verify(token)["sub"] == "alice"
    # And again: the claims' rules are kept between calls, not consumed by the first.
    assert verifier.verify(token)["sub"] == "alice"


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"alice"', b"not json", b"\xff"], ids=["array", "string", "text", "bytes"])
def test_a_signed_payload_that_is_not_claims_is_refused(verifier, signer, payload):
    token = jws.serialize_compact({"alg": "RS256", "kid": signer.kid}, payload, signer)
    with pytest.raises(InvalidAccessToken, match="malformed"):
        verifier.verify(token)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("not-a-jwt", "not a JWT"),
        ("a.b", "not a JWT"),
        ("\u00e9.e30.e30", "not a JWT"),
    ],
    ids=["one-part", "two-parts", "not-ascii"],
)
def test_what_is_not_a_jws_is_refused(verifier, token, message):
    with pytest.raises(InvalidAccessToken, match=message):
        verifier.verify(token)


def test_the_rules_hold_on_every_call(verifier, signer):
    """The claims' rules are built once: the second token is judged by them as the first was."""
    good = jwt.encode({"alg": "RS256", "kid": signer.kid}, claims(), signer)
    expired = jwt.encode({"alg": "RS256", "kid": signer.kid}, claims(exp=int(time.time()) - 31), signer)
    other_audience = jwt.encode({"alg": "RS256", "kid": signer.kid}, claims(aud="https://other.test"), signer)
    assert verifier.verify(good)
    with pytest.raises(InvalidAccessToken, match="expired"):
        verifier.verify(expired)
    with pytest.raises(InvalidAccessToken, match="aud claim"):
        verifier.verify(other_audience)
    assert verifier.verify(good)


def signed_by_hand(header, payload: bytes, key: RSAKey) -> str:
    """An RS256 signature over any header at all (joserfc refuses to make the odd ones)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(payload)}"
    signature = key.get_op_key("sign").sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(signature)}"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"crit": ["exp"], "exp": 1}, "malformed"),  # a critical extension nobody here understands
        ({"crit": 1}, "malformed"),  # not even a list: joserfc raised TypeError on it, once a 500
        ({"x-unknown": {"nested": True}, "crit": ["x-unknown"]}, "malformed"),
    ],
    ids=["unknown-crit", "crit-not-a-list", "crit-unknown-name"],
)
def test_a_signed_token_with_a_header_nobody_may_ignore_is_refused(verifier, signer, header, message):
    token = signed_by_hand({"alg": "RS256", "kid": signer.kid, **header}, json.dumps(claims()).encode(), signer)
    with pytest.raises(InvalidAccessToken, match=message):
        verifier.verify(token)


@pytest.mark.parametrize("header", [["alg", "RS256"], "alg: RS256"], ids=["list", "string"])
def test_a_header_that_is_not_an_object_is_not_a_jwt(verifier, signer, header):
    """joserfc looks for "alg" in the header with ``in``, which a list or a string holding those
    letters passes; reading it as an object then was an AttributeError, a 500."""
    token = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims()).encode())}.{b64(b'signature')}"
    with pytest.raises(InvalidAccessToken, match="not a JWT"):
        verifier.verify(token)


def test_a_payload_nested_too_deep_is_refused(verifier, signer):
    token = signed_by_hand({"alg": "RS256", "kid": signer.kid}, b"[" * 50_000, signer)
    with pytest.raises(InvalidAccessToken, match="malformed"):
        verifier.verify(token)


def test_a_signature_by_another_key_with_the_same_kid_is_refused(verifier, signer):
    impostor = rsa_key(private=True)
    token = jwt.encode({"alg": "RS256", "kid": signer.kid}, claims(), impostor)
    with pytest.raises(InvalidAccessToken, match="signature is invalid"):
        verifier.verify(token)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"aud": None}, "lacks the aud claim"),
        ({"exp": None}, "lacks the exp claim"),
        ({"sub": None}, "lacks the sub claim"),
        ({"iss": None}, "lacks the iss claim"),
        ({"iss": "https://other-idp.test"}, "iss claim is not accepted here"),
    ],
    ids=["no-aud", "no-exp", "no-sub", "no-iss", "other-iss"],
)
def test_each_claim_rule_on_a_single_verifier(verifier, signer, overrides, message):
    """One verifier alone (as with devstack.api.jwks_uri): its own rules, not the issuers' routing."""
    body = {k: v for k, v in claims(**overrides).items() if v is not None}
    token = jwt.encode({"alg": "RS256", "kid": signer.kid}, body, signer)
    with pytest.raises(InvalidAccessToken, match=message):
        verifier.verify(token)


@pytest.mark.parametrize("issuer", [[], {}, 1, None], ids=["list", "object", "number", "null"])
def test_an_issuer_that_is_not_a_string_is_not_accepted(verifier, signer, issuer):
    """Several issuers: the token's iss picks the verifier; one that is no string picks none
    (a list or an object was once a TypeError, a 500)."""
    issuers = IssuerVerifiers({"https://idp.test": verifier})
    token = signed_by_hand({"alg": "RS256", "kid": signer.kid}, json.dumps(claims(iss=issuer)).encode(), signer)
    with pytest.raises(InvalidAccessToken, match="iss claim is not accepted here"):
        issuers.verify(token)
