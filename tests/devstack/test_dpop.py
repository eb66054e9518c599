"""DPoP (RFC 9449) at the development provider and the demo API, with proofs made here by joserfc
directly: every acceptance and every rejection."""

import base64
import hashlib
import json
import secrets
import time

import pytest
import requests
from joserfc import jws
from joserfc.jwk import ECKey, RSAKey

from myapp.devstack.dpop import ProofChecker, ProofRefused, ServerNonces, normalised_uri
from myapp.devstack.settings import load_devstack_settings
from myapp.settings import SettingsError
from tests.devstack.flows import DISCOVERY, authorization_request, oauth_client, query_of, sign_in
from tests.devstack.server import CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, devstack_settings, running_devstack


def ath(token: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(token.encode()).digest()).rstrip(b"=").decode()


def proof(key, method, url, *, token=None, nonce=None, header=None, claims=None, alg="ES256", sign_with=None) -> str:
    head = {"typ": "dpop+jwt", "alg": alg, "jwk": key.as_dict(private=False), **(header or {})}
    body = {"jti": secrets.token_urlsafe(16), "htm": method, "htu": url, "iat": int(time.time())}
    if token is not None:
        body["ath"] = ath(token)
    if nonce is not None:
        body["nonce"] = nonce
    body.update(claims or {})
    body = {k: v for k, v in body.items() if v is not None}
    registry = jws.JWSRegistry(algorithms=[alg])
    registry.max_header_length = 4096
    return jws.serialize_compact(head, json.dumps(body), sign_with or key, algorithms=[alg], registry=registry)


def new_key():
    return ECKey.generate_key("P-256", private=True)


class Stack:
    """One running development stack and what a test needs of it."""

    def __init__(self, base_url):
        self.base_url = base_url
        self.metadata = requests.get(base_url + DISCOVERY, timeout=5).json()
        self.token_endpoint = self.metadata["token_endpoint"]
        self.api = base_url + "/_dev/api/me"

    def code(self, name="alice", **params) -> tuple[str, str]:
        """An authorization code for ``name`` and its PKCE verifier."""
        with requests.Session() as browser, oauth_client() as client:
            request = authorization_request(client, self.metadata, **params)
            callback = sign_in(browser, request.url, name)
        return query_of(callback)["code"], request.code_verifier

    def token(self, form: dict, dpop: str | list[str] | None = None) -> requests.Response:
        headers = {}
        if dpop is not None:
            headers["DPoP"] = dpop if isinstance(dpop, str) else ", ".join(dpop)
        return requests.post(self.token_endpoint, data=form, auth=(CLIENT_ID, CLIENT_SECRET), headers=headers, timeout=10)

    def exchange_code(self, key=None, **proof_options) -> requests.Response:
        code, verifier = self.code()
        form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": REDIRECT_URI}
        url = proof_options.pop("url", self.token_endpoint)
        return self.token(form, proof(key, "POST", url, **proof_options) if key is not None else None)

    def bound_tokens(self, key) -> dict:
        response = self.exchange_code(key)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def stack(devstack):
    return Stack(devstack)


@pytest.fixture(scope="module")
def nonce_stack():
    with running_devstack(**{"devstack.idp.dpop_nonce": "true", "devstack.api.dpop_nonce": "true"}) as url:
        yield Stack(url)


def claims_of(access_token: str) -> dict:
    return json.loads(jws.extract_compact(access_token.encode()).payload)


def test_discovery_advertises_the_algorithms_it_checks(stack):
    assert stack.metadata["dpop_signing_alg_values_supported"] == ["ES256", "ES384", "PS256", "RS256"]


