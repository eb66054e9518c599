"""The development provider's enterprise features (issue 12): private_key_jwt client
authentication, pushed authorization requests, acr_values/max_age with a second-factor step, and
the demo API's RFC 9470 challenge, over real HTTP."""

import base64
import json
import secrets
import time
from urllib.parse import urlencode, urljoin

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import RSAKey

from myapp.devstack import views as devstack_views
from tests.devstack.flows import oauth_client, page_form, query_of, submit_form
from tests.devstack.server import CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, running_devstack
from tests.e2e.product import jwt_claims
from tests.support.keys import pem_of, rsa_key

MFA = "urn:myapp:mfa"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture(scope="module")
def client_key(tmp_path_factory):
    key = rsa_key()
    path = tmp_path_factory.mktemp("client") / "client.pem"
    path.write_text(pem_of(key))
    return path, RSAKey.import_key(pem_of(key))


@pytest.fixture(scope="module")
def stack(client_key):
    with running_devstack(**{"devstack.idp.client_keys": str(client_key[0])}) as base:
        yield base


def metadata(base):
    return requests.get(base + "/_dev/idp/.well-known/openid-configuration", timeout=5).json()


def assertion(key, audience, **overrides):
    now = int(time.time())
    claims = {"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": audience, "jti": secrets.token_urlsafe(16), "iat": now, "exp": now + 60}
    claims.update(overrides)
    key.ensure_kid()
    return jwt.encode({"alg": "RS256", "kid": key.kid}, {k: v for k, v in claims.items() if v is not None}, key)


def code_flow(base, *, params=(), name="alice", otp=None):
    """Authorization (plain or PAR), the sign-in page, and the code; returns (callback query, verifier)."""
    m = metadata(base)
    with oauth_client() as client:
        verifier = secrets.token_urlsafe(48)
        url, state = client.create_authorization_url(m["authorization_endpoint"], code_verifier=verifier, nonce=secrets.token_urlsafe(8), **dict(params))
    browser = requests.Session()
    page = browser.get(url, allow_redirects=False)
    if page.status_code == 200:
        values = {"name": name, **({"otp": otp} if otp is not None else {})}
        page = submit_form(browser, page, **values)
    return page, verifier, browser


def exchange(base, code, verifier, **auth):
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "code_verifier": verifier, **auth}
    return requests.post(metadata(base)["token_endpoint"], data=data, timeout=5)


def test_metadata_advertises_par_acr_and_key_authentication(stack):
    m = metadata(stack)
    assert m["pushed_authorization_request_endpoint"] == stack + "/_dev/idp/par"
    assert m["require_pushed_authorization_requests"] is False
    assert "private_key_jwt" in m["token_endpoint_auth_methods_supported"]
    assert m["acr_values_supported"] == ["urn:myapp:pwd", MFA]


def test_private_key_jwt_authenticates_the_client(stack, client_key):
    page, verifier, _ = code_flow(stack)
    code = query_of(page.headers["Location"])["code"]
    token = exchange(stack, code, verifier, client_id=CLIENT_ID, client_assertion_type=ASSERTION_TYPE,
                     client_assertion=assertion(client_key[1], stack + "/_dev/idp"))
    assert token.status_code == 200, token.text


@pytest.mark.parametrize(
    "overrides, audience",
    [
        ({"exp": int(time.time()) - 10}, None),
        ({"exp": float("nan")}, None),  # json reads NaN, and no comparison with it is true
        ({"iss": "someone-else"}, None),
        ({}, "https://elsewhere.example"),
        ({"jti": None}, None),
        # helper-83: not valid for an hour yet, or issued an hour from now, was taken
        ({"nbf": int(time.time()) + 3600}, None),
        ({"iat": int(time.time()) + 3600}, None),
        ({"nbf": "soon"}, None),
    ],
)
def test_bad_assertions_are_refused(stack, client_key, overrides, audience):
    page, verifier, _ = code_flow(stack)
    code = query_of(page.headers["Location"])["code"]
    token = exchange(stack, code, verifier, client_id=CLIENT_ID, client_assertion_type=ASSERTION_TYPE,
                     client_assertion=assertion(client_key[1], audience or stack + "/_dev/idp", **overrides))
    assert token.status_code in (400, 401) and token.json()["error"] == "invalid_client"


