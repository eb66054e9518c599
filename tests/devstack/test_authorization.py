"""The authorization endpoint and the code exchange: PKCE, redirect URIs, single-use codes, RFC 9207."""

import requests
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from tests.devstack.flows import (
    authorization_request,
    oauth_client,
    page_form,
    query_of,
    sign_in,
    submit_form,
    token_request,
    userinfo,
)
from tests.devstack.server import CLIENT_ID, REDIRECT_URI


def exchange(metadata, callback, code_verifier, **extra):
    data = {
        "grant_type": "authorization_code",
        "code": query_of(callback)["code"],
        "redirect_uri": REDIRECT_URI,
        **({"code_verifier": code_verifier} if code_verifier is not None else {}),
        **extra,
    }
    return token_request(metadata, data)


def start(metadata, **params):
    with oauth_client() as client:
        return authorization_request(client, metadata, **params)


def test_code_flow_with_pkce(browser, metadata):
    request = start(metadata)
    callback = sign_in(browser, request.url, "alice")
    assert callback.startswith(REDIRECT_URI + "?")
    query = query_of(callback)
    assert query["state"] == request.state
    assert query["iss"] == metadata["issuer"]

    response = exchange(metadata, callback, request.code_verifier)
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    token = response.json()
    assert token["token_type"] == "Bearer"
    assert token["scope"] == "openid profile email offline_access"
    assert token["expires_in"] > 0
    assert {"access_token", "id_token", "refresh_token"} <= set(token)


def test_signed_in_browser_gets_a_code_without_the_form(browser, metadata):
    sign_in(browser, start(metadata).url, "bob")
    response = browser.get(start(metadata).url, allow_redirects=False)
    assert response.status_code == 302
    assert "code" in query_of(response.headers["Location"])


def test_prompt_login_shows_the_form_again(browser, metadata):
    sign_in(browser, start(metadata).url, "carol")
    page = browser.get(start(metadata, prompt="login").url, allow_redirects=False)
    assert page.status_code == 200
    assert dict(page_form(page.text)[1])["name"] == "carol"


def test_prompt_none_without_session_is_login_required(browser, metadata):
    request = start(metadata, prompt="none")
    response = browser.get(request.url, allow_redirects=False)
    assert response.status_code == 302
    query = query_of(response.headers["Location"])
    assert query["error"] == "login_required"
    assert query["state"] == request.state
    assert query["iss"] == metadata["issuer"]


def test_sign_in_page(browser, metadata):
    page = browser.get(start(metadata).url, allow_redirects=False)
    assert page.status_code == 200
    assert "development" in page.text.lower() and "never for production" in page.text
    assert "<script" not in page.text and "style=" not in page.text and "<style" not in page.text
    csp = page.headers["Content-Security-Policy"]
    assert "style-src 'self'" in csp and "frame-ancestors 'none'" in csp and "form-action 'self'" in csp
    assert page.headers["Cache-Control"] == "no-store"
    csrf_cookie = page.headers["Set-Cookie"]
    assert "Path=/_dev/idp" in csrf_cookie and "HttpOnly" in csrf_cookie and "SameSite=Lax" in csrf_cookie
    stylesheet = requests.get(metadata["issuer"] + "/static/devstack.css", timeout=5)
    assert stylesheet.status_code == 200 and stylesheet.headers["Content-Type"].startswith("text/css")


def test_session_cookie_attributes(browser, metadata):
    page = browser.get(start(metadata).url, allow_redirects=False)
    response = submit_form(browser, page, name="dave")
    assert response.status_code == 302
    cookie = next(c for c in response.raw.headers.getlist("Set-Cookie") if c.startswith("devstack_idp_session="))
    assert "Path=/_dev/idp" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_invalid_user_name_shows_the_form_with_an_error(browser, metadata):
    page = browser.get(start(metadata).url, allow_redirects=False)
    for bad in ("", "has space", "x" * 65, "<script>"):
        response = submit_form(browser, page, name=bad)
        assert response.status_code == 400
        assert "1 to 64 letters" in response.text or "Enter a user name" in response.text
        assert "<script>" not in response.text


def test_sign_in_form_needs_its_csrf_token(browser, metadata):
    page = browser.get(start(metadata).url, allow_redirects=False)
    response = submit_form(browser, page, name="erin", csrf_token="x" * 43)
    assert response.status_code == 400
    assert "This form has expired" in response.text
    browser.cookies.clear()
    response = submit_form(browser, page, name="erin")
    assert response.status_code == 400


