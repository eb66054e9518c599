"""RP-initiated logout and back-channel logout tokens."""

import time

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from tests.devstack.flows import authorization_request, log_in, oauth_client, query_of, submit_form
from tests.devstack.server import CLIENT_ID, POST_LOGOUT_REDIRECT_URI, provider_key

EVENT = "http://schemas.openid.net/event/backchannel-logout"


@pytest.fixture(scope="module")
def keys(metadata):
    return KeySet.import_key_set(requests.get(metadata["jwks_uri"], timeout=5).json())


def sid_of(id_token, keys):
    return jwt.decode(id_token, keys, algorithms=["RS256"]).claims["sid"]


def logout_tokens_for(backchannel, sid, keys):
    tokens = []
    for received in backchannel.received():
        token = jwt.decode(received["form"]["logout_token"][0], keys, algorithms=["RS256"])
        if token.claims["sid"] == sid:
            assert received["content_type"] == "application/x-www-form-urlencoded"
            tokens.append(token)
    return tokens


def is_signed_in(browser, metadata):
    with oauth_client() as client:
        request = authorization_request(client, metadata)
    return browser.get(request.url, allow_redirects=False).status_code == 302


def test_rp_initiated_logout(browser, metadata, keys, backchannel, stats):
    login = log_in(browser, metadata, "alice")
    sid = sid_of(login["id_token"], keys)
    before = stats()["backchannel_logouts_sent"]

    response = browser.get(
        metadata["end_session_endpoint"],
        params={
            "id_token_hint": login["id_token"],
            "post_logout_redirect_uri": POST_LOGOUT_REDIRECT_URI,
            "state": "xyz",
        },
        allow_redirects=False,
    )
    assert response.status_code == 302
    assert response.headers["Location"] == POST_LOGOUT_REDIRECT_URI + "?state=xyz"
    assert not is_signed_in(browser, metadata)
    assert stats()["backchannel_logouts_sent"] == before + 1

    (token,) = logout_tokens_for(backchannel, sid, keys)
    assert token.header["typ"] == "logout+jwt"
    assert token.header["alg"] == "RS256" and token.header["kid"] == next(iter(keys)).kid
    claims = token.claims
    assert claims["iss"] == metadata["issuer"]
    assert claims["aud"] == CLIENT_ID
    assert claims["sub"] == "alice"
    assert claims["events"] == {EVENT: {}}
    assert claims["jti"]
    assert abs(claims["iat"] - time.time()) < 10
    assert claims["exp"] - claims["iat"] == 120
    assert "nonce" not in claims


def provider_signed(claims):
    key = provider_key()
    return jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)


def test_an_expired_id_token_hint_is_accepted(browser, metadata, keys):
    login = log_in(browser, metadata, "bob")
    claims = jwt.decode(login["id_token"], keys, algorithms=["RS256"]).claims
    expired = provider_signed({**claims, "iat": claims["iat"] - 3600, "exp": claims["iat"] - 1800})
    response = browser.get(
        metadata["end_session_endpoint"],
        params={"id_token_hint": expired, "post_logout_redirect_uri": POST_LOGOUT_REDIRECT_URI},
        allow_redirects=False,
    )
    assert response.status_code == 302
    assert not is_signed_in(browser, metadata)


def test_id_token_hint_of_another_issuer_is_refused(browser, metadata, keys):
    login = log_in(browser, metadata, "bill")
    claims = jwt.decode(login["id_token"], keys, algorithms=["RS256"]).claims
    response = browser.get(
        metadata["end_session_endpoint"],
        params={"id_token_hint": provider_signed({**claims, "iss": "https://elsewhere.example.test"})},
        allow_redirects=False,
    )
    assert response.status_code == 400
    assert "not issued by this provider" in response.text
    assert is_signed_in(browser, metadata)


def test_hint_alone_ends_that_session_even_from_another_browser(browser, metadata, keys, backchannel):
    login = log_in(browser, metadata, "carol")
    response = requests.get(
        metadata["end_session_endpoint"], params={"id_token_hint": login["id_token"]}, allow_redirects=False, timeout=10
    )
    assert response.status_code == 200
    assert "signed out" in response.text
    assert not is_signed_in(browser, metadata)
    assert len(logout_tokens_for(backchannel, sid_of(login["id_token"], keys), keys)) == 1