@pytest.mark.parametrize("header", [
    [1], 1, "x", None,
    # A "crit" that is not a list of names: joserfc's TypeError was a 500 all the same (helper-88).
    {"alg": "RS256", "crit": 1}, {"alg": "RS256", "crit": None}, {"alg": "RS256", "crit": [1]},
    {"alg": "RS256", "crit": [["exp"]]},
])
def test_an_assertion_whose_header_is_malformed_is_refused_not_a_500(stack, client_key, header):
    """Its header was read with .get(): a JSON array, number, string or null there was a 500 at the
    token and pushed authorization request endpoints (helper-83), and so was an object whose "crit"
    is not a list of names (helper-88)."""
    encoded = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    signed = assertion(client_key[1], stack + "/_dev/idp")
    forged = encoded + signed[signed.index("."):]
    page, verifier, _ = code_flow(stack)
    code = query_of(page.headers["Location"])["code"]
    token = exchange(stack, code, verifier, client_id=CLIENT_ID, client_assertion_type=ASSERTION_TYPE, client_assertion=forged)
    assert token.status_code == 401 and token.json()["error"] == "invalid_client"
    pushed = requests.post(metadata(stack)["pushed_authorization_request_endpoint"], timeout=5, data={
        "client_id": CLIENT_ID, "client_assertion_type": ASSERTION_TYPE, "client_assertion": forged,
        "response_type": "code", "redirect_uri": REDIRECT_URI,
    })
    assert pushed.status_code == 401 and pushed.json()["error"] == "invalid_client"


def test_a_replayed_assertion_is_refused(stack, client_key):
    signed = assertion(client_key[1], stack + "/_dev/idp/token")
    for expected in (200, 401):
        page, verifier, _ = code_flow(stack)
        code = query_of(page.headers["Location"])["code"]
        answer = exchange(stack, code, verifier, client_id=CLIENT_ID, client_assertion_type=ASSERTION_TYPE, client_assertion=signed)
        assert answer.status_code == expected


def pushed_sign_in_page(base):
    """A request pushed to ``base`` and its sign-in page: (browser, page, state, the short
    authorization URL that names the pushed request)."""
    m = metadata(base)
    with oauth_client() as client:
        url, state = client.create_authorization_url(
            m["authorization_endpoint"], code_verifier=secrets.token_urlsafe(48), nonce=secrets.token_urlsafe(8)
        )
    pushed = requests.post(m["pushed_authorization_request_endpoint"], data=query_of(url), auth=(CLIENT_ID, CLIENT_SECRET),
                           timeout=5)
    assert pushed.status_code == 201, pushed.text
    short = m["authorization_endpoint"] + "?" + urlencode({"client_id": CLIENT_ID, "request_uri": pushed.json()["request_uri"]})
    browser = requests.Session()
    page = browser.get(short, allow_redirects=False)
    assert page.status_code == 200, page.text
    return browser, page, state, short


def test_a_pushed_request_is_used_once(stack):
    browser, page, state, short = pushed_sign_in_page(stack)
    _, fields = page_form(page.text)
    assert dict(fields)["state"] == state and "client_secret" not in dict(fields)
    response = submit_form(browser, page, name="alice")
    assert query_of(response.headers["Location"])["state"] == state
    again = requests.get(short, allow_redirects=False, timeout=5)
    assert again.status_code == 400 and "invalid_request_uri" in again.text


def test_par_refuses_an_unauthenticated_client_and_foreign_redirects(stack):
    m = metadata(stack)
    params = {"client_id": CLIENT_ID, "response_type": "code", "redirect_uri": REDIRECT_URI, "scope": "openid"}
    assert requests.post(m["pushed_authorization_request_endpoint"], data=params, timeout=5).status_code == 401
    bad = {**params, "redirect_uri": "https://evil.example/cb"}
    answer = requests.post(m["pushed_authorization_request_endpoint"], data=bad, auth=(CLIENT_ID, CLIENT_SECRET), timeout=5)
    assert answer.status_code == 400


def test_a_provider_that_requires_par_refuses_plain_requests():
    with running_devstack(**{"devstack.idp.require_par": "true"}) as base:
        assert metadata(base)["require_pushed_authorization_requests"] is True
        page, _, _ = code_flow(base)
        assert page.status_code == 400 and "requires pushed authorization requests" in page.text


