"""Driving the development provider as a browser and a client would, for tests.

The browser is a plain ``requests.Session`` that posts the sign-in form; the client is Authlib's
``OAuth2Session`` with PKCE (S256), as the BFF uses it.
"""

import secrets
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import parse_qs, urljoin, urlsplit

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session

from tests.devstack.server import CLIENT_ID, CLIENT_SECRET, REDIRECT_URI

SCOPE = "openid profile email offline_access"
DISCOVERY = "/_dev/idp/.well-known/openid-configuration"


class _FormParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.forms = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.forms.append({"action": attrs.get("action", ""), "fields": []})
        elif tag == "input" and self.forms and attrs.get("name"):
            self.forms[-1]["fields"].append((attrs["name"], attrs.get("value") or ""))


def page_form(html: str) -> tuple[str, list[tuple[str, str]]]:
    """The action and fields of the (only) form on a page."""
    parser = _FormParser()
    parser.feed(html)
    assert len(parser.forms) == 1, f"expected one form, found {len(parser.forms)}"
    return parser.forms[0]["action"], parser.forms[0]["fields"]


def submit_form(browser: requests.Session, page: requests.Response, **values) -> requests.Response:
    """Post the page's form with ``values`` filled in, as a browser would (no redirects followed)."""
    action, fields = page_form(page.text)
    data = [(name, value) for name, value in fields if name not in values] + list(values.items())
    return browser.post(urljoin(page.url, action), data=data, allow_redirects=False)


def sign_in(browser: requests.Session, authorization_url: str, name: str) -> str:
    """Go through the provider's sign-in page; returns the Location of its redirect to the client."""
    page = browser.get(authorization_url, allow_redirects=False)
    if page.status_code == 302:
        return page.headers["Location"]
    assert page.status_code == 200, page.text
    response = submit_form(browser, page, name=name)
    assert response.status_code == 302, response.text
    return response.headers["Location"]


def query_of(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


def oauth_client(**kwargs) -> OAuth2Session:
    options = {
        "scope": SCOPE,
        "redirect_uri": REDIRECT_URI,
        "code_challenge_method": "S256",
        "token_endpoint_auth_method": "client_secret_basic",
        **kwargs,
    }
    return OAuth2Session(CLIENT_ID, CLIENT_SECRET, **options)


@dataclass
class AuthorizationRequest:
    url: str
    state: str
    nonce: str
    code_verifier: str


def authorization_request(client: OAuth2Session, metadata: dict, **params) -> AuthorizationRequest:
    code_verifier = generate_token(48)
    nonce = secrets.token_urlsafe(16)
    url, state = client.create_authorization_url(
        metadata["authorization_endpoint"], code_verifier=code_verifier, nonce=nonce, **params
    )
    return AuthorizationRequest(url=url, state=state, nonce=nonce, code_verifier=code_verifier)


def log_in(browser: requests.Session, metadata: dict, name: str, **client_options) -> dict:
    """A complete code flow with PKCE for ``name``; returns the token response (plus its nonce)."""
    with oauth_client(**client_options) as client:
        request = authorization_request(client, metadata)
        callback = sign_in(browser, request.url, name)
        token = client.fetch_token(
            metadata["token_endpoint"],
            authorization_response=callback,
            code_verifier=request.code_verifier,
            state=request.state,
        )
    return {**token, "nonce": request.nonce}


def token_request(metadata: dict, data: dict, *, auth=(CLIENT_ID, CLIENT_SECRET)) -> requests.Response:
    """A raw token endpoint call (client_secret_basic unless ``auth`` is None)."""
    return requests.post(metadata["token_endpoint"], data=data, auth=auth, timeout=10)


def refresh(metadata: dict, refresh_token: str) -> requests.Response:
    return token_request(metadata, {"grant_type": "refresh_token", "refresh_token": refresh_token})


def userinfo(metadata: dict, access_token: str) -> requests.Response:
    return requests.get(metadata["userinfo_endpoint"], headers={"Authorization": f"Bearer {access_token}"}, timeout=5)