def test_a_code_exchange_with_a_proof_gets_tokens_bound_to_that_key(stack):
    key = new_key()
    token = stack.bound_tokens(key)
    assert token["token_type"] == "DPoP"
    assert claims_of(token["access_token"])["cnf"] == {"jkt": key.thumbprint()}
    # Refreshed with a proof: bound again. (A confidential client's refresh token is not bound,
    # RFC 9449 section 5, so a refresh without a proof gets a Bearer token.)
    refreshed = stack.token({"grant_type": "refresh_token", "refresh_token": token["refresh_token"]},
                            proof(key, "POST", stack.token_endpoint))
    assert refreshed.status_code == 200 and refreshed.json()["token_type"] == "DPoP"
    assert claims_of(refreshed.json()["access_token"])["cnf"]["jkt"] == key.thumbprint()


def test_without_a_proof_everything_is_bearer_as_before(stack):
    response = stack.exchange_code()
    assert response.json()["token_type"] == "Bearer" and "cnf" not in claims_of(response.json()["access_token"])


def test_an_rsa_key_is_accepted_too(stack):
    key = RSAKey.generate_key(2048, private=True)
    response = stack.exchange_code(key, alg="PS256")
    assert response.status_code == 200 and response.json()["token_type"] == "DPoP", response.text
    assert claims_of(response.json()["access_token"])["cnf"]["jkt"] == key.thumbprint()


@pytest.mark.parametrize(
    "why, options",
    [
        ("typ", {"header": {"typ": "JWT"}}),
        ("a private key in jwk", "private"),
        ("signed by another key", "other"),
        ("htm", {"method": "GET"}),
        ("htu", {"url": "https://elsewhere.example/token"}),
        ("iat too old", {"claims": {"iat": int(time.time()) - 3600}}),
        ("iat in the future", {"claims": {"iat": int(time.time()) + 3600}}),
        ("no jti", {"claims": {"jti": None}}),
        ("HS256", "hmac"),
        ("two proofs", "two"),
        ("garbage", "garbage"),
    ],
)
def test_every_bad_proof_is_refused_at_the_token_endpoint(stack, why, options):
    key = new_key()
    code, verifier = stack.code()
    form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": REDIRECT_URI}
    if options == "private":
        dpop = proof(key, "POST", stack.token_endpoint, header={"jwk": key.as_dict(private=True)})
    elif options == "other":
        dpop = proof(key, "POST", stack.token_endpoint, sign_with=new_key())
    elif options == "hmac":
        dpop = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkhTMjU2In0.e30.c2lnbmF0dXJl"
    elif options == "two":
        dpop = [proof(key, "POST", stack.token_endpoint), proof(key, "POST", stack.token_endpoint)]
    elif options == "garbage":
        dpop = "not a proof"
    else:
        options = dict(options)
        method, url = options.pop("method", "POST"), options.pop("url", stack.token_endpoint)
        dpop = proof(key, method, url, **options)
    response = stack.token(form, dpop)
    assert response.status_code == 400, why
    assert response.json()["error"] == "invalid_dpop_proof", why


def test_a_replayed_proof_is_refused(stack):
    key = new_key()
    dpop = proof(key, "POST", stack.token_endpoint)
    code, verifier = stack.code()
    form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": REDIRECT_URI}
    assert stack.token(form, dpop).status_code == 200
    again = stack.token({"grant_type": "refresh_token", "refresh_token": "x"}, dpop)
    assert again.status_code == 400 and again.json() == {"error": "invalid_dpop_proof",
                                                         "error_description": "the proof was used before (jti replay)"}


def test_htu_is_compared_after_normalisation(stack):
    upper = stack.token_endpoint.replace("http://127.0.0.1", "HTTP://127.0.0.1") + "?ignored=1"
    response = stack.exchange_code(new_key(), url=upper)
    assert response.status_code == 200, response.text


def test_a_code_bound_by_dpop_jkt_is_redeemed_only_with_that_keys_proof(stack):
    key, other = new_key(), new_key()
    for signer, status in ((other, 400), (key, 200)):
        code, verifier = stack.code(dpop_jkt=key.thumbprint())
        form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": REDIRECT_URI}
        response = stack.token(form, proof(signer, "POST", stack.token_endpoint))
        assert response.status_code == status, response.text
    assert response.json()["token_type"] == "DPoP"
    code, verifier = stack.code(dpop_jkt=key.thumbprint())
    form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": REDIRECT_URI}
    assert stack.token(form).json()["error"] == "invalid_grant"  # no proof at all


