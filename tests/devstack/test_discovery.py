import requests
from joserfc.jwk import KeySet

from tests.devstack.flows import DISCOVERY


def test_metadata(devstack, metadata):
    issuer = devstack + "/_dev/idp"
    assert metadata["issuer"] == issuer
    assert metadata["authorization_endpoint"] == issuer + "/authorize"
    assert metadata["token_endpoint"] == issuer + "/token"
    assert metadata["userinfo_endpoint"] == issuer + "/userinfo"
    assert metadata["jwks_uri"] == issuer + "/jwks"
    assert metadata["revocation_endpoint"] == issuer + "/revoke"
    assert metadata["end_session_endpoint"] == issuer + "/logout"
    assert metadata["response_types_supported"] == ["code"]
    assert metadata["subject_types_supported"] == ["public"]
    assert metadata["id_token_signing_alg_values_supported"] == ["RS256"]
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["token_endpoint_auth_methods_supported"] == ["client_secret_basic", "client_secret_post", "private_key_jwt"]
    assert set(metadata["grant_types_supported"]) == {"authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:token-exchange"}
    assert {"openid", "profile", "email", "offline_access"} <= set(metadata["scopes_supported"])
    assert {"sub", "name", "email", "email_verified", "groups", "sid"} <= set(metadata["claims_supported"])
    assert metadata["backchannel_logout_supported"] is True
    assert metadata["backchannel_logout_session_supported"] is True
    assert metadata["authorization_response_iss_parameter_supported"] is True
    # Omitted, OpenID Connect Discovery would default this to true.
    assert metadata["request_uri_parameter_supported"] is False


def test_discovery_is_json_and_not_cached(devstack):
    response = requests.get(devstack + DISCOVERY, timeout=5)
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"


def test_jwks_publishes_one_public_rs256_key_with_kid(metadata):
    jwks = requests.get(metadata["jwks_uri"], timeout=5).json()
    assert len(jwks["keys"]) == 1
    (key,) = jwks["keys"]
    assert key["kty"] == "RSA" and key["alg"] == "RS256" and key["use"] == "sig" and key["kid"]
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)
    assert [k.kid for k in KeySet.import_key_set(jwks)] == [key["kid"]]


def test_wrong_method_is_405(metadata):
    response = requests.post(metadata["jwks_uri"], timeout=5)
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"