def test_a_provider_that_requires_par_takes_from_its_sign_in_form_only_the_request_pushed():
    """The sign-in form carries the authorization request back: without the seal its page put on a
    pushed request, the form was a way to start a request that was never pushed."""
    with running_devstack(**{"devstack.idp.require_par": "true"}) as base:
        browser, page, state, _ = pushed_sign_in_page(base)
        action, fields = page_form(page.text)
        assert "pushed_seal" in dict(fields)
        unsealed = [(k, v) for k, v in fields if k not in ("pushed_seal", "name")] + [("name", "alice")]
        forged = [(k, "openid" if k == "scope" else v) for k, v in fields if k != "name"] + [("name", "alice")]
        for data in (unsealed, forged):
            refused = browser.post(urljoin(page.url, action), data=data, allow_redirects=False, timeout=5)
            assert refused.status_code == 400 and "requires pushed authorization requests" in refused.text
        # The request as pushed still signs in, after a wrong name too (its page sealed it again).
        again = submit_form(browser, page, name="not a name!")
        assert again.status_code == 400 and "pushed_seal" in dict(page_form(again.text)[1])
        signed_in = submit_form(browser, again, name="alice")
        assert signed_in.status_code == 302 and query_of(signed_in.headers["Location"])["state"] == state
        # Once answered to the client, the sealed form is spent: the same post, from another browser too, is refused.
        for replay in (browser, requests.Session()):
            again = replay.post(urljoin(page.url, action), data=[(k, v) for k, v in fields if k != "name"] + [("name", "mallory")],
                                allow_redirects=False, timeout=5)
            assert again.status_code == 400 and "requires pushed authorization requests" in again.text
        # A file among the fields (multipart) is no request a page carried: refused, not a 500.
        browser, page, _, _ = pushed_sign_in_page(base)
        action, fields = page_form(page.text)
        with_file = browser.post(urljoin(page.url, action), data=fields, files={"scope": ("scope.txt", b"openid")},
                                 allow_redirects=False, timeout=5)
        assert with_file.status_code == 400 and "requires pushed authorization requests" in with_file.text
    # Where pushed requests are not required, the form carries no seal and asks for none.
    with running_devstack() as base:
        _, page, _, _ = pushed_sign_in_page(base)
        assert "pushed_seal" not in dict(page_form(page.text)[1])


def test_a_sealed_sign_in_form_expires(monkeypatch):
    """A pushed request is good for a minute; the sign-in page it opens for SIGN_IN_LIFETIME, not for ever."""
    monkeypatch.setattr(devstack_views, "SIGN_IN_LIFETIME", 0)  # sealed until the second it was made
    with running_devstack(**{"devstack.idp.require_par": "true"}) as base:
        browser, page, _, _ = pushed_sign_in_page(base)
        time.sleep(1.1)
        late = submit_form(browser, page, name="alice")
        assert late.status_code == 400 and "requires pushed authorization requests" in late.text


def test_acr_values_ask_for_the_second_factor(stack):
    page, verifier, browser = code_flow(stack, params={"acr_values": MFA})
    assert page.status_code == 400 and "That code is not right" in page.text  # no code typed
    page = submit_form(browser, page, name="alice", otp="123456")
    code = query_of(page.headers["Location"])["code"]
    token = exchange(stack, code, verifier, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    claims = jwt_claims(token.json()["id_token"])
    assert (claims["acr"], claims["amr"]) == (MFA, ["pwd", "otp"]) and claims["auth_time"] >= int(time.time()) - 5
    assert jwt_claims(token.json()["access_token"])["acr"] == MFA


def test_a_plain_sign_in_has_the_password_acr_and_is_asked_again_for_mfa(stack):
    page, verifier, browser = code_flow(stack)
    code = query_of(page.headers["Location"])["code"]
    claims = jwt_claims(exchange(stack, code, verifier, client_id=CLIENT_ID, client_secret=CLIENT_SECRET).json()["id_token"])
    assert (claims["acr"], claims["amr"]) == ("urn:myapp:pwd", ["pwd"])


def test_the_demo_api_challenges_a_token_without_the_second_factor(stack):
    page, verifier, _ = code_flow(stack)
    code = query_of(page.headers["Location"])["code"]
    weak = exchange(stack, code, verifier, client_id=CLIENT_ID, client_secret=CLIENT_SECRET).json()["access_token"]
    refused = requests.get(stack + "/_dev/api/sensitive", headers={"Authorization": "Bearer " + weak}, timeout=5)
    assert refused.status_code == 401
    assert 'error="insufficient_user_authentication"' in refused.headers["WWW-Authenticate"]
    assert f'acr_values="{MFA}"' in refused.headers["WWW-Authenticate"]
    page, verifier, browser = code_flow(stack, params={"acr_values": MFA}, otp="123456")
    code = query_of(page.headers["Location"])["code"]
    strong = exchange(stack, code, verifier, client_id=CLIENT_ID, client_secret=CLIENT_SECRET).json()["access_token"]
    assert requests.get(stack + "/_dev/api/sensitive", headers={"Authorization": "Bearer " + strong}, timeout=5).status_code == 200


def test_max_age_zero_with_prompt_login_asks_again(stack):
    page, _, browser = code_flow(stack)
    with oauth_client() as client:
        url, _ = client.create_authorization_url(metadata(stack)["authorization_endpoint"], code_verifier="v" * 48, nonce=secrets.token_urlsafe(8),
                                                 max_age="0", prompt="login")
    assert browser.get(url, allow_redirects=False).status_code == 200  # the sign-in page, not a code