def test_userinfo_takes_a_bound_token_only_with_its_keys_proof(stack):
    key = new_key()
    token = stack.bound_tokens(key)["access_token"]
    endpoint = stack.metadata["userinfo_endpoint"]

    def get(scheme, dpop=None):
        headers = {"Authorization": f"{scheme} {token}", **({"DPoP": dpop} if dpop else {})}
        return requests.get(endpoint, headers=headers, timeout=5)

    assert get("DPoP", proof(key, "GET", endpoint, token=token)).json()["sub"] == "alice"
    as_bearer = get("Bearer")
    assert as_bearer.status_code == 401 and 'error="invalid_token"' in as_bearer.headers["WWW-Authenticate"]
    no_ath = get("DPoP", proof(key, "GET", endpoint))
    assert no_ath.status_code == 401 and no_ath.json()["error"] == "invalid_dpop_proof"
    assert no_ath.headers["WWW-Authenticate"].startswith('DPoP algs="ES256 ES384 PS256 RS256", error="invalid_dpop_proof"')
    other_key = get("DPoP", proof(new_key(), "GET", endpoint, token=token))
    assert other_key.status_code == 401 and other_key.json()["error"] == "invalid_token"


def test_the_demo_api_takes_bound_tokens_with_proofs_and_refuses_them_as_bearer(stack):
    key = new_key()
    token = stack.bound_tokens(key)["access_token"]

    def call(scheme, dpop=None, url=stack.api):
        headers = {"Authorization": f"{scheme} {token}", **({"DPoP": dpop} if dpop else {})}
        return requests.get(url, headers=headers, timeout=5)

    good = proof(key, "GET", stack.api, token=token)
    assert call("DPoP", good).json()["sub"] == "alice"
    replayed = call("DPoP", good)
    assert replayed.status_code == 401 and replayed.json()["error"] == "invalid_dpop_proof"
    as_bearer = call("Bearer")
    assert as_bearer.status_code == 401 and as_bearer.headers["WWW-Authenticate"].startswith("Bearer")
    assert "bound to a DPoP key" in as_bearer.json()["message"]
    wrong_ath = call("DPoP", proof(key, "GET", stack.api, token="another-token"))
    assert wrong_ath.status_code == 401 and wrong_ath.json()["error"] == "invalid_dpop_proof"
    wrong_key = call("DPoP", proof(new_key(), "GET", stack.api, token=token))
    assert wrong_key.status_code == 401 and wrong_key.json()["error"] == "invalid_token"
    wrong_path = call("DPoP", proof(key, "GET", stack.base_url + "/_dev/api/notes", token=token))
    assert wrong_path.status_code == 401 and wrong_path.json()["error"] == "invalid_dpop_proof"
    # An unbound Bearer token works as it always did.
    bearer = stack.exchange_code().json()["access_token"]
    assert requests.get(stack.api, headers={"Authorization": f"Bearer {bearer}"}, timeout=5).status_code == 200
    # ...and an unbound token with a proof is refused: it is not bound to that key.
    unbound = requests.get(stack.api, headers={"Authorization": f"DPoP {bearer}",
                                               "DPoP": proof(key, "GET", stack.api, token=bearer)}, timeout=5)
    assert unbound.status_code == 401 and unbound.json()["error"] == "invalid_token"


def test_token_exchange_binds_the_new_token_to_the_proofs_key(stack):
    key = new_key()
    subject = stack.bound_tokens(key)["access_token"]
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": subject,
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "resource": stack.base_url + "/_dev/api",
    }
    response = stack.token(form, proof(key, "POST", stack.token_endpoint))
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "DPoP"
    assert claims_of(response.json()["access_token"])["cnf"]["jkt"] == key.thumbprint()


