"""What the token endpoint issues, how clients authenticate, and the userinfo endpoint."""

import base64
import time
from urllib.parse import quote_plus

import pytest
import requests
from authlib.oidc.core.util import create_half_hash
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.devstack.flows import DISCOVERY, log_in, token_request, userinfo
from tests.devstack.server import CLIENT_ID, CLIENT_SECRET, running_devstack


@pytest.fixture(scope="module")
def keys(metadata):
    return KeySet.import_key_set(requests.get(metadata["jwks_uri"], timeout=5).json())


def decode(token, keys):
    return jwt.decode(token, keys, algorithms=["RS256"])


def test_id_token(browser, metadata, keys):
    token = log_in(browser, metadata, "alice.smith")
    id_token = decode(token["id_token"], keys)
    assert id_token.header["alg"] == "RS256"
    assert id_token.header["kid"] == next(iter(keys)).kid
    claims = id_token.claims
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": metadata["issuer"]},
        aud={"essential": True, "value": CLIENT_ID},
        sub={"essential": True, "value": "alice.smith"},
        exp={"essential": True},
        iat={"essential": True},
        nonce={"essential": True, "value": token["nonce"]},
    ).validate(claims)
    now = time.time()
    assert claims["iat"] <= now + 1 and 0 < claims["exp"] - claims["iat"] <= 300
    assert abs(claims["auth_time"] - now) < 10
    assert claims["sid"]
    assert claims["at_hash"] == create_half_hash(token["access_token"], "RS256").decode()
    assert claims["name"] == "Alice.Smith"
    assert claims["email"] == "alice.smith@example.org" and claims["email_verified"] is True
    assert claims["groups"] == ["staff"]


def test_admin_names_are_in_the_admins_group(browser, metadata, keys):
    claims = decode(log_in(browser, metadata, "admin-ann")["id_token"], keys).claims
    assert claims["groups"] == ["staff", "admins"]


def test_access_token_is_a_jwt_for_the_demo_api(devstack, browser, metadata, keys):
    token = log_in(browser, metadata, "bob")
    access = decode(token["access_token"], keys)
    id_claims = decode(token["id_token"], keys).claims
    assert access.header["typ"] == "at+jwt"
    claims = access.claims
    assert claims["iss"] == metadata["issuer"]
    assert claims["aud"] == devstack + "/_dev/api"
    assert claims["sub"] == "bob"
    assert claims["client_id"] == CLIENT_ID
    assert claims["scope"] == "openid profile email offline_access"
    assert claims["sid"] == id_claims["sid"]
    assert claims["jti"] and claims["iat"] <= time.time() + 1
    assert claims["exp"] - claims["iat"] == token["expires_in"] == 300


def test_no_refresh_token_without_offline_access(browser, metadata):
    token = log_in(browser, metadata, "carol", scope="openid profile")
    assert "refresh_token" not in token
    assert {"access_token", "id_token"} <= set(token)


def test_scope_decides_the_claims(browser, metadata, keys):
    token = log_in(browser, metadata, "dave", scope="openid")
    claims = decode(token["id_token"], keys).claims
    assert claims["sub"] == "dave"
    assert not {"name", "email", "groups"} & set(claims)


def test_userinfo(browser, metadata):
    token = log_in(browser, metadata, "erin")
    response = userinfo(metadata, token["access_token"])
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.json() == {
        "sub": "erin",
        "name": "Erin",
        "email": "erin@example.org",
        "email_verified": True,
        "groups": ["staff"],
    }


def test_userinfo_refuses_bad_tokens(metadata):
    missing = requests.get(metadata["userinfo_endpoint"], timeout=5)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="devstack"'
    unknown = userinfo(metadata, "not-a-token")
    assert unknown.status_code == 401
    assert 'error="invalid_token"' in unknown.headers["WWW-Authenticate"]


def test_client_secret_post(browser, metadata):
    token = log_in(browser, metadata, "frank", token_endpoint_auth_method="client_secret_post")
    assert {"access_token", "id_token", "refresh_token"} <= set(token)


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_wrong_client_secret_is_invalid_client(metadata, browser, method):
    token = log_in(browser, metadata, "grace")
    data = {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]}
    if method == "client_secret_basic":
        response = token_request(metadata, data, auth=(CLIENT_ID, "wrong"))
    else:
        response = token_request(metadata, {**data, "client_id": CLIENT_ID, "client_secret": "wrong"}, auth=None)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["WWW-Authenticate"].startswith("Basic ")


def test_basic_credentials_are_read_form_urlencoded_at_every_endpoint():
    """RFC 6749 section 2.3.1: the client id and secret are form-urlencoded, then base64, so a space
    comes as '+' (as myapp sends it). Authlib's own reading took that '+' for a plus: a secret with a
    space or a '+' was refused at the token and revocation endpoints, and taken at /par (black-box
    review h59)."""
    secret = "a b+c:d%/\u00e9"
    with running_devstack(**{"devstack.idp.client_secret": secret}) as base:
        metadata = requests.get(base + DISCOVERY, timeout=5).json()
        encoded = f"{quote_plus(CLIENT_ID)}:{quote_plus(secret)}".encode()
        headers = {"Authorization": "Basic " + base64.b64encode(encoded).decode()}
        refreshed = requests.post(
            metadata["token_endpoint"], data={"grant_type": "refresh_token", "refresh_token": "x"}, headers=headers,
            timeout=5,
        )
        assert refreshed.json()["error"] == "invalid_grant"  # the client was taken; the token was not
        revoked = requests.post(metadata["revocation_endpoint"], data={"token": "x"}, headers=headers, timeout=5)
        assert revoked.status_code == 200
        wrong = requests.post(
            metadata["revocation_endpoint"], data={"token": "x"}, auth=(CLIENT_ID, secret.replace(" ", "+")), timeout=5
        )
        assert wrong.status_code == 401


def test_no_client_authentication_is_invalid_client(metadata):
    data = {"grant_type": "refresh_token", "refresh_token": "x", "client_id": CLIENT_ID}
    response = token_request(metadata, data, auth=None)
    assert response.json()["error"] == "invalid_client"


def test_unsupported_grant_type(metadata):
    response = token_request(metadata, {"grant_type": "password", "username": "a", "password": "b"})
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


def test_token_endpoint_wants_post(metadata):
    response = requests.get(metadata["token_endpoint"], auth=(CLIENT_ID, CLIENT_SECRET), timeout=5)
    assert response.status_code == 405