def test_pkce_challenge_is_required(browser, metadata):
    with oauth_client(code_challenge_method=None) as client:
        url, state = client.create_authorization_url(metadata["authorization_endpoint"], nonce="n")
    response = browser.get(url, allow_redirects=False)
    assert response.status_code == 302
    query = query_of(response.headers["Location"])
    assert query["error"] == "invalid_request"
    assert "PKCE" in query["error_description"]
    assert query["state"] == state and query["iss"] == metadata["issuer"]


def test_plain_pkce_is_refused(browser, metadata):
    with oauth_client(code_challenge_method=None) as client:
        url, _ = client.create_authorization_url(
            metadata["authorization_endpoint"], code_challenge="a" * 43, code_challenge_method="plain"
        )
    query = query_of(browser.get(url, allow_redirects=False).headers["Location"])
    assert query["error"] == "invalid_request"
    assert "S256" in query["error_description"]


def test_missing_code_verifier_is_invalid_grant(browser, metadata):
    request = start(metadata)
    response = exchange(metadata, sign_in(browser, request.url, "frank"), None)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_wrong_code_verifier_is_invalid_grant(browser, metadata):
    request = start(metadata)
    callback = sign_in(browser, request.url, "grace")
    response = exchange(metadata, callback, "w" * 50)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    # The code was spent by the failed attempt.
    assert exchange(metadata, callback, request.code_verifier).json()["error"] == "invalid_grant"


def test_unregistered_redirect_uri_is_refused_without_redirecting(browser, metadata):
    with oauth_client(redirect_uri="https://evil.example.test/callback") as client:
        url, _ = client.create_authorization_url(
            metadata["authorization_endpoint"], code_verifier="v" * 50, nonce="n"
        )
    response = browser.get(url, allow_redirects=False)
    assert response.status_code == 400
    assert "Location" not in response.headers
    assert "redirect" in response.text.lower()


def test_unknown_client_is_refused_without_redirecting(browser, metadata):
    with oauth_client() as client:
        client.client_id = "someone-else"
        url, _ = client.create_authorization_url(metadata["authorization_endpoint"], code_verifier="v" * 50)
    response = browser.get(url, allow_redirects=False)
    assert response.status_code == 400
    assert "Location" not in response.headers


def test_unsupported_response_type_is_redirected_with_iss(browser, metadata):
    challenge = create_s256_code_challenge("v" * 50)
    response = browser.get(
        metadata["authorization_endpoint"],
        params={
            "response_type": "token",
            "client_id": CLIENT_ID,
            "redirect_uri": REDIRECT_URI,
            "scope": "openid",
            "state": "s1",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
        allow_redirects=False,
    )
    query = query_of(response.headers["Location"])
    assert query["error"] == "unsupported_response_type"
    assert query["state"] == "s1" and query["iss"] == metadata["issuer"]


def test_redirect_uri_must_match_at_the_token_endpoint(browser, metadata):
    request = start(metadata)
    callback = sign_in(browser, request.url, "heidi")
    response = exchange(metadata, callback, request.code_verifier, redirect_uri="https://app.example.test/other")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_code_is_single_use_and_a_replay_revokes_its_tokens(browser, metadata):
    request = start(metadata)
    callback = sign_in(browser, request.url, "ivan")
    first = exchange(metadata, callback, request.code_verifier)
    assert first.status_code == 200
    assert userinfo(metadata, first.json()["access_token"]).status_code == 200

    replay = exchange(metadata, callback, request.code_verifier)
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    assert userinfo(metadata, first.json()["access_token"]).status_code == 401


def test_authorization_by_post(browser, metadata):
    request = start(metadata)
    base, _, query = request.url.partition("?")
    page = browser.post(base, data=query_of(request.url), allow_redirects=False)
    assert page.status_code == 200
    response = submit_form(browser, page, name="judy")
    assert query_of(response.headers["Location"])["state"] == request.state


def test_request_objects_are_not_supported(browser, metadata):
    request = start(metadata, request="eyJhbGciOiJub25lIn0.e30.")
    query = query_of(browser.get(request.url, allow_redirects=False).headers["Location"])
    assert query["error"] == "request_not_supported"


def test_cancel_returns_access_denied_to_the_client(browser, metadata):
    request = start(metadata)
    page = browser.get(request.url, allow_redirects=False)
    response = submit_form(browser, page, action="cancel")
    assert response.status_code == 302
    query = query_of(response.headers["Location"])
    assert query["error"] == "access_denied"
    assert query["state"] == request.state and query["iss"] == metadata["issuer"]
    assert "devstack_idp_session" not in response.headers.get("Set-Cookie", "")
