"""Client authentication pieces: RFC 6749 Basic encoding, client assertions (RFC 7523)."""

import base64

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from myapp.services.oidc import ProviderMisconfigured
from myapp.services.oidc.client_auth import ClientKeys, client_secret_basic
from tests.support.keys import ec_key, pem_of, rsa_key


class Auth:
    client_id = "my app:1"
    client_secret = "p@ss:w%rd+é"


def test_basic_credentials_are_form_urlencoded_first():
    _, headers, _ = client_secret_basic(Auth(), "POST", "https://idp.example/token", {}, "")
    decoded = base64.b64decode(headers["Authorization"].removeprefix("Basic ")).decode("ascii")
    assert decoded == "my+app%3A1:p%40ss%3Aw%25rd%2B%C3%A9"


def test_a_thousand_assertions_have_a_thousand_jtis():
    keys = ClientKeys((pem_of(rsa_key()),))
    jtis = {jwt.decode(keys.assertion(client_id="c", audience="https://idp", alg="RS256"), RSAKey.import_key(keys.signing_key.as_dict())).claims["jti"] for _ in range(1000)}
    assert len(jtis) == 1000


def test_assertion_claims_and_header():
    keys = ClientKeys((pem_of(ec_key()),))
    token = keys.assertion(client_id="client-1", audience="https://idp.example", alg="ES256", now=lambda: 1_000_000)
    decoded = jwt.decode(token, ECKey.import_key(keys.signing_key.as_dict(private=False)), algorithms=["ES256"])
    assert decoded.header == {"alg": "ES256", "typ": "JWT", "kid": keys.signing_key.thumbprint()}
    claims = decoded.claims
    assert (claims["iss"], claims["sub"], claims["aud"]) == ("client-1", "client-1", "https://idp.example")
    assert (claims["iat"], claims["exp"]) == (1_000_000, 1_000_060)


@pytest.mark.parametrize(
    "key, advertised, expected",
    [
        ("rsa", None, "RS256"),
        ("rsa", ("RS256", "PS256"), "RS256"),
        ("rsa", ("ES256", "PS256"), "PS256"),
        ("ec", None, "ES256"),
        ("ec", ("RS256", "ES256"), "ES256"),
    ],
)
def test_the_algorithm_is_the_first_advertised_that_the_key_can_make(key, advertised, expected):
    keys = ClientKeys((pem_of(rsa_key() if key == "rsa" else ec_key()),))
    assert keys.algorithm_for(advertised) == expected


def test_no_advertised_algorithm_the_key_can_make_is_refused():
    keys = ClientKeys((pem_of(ec_key()),))
    with pytest.raises(ProviderMisconfigured, match="can make only ES256"):
        keys.algorithm_for(("RS256", "HS256"))


def test_published_keys_have_no_private_part():
    keys = ClientKeys((pem_of(rsa_key()), pem_of(ec_key())))
    published = keys.public_jwks()
    assert [k["kty"] for k in published] == ["RSA", "EC"]
    assert all(not {"d", "p", "q", "dp", "dq", "qi"} & set(k) and k["use"] == "sig" and k["kid"] for k in published)