def test_unregistered_post_logout_redirect_uri_is_refused(browser, metadata):
    login = log_in(browser, metadata, "dave")
    response = browser.get(
        metadata["end_session_endpoint"],
        params={"id_token_hint": login["id_token"], "post_logout_redirect_uri": "https://evil.example.test/"},
        allow_redirects=False,
    )
    assert response.status_code == 400
    assert "Location" not in response.headers
    assert "not registered" in response.text
    assert is_signed_in(browser, metadata)


def test_id_token_hint_from_someone_else_is_refused(browser, metadata):
    log_in(browser, metadata, "erin")
    forger = RSAKey.generate_key(2048, parameters={"kid": "forged"}, private=True)
    now = int(time.time())
    claims = {"iss": metadata["issuer"], "aud": CLIENT_ID, "sub": "erin", "iat": now, "exp": now + 60}
    forged = jwt.encode({"alg": "RS256", "kid": "forged"}, claims, forger)
    response = browser.get(
        metadata["end_session_endpoint"],
        params={"id_token_hint": forged, "post_logout_redirect_uri": POST_LOGOUT_REDIRECT_URI},
        allow_redirects=False,
    )
    assert response.status_code == 400
    assert "Location" not in response.headers
    assert is_signed_in(browser, metadata)


def test_without_a_hint_the_user_confirms_and_no_redirect_happens(browser, metadata):
    log_in(browser, metadata, "frank")
    page = browser.get(
        metadata["end_session_endpoint"],
        params={"client_id": CLIENT_ID, "post_logout_redirect_uri": POST_LOGOUT_REDIRECT_URI, "state": "s2"},
        allow_redirects=False,
    )
    assert page.status_code == 200
    assert "Sign out?" in page.text
    assert is_signed_in(browser, metadata)

    response = submit_form(browser, page)
    assert response.status_code == 200
    assert not is_signed_in(browser, metadata)
    assert f'href="{POST_LOGOUT_REDIRECT_URI}?state=s2"' in response.text


def test_confirmation_needs_the_csrf_token(browser, metadata):
    log_in(browser, metadata, "grace")
    page = browser.get(metadata["end_session_endpoint"], allow_redirects=False)
    response = submit_form(browser, page, csrf_token="x" * 43)
    assert "Sign out?" in response.text
    assert is_signed_in(browser, metadata)


def test_landing_page_sign_out_button(browser, metadata, keys, backchannel):
    login = log_in(browser, metadata, "admin-heidi")
    page = browser.get(metadata["issuer"] + "/", allow_redirects=False)
    assert page.status_code == 200
    assert "never point a production deployment at it" in page.text.lower()
    assert "Admin-Heidi" in page.text and "admins" in page.text
    response = submit_form(browser, page)
    assert response.status_code == 200
    assert "signed out" in response.text
    assert not is_signed_in(browser, metadata)
    assert "devstack_idp_session=" in response.headers["Set-Cookie"]
    assert len(logout_tokens_for(backchannel, sid_of(login["id_token"], keys), keys)) == 1
    assert "Nobody is signed in" in browser.get(metadata["issuer"] + "/").text


def test_signing_in_as_someone_else_ends_the_previous_session(browser, metadata, keys, backchannel):
    first = log_in(browser, metadata, "ivan")
    with oauth_client() as client:
        request = authorization_request(client, metadata, prompt="login")
    page = browser.get(request.url, allow_redirects=False)
    submit_form(browser, page, name="judy")
    assert len(logout_tokens_for(backchannel, sid_of(first["id_token"], keys), keys)) == 1


def test_same_user_signing_in_again_keeps_the_session(browser, metadata, keys):
    first = log_in(browser, metadata, "kim")
    with oauth_client() as client:
        request = authorization_request(client, metadata, prompt="login")
    callback = submit_form(browser, browser.get(request.url, allow_redirects=False), name="kim")
    assert "code" in query_of(callback.headers["Location"])
    second = log_in(browser, metadata, "kim")
    assert sid_of(second["id_token"], keys) == sid_of(first["id_token"], keys)


def test_failed_backchannel_delivery_is_counted_not_shown(browser, metadata, backchannel, stats):
    login = log_in(browser, metadata, "leo")
    before = stats()
    backchannel.status = "500 Internal Server Error"
    try:
        response = browser.get(
            metadata["end_session_endpoint"],
            params={"id_token_hint": login["id_token"], "post_logout_redirect_uri": POST_LOGOUT_REDIRECT_URI},
            allow_redirects=False,
        )
    finally:
        backchannel.status = "200 OK"
    assert response.status_code == 302
    after = stats()
    assert after["backchannel_logout_failures"] == before["backchannel_logout_failures"] + 1
    assert after["backchannel_logouts_sent"] == before["backchannel_logouts_sent"]
