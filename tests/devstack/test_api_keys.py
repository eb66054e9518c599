"""The demo API's cache of the provider's keys: refetched on an unknown kid, at most once a minute."""

import json

import pytest
from joserfc.jwk import KeySet, RSAKey

from myapp.devstack.api import KeysUnavailable, RemoteKeySet
from tests.support.servers import running_wsgi


class JWKSServer:
    def __init__(self):
        self.keys = [RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"}, private=False, auto_kid=True)]
        self.fetches = 0
        self.status = "200 OK"

    def __call__(self, environ, start_response):
        self.fetches += 1
        body = json.dumps(KeySet(self.keys).as_dict(private=False)).encode()
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
    rotated = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"}, private=False, auto_kid=True)
    jwks.keys.append(rotated)

    assert keys.key_for(rotated.kid) is None
    assert jwks.fetches == 1
    clock.now += 60
    assert keys.key_for(rotated.kid).kid == rotated.kid
    assert jwks.fetches == 2
    assert keys.key_for("still-unknown") is None
    assert jwks.fetches == 2


def test_without_kid_only_a_single_key_qualifies(jwks):
    jwks.keys.append(RSAKey.generate_key(2048, parameters={"use": "sig"}, private=False, auto_kid=True))
    assert RemoteKeySet(jwks.url, clock=Clock()).key_for(None) is None


def test_unreachable_jwks(jwks):
    jwks.status = "500 Internal Server Error"
    with pytest.raises(KeysUnavailable, match="cannot fetch the provider's keys"):
        RemoteKeySet(jwks.url, clock=Clock()).key_for("any")