def test_with_nonces_demanded_the_token_endpoint_and_the_api_ask_once_then_accept(nonce_stack):
    key = new_key()
    first = nonce_stack.exchange_code(key)
    assert first.status_code == 400 and first.json()["error"] == "use_dpop_nonce"
    nonce = first.headers["DPoP-Nonce"]
    response = nonce_stack.exchange_code(key, nonce=nonce)
    assert response.status_code == 200 and response.headers["DPoP-Nonce"] == nonce
    token = response.json()["access_token"]
    missing = requests.get(nonce_stack.api, headers={"Authorization": f"DPoP {token}",
                                                     "DPoP": proof(key, "GET", nonce_stack.api, token=token)}, timeout=5)
    assert missing.status_code == 401 and missing.headers["DPoP-Nonce"] == nonce
    assert missing.headers["WWW-Authenticate"].startswith('DPoP algs="ES256 ES384 PS256 RS256", error="use_dpop_nonce"')
    wrong = requests.get(nonce_stack.api, headers={
        "Authorization": f"DPoP {token}", "DPoP": proof(key, "GET", nonce_stack.api, token=token, nonce="made-up")}, timeout=5)
    assert wrong.status_code == 401 and wrong.json()["error"] == "use_dpop_nonce"
    good = requests.get(nonce_stack.api, headers={
        "Authorization": f"DPoP {token}", "DPoP": proof(key, "GET", nonce_stack.api, token=token, nonce=nonce)}, timeout=5)
    assert good.status_code == 200


def test_ignore_advertises_dpop_but_issues_bearer_tokens_and_off_neither():
    with running_devstack(**{"devstack.idp.dpop": "ignore"}) as url:
        stack = Stack(url)
        assert "dpop_signing_alg_values_supported" in stack.metadata
        response = stack.exchange_code(new_key())
        assert response.json()["token_type"] == "Bearer" and "cnf" not in claims_of(response.json()["access_token"])
    with running_devstack(**{"devstack.idp.dpop": "off"}) as url:
        stack = Stack(url)
        assert "dpop_signing_alg_values_supported" not in stack.metadata
        assert stack.exchange_code(new_key()).json()["token_type"] == "Bearer"


def test_nonces_rotate_and_the_previous_one_stays_good_for_one_lifetime():
    now = [1000.0]
    nonces = ServerNonces(lifetime=60, clock=lambda: now[0])
    first = nonces.current()
    now[0] += 61
    second = nonces.current()
    assert second != first and nonces.accepts(first) and nonces.accepts(second)
    now[0] += 61
    assert not nonces.accepts(first) and nonces.accepts(second) and not nonces.accepts(None)


def test_the_checker_alone():
    key = new_key()
    checker = ProofChecker()
    jkt = checker.check([proof(key, "GET", "http://api.test/x", token="t")], method="GET", url="http://API.test:80/x?q",
                        access_token="t")
    assert jkt == key.thumbprint()
    with pytest.raises(ProofRefused, match="exactly one"):
        checker.check([], method="GET", url="http://api.test/x")
    assert normalised_uri("HTTP://Api.Test:80/a%7eb/%2f") == "http://api.test/a~b/%2F"


BASE = "http://127.0.0.1:6543"


def test_dpop_settings_are_checked():
    settings = load_devstack_settings(devstack_settings(BASE, **{"devstack.idp.dpop_nonce": "true", "devstack.api.dpop_nonce": "yes"}))
    assert settings.idp.dpop == "on" and settings.idp.dpop_nonce and settings.api.dpop_nonce
    with pytest.raises(SettingsError, match="devstack.idp.dpop: 'sometimes' is not one of on, off, ignore"):
        load_devstack_settings(devstack_settings(BASE, **{"devstack.idp.dpop": "sometimes"}))
    with pytest.raises(SettingsError, match="devstack.api.dpop_nonce: 'maybe' is not a boolean"):
        load_devstack_settings(devstack_settings(BASE, **{"devstack.api.dpop_nonce": "maybe"}))
