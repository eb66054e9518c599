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

from myapp.devstack.dpop import ProofChecker, ProofRefused, ServerNonces, access_token_hash, normalised_uri, thumbprint
from tests.devstack.flows import DISCOVERY, authorization_request, oauth_client, query_of, sign_in
from tests.devstack.server import CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, running_devstack


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
    # Refreshed with a proof by the same key: bound again.
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


def exchange_form(stack, subject: str) -> dict:
    """An RFC 8693 exchange of ``subject`` for a token for the demo API."""
    return {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": subject,
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "resource": stack.base_url + "/_dev/api",
    }


def test_token_exchange_binds_the_new_token_to_the_proofs_key(stack):
    key = new_key()
    subject = stack.bound_tokens(key)["access_token"]
    form = exchange_form(stack, subject)
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
        # dpop_jkt on the authorization request is not known to it either: the code is not bound
        # (it was, to a thumbprint that no proof could match there, so no code could be redeemed).
        key = new_key()
        code, verifier = stack.code(dpop_jkt=key.thumbprint())
        form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": REDIRECT_URI}
        response = stack.token(form, proof(key, "POST", stack.token_endpoint))
        assert response.status_code == 200 and response.json()["token_type"] == "Bearer", response.text
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


def test_nonces_not_asked_for_in_two_lifetimes_are_all_new():
    now = [1000.0]
    nonces = ServerNonces(lifetime=60, clock=lambda: now[0])
    first = nonces.current()
    now[0] += 121
    assert not nonces.accepts(first) and nonces.current() != first


# The proof checker alone, at a fixed time.

NOW = 1_800_000_000
URL = "https://api.test/things"


def checker(**options) -> ProofChecker:
    return ProofChecker(clock=lambda: NOW, **options)


def at_now(key=None, method="GET", url=URL, **options) -> str:
    claims = {"iat": NOW, **options.pop("claims", {})}
    return proof(key or new_key(), method, url, claims=claims, **options)


def signed(header: dict, payload: str, key) -> str:
    return jws.serialize_compact(header, payload, key, algorithms=[header["alg"]])


def test_a_valid_proof_gives_its_keys_thumbprint():
    key = new_key()
    jkt = checker().check([at_now(key, token="tok")], method="GET", url=URL, access_token="tok")
    assert jkt == key.thumbprint() == thumbprint(key.as_dict(private=False))
    assert access_token_hash("tok") == ath("tok")


@pytest.mark.parametrize("alg, key", [
    ("ES256", ECKey.generate_key("P-256", private=True)),
    ("ES384", ECKey.generate_key("P-384", private=True)),
    ("PS256", RSAKey.generate_key(2048, private=True)),
    ("RS256", RSAKey.generate_key(2048, private=True)),
])
def test_every_advertised_algorithm_is_accepted(alg, key):
    assert checker().check([at_now(key, alg=alg)], method="GET", url=URL) == key.thumbprint()


def _refusals():
    key = new_key()
    rsa = RSAKey.generate_key(2048, private=True)
    public = key.as_dict(private=False)
    head = {"typ": "dpop+jwt", "alg": "ES256", "jwk": public}
    body = json.dumps({"jti": "j" * 16, "htm": "GET", "htu": URL, "iat": NOW})
    return [
        ("no header", [], "exactly one DPoP header is required"),
        ("two headers", [at_now(key), at_now(key)], "exactly one DPoP header is required"),
        ("too large", ["a" * 9000], "the proof is too large"),
        ("garbage", ["not a proof"], "the proof is not a compact JWS"),
        ("bad base64", ["a.b.c"], "the proof is not a compact JWS"),
        ("typ JWT", [at_now(key, header={"typ": "JWT"})], "typ must be dpop+jwt"),
        ("no typ", [signed({"alg": "ES256", "jwk": public}, body, key)], "typ must be dpop+jwt"),
        ("alg none", ["eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6Im5vbmUifQ.e30."], "alg 'none' is not accepted"),
        ("alg HS256", ["eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkhTMjU2In0.e30.c2lnbmF0dXJl"], "alg 'HS256' is not accepted"),
        ("no jwk", [signed({"typ": "dpop+jwt", "alg": "ES256"}, body, key)], "the jwk header must be a public key"),
        ("private EC jwk", [at_now(key, header={"jwk": key.as_dict(private=True)})], "the jwk header must be a public key"),
        ("private RSA jwk", [at_now(rsa, alg="PS256", header={"jwk": rsa.as_dict(private=True)})],
         "the jwk header must be a public key"),
        ("symmetric jwk", [signed({**head, "jwk": {"kty": "oct", "k": "c2VjcmV0"}}, body, key)],
         "the jwk header must be a public key"),
        ("OKP jwk", [signed({**head, "jwk": {"kty": "OKP", "crv": "Ed25519", "x": "AA"}}, body, key)],
         "the jwk header is not a usable EC or RSA public key"),
        ("unusable jwk", [signed({**head, "jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}}, body, key)],
         "the jwk header is not a usable EC or RSA public key"),
        ("ES384 with a P-256 key", [signed({**head, "alg": "ES384"}, body, ECKey.generate_key("P-384", private=True))],
         "the key does not match alg"),
        ("RS256 with an EC key", [signed({**head, "alg": "RS256"}, body, rsa)], "the key does not match alg"),
        ("signed by another key", [at_now(key, sign_with=new_key())], "the signature is not valid"),
        ("claims not an object", [signed(head, "[]", key)], "the claims are not a JSON object"),
        # Nested past Python's stack: RecursionError, not ValueError, was a 500 (helper-116).
        ("claims nested too deep", [signed(head, "[" * 5000, key)], "the proof is not a compact JWS"),
        ("htm", [at_now(key, method="POST")], "htm does not match the request method"),
        ("htm case", [at_now(key, method="get")], "htm does not match the request method"),
        ("htu path", [at_now(key, url=URL + "/more")], "htu does not match the request URL"),
        ("htu host", [at_now(key, url="https://other.test/things")], "htu does not match the request URL"),
        ("htu scheme", [at_now(key, url="http://api.test/things")], "htu does not match the request URL"),
        ("htu port", [at_now(key, url="https://api.test:8443/things")], "htu does not match the request URL"),
        ("no htu", [at_now(key, claims={"htu": None})], "htu does not match the request URL"),
        ("no iat", [at_now(key, claims={"iat": None})], "iat is missing"),
        ("iat a string", [at_now(key, claims={"iat": str(NOW)})], "iat is missing"),
        ("iat too old", [at_now(key, claims={"iat": NOW - 61})], "iat is too old"),
        ("iat in the future", [at_now(key, claims={"iat": NOW + 61})], "iat is in the future"),
        # json reads NaN, and no comparison with it is true: it was inside every window.
        ("iat NaN", [at_now(key, claims={"iat": float("nan")})], "iat is missing"),
        ("iat 10**400", [at_now(key, claims={"iat": 10**400})], "iat is in the future"),
        ("no jti", [at_now(key, claims={"jti": None})], "jti is missing or not 8 to 256 characters"),
        ("short jti", [at_now(key, claims={"jti": "1234567"})], "jti is missing or not 8 to 256 characters"),
    ]


REFUSALS = _refusals()


@pytest.mark.parametrize("why, headers, reason", REFUSALS, ids=[case[0] for case in REFUSALS])
def test_every_bad_proof_is_refused_with_its_own_reason(why, headers, reason):
    with pytest.raises(ProofRefused) as refused:
        checker().check(headers, method="GET", url=URL)
    assert (refused.value.error, refused.value.reason) == ("invalid_dpop_proof", reason), why


def test_iat_is_accepted_to_the_edge_of_the_window_which_is_configurable():
    for iat in (NOW - 60, NOW + 60, NOW + 0.5):
        checker().check([at_now(claims={"iat": iat})], method="GET", url=URL)
    narrow = checker(window=5)
    with pytest.raises(ProofRefused, match="iat is too old"):
        narrow.check([at_now(claims={"iat": NOW - 6})], method="GET", url=URL)
    narrow.check([at_now(claims={"iat": NOW - 5})], method="GET", url=URL)


def test_ath_is_required_and_checked_when_an_access_token_comes_with_the_proof():
    key = new_key()
    with pytest.raises(ProofRefused, match="^ath is missing$"):
        checker().check([at_now(key)], method="GET", url=URL, access_token="tok")
    with pytest.raises(ProofRefused, match="^ath does not match the access token$"):
        checker().check([at_now(key, token="another")], method="GET", url=URL, access_token="tok")
    # At the token endpoint (no access token) an ath is not looked at.
    checker().check([at_now(key, token="whatever")], method="GET", url=URL)


def test_a_jti_is_accepted_once_per_key_and_forgotten_when_the_proof_could_no_longer_be_accepted():
    now = [float(NOW)]
    replays = ProofChecker(clock=lambda: now[0])
    key = new_key()
    dpop = at_now(key, claims={"jti": "the-same-jti"})
    replays.check([dpop], method="GET", url=URL)
    with pytest.raises(ProofRefused, match=r"^the proof was used before \(jti replay\)$"):
        replays.check([dpop], method="GET", url=URL)
    # The same jti from another key is another proof.
    replays.check([at_now(claims={"jti": "the-same-jti"})], method="GET", url=URL)
    # Two windows on, its iat is too old before its jti is looked at.
    now[0] += 121
    with pytest.raises(ProofRefused, match="iat is too old"):
        replays.check([dpop], method="GET", url=URL)


def test_the_replay_cache_is_bounded_and_refuses_rather_than_forgets():
    now = [float(NOW)]
    bounded = ProofChecker(max_jtis=2, clock=lambda: now[0])
    first = at_now()
    bounded.check([first], method="GET", url=URL)
    bounded.check([at_now()], method="GET", url=URL)
    with pytest.raises(ProofRefused, match="too many proofs in the replay window"):
        bounded.check([at_now()], method="GET", url=URL)
    with pytest.raises(ProofRefused, match="jti replay"):
        bounded.check([first], method="GET", url=URL)
    now[0] += 121  # the remembered proofs expired: room again
    bounded.check([at_now(claims={"iat": now[0]})], method="GET", url=URL)


def test_nonces_when_demanded():
    now = [float(NOW)]
    nonces = ServerNonces(lifetime=60, clock=lambda: now[0])
    demanding = ProofChecker(nonces=nonces, clock=lambda: now[0])
    for claims, reason in (({}, "a nonce is required"), ({"nonce": "made-up"}, "the nonce is not a current one")):
        with pytest.raises(ProofRefused) as refused:
            demanding.check([at_now(claims=claims)], method="GET", url=URL)
        assert (refused.value.error, refused.value.reason) == ("use_dpop_nonce", reason)
    old = nonces.current()
    demanding.check([at_now(nonce=old)], method="GET", url=URL)
    now[0] += 61
    assert nonces.current() != old
    demanding.check([at_now(nonce=old, claims={"iat": now[0]})], method="GET", url=URL)  # the previous one, briefly
    demanding.check([at_now(nonce=nonces.current(), claims={"iat": now[0]})], method="GET", url=URL)


@pytest.mark.parametrize("htu, url", [
    ("https://api.test/things?a=1#f", URL),
    (URL, URL + "?q=2"),
    ("HTTPS://API.Test/things", URL),
    ("https://api.test:443/things", URL),
    ("http://api.test:80/x", "http://API.TEST/x"),
    ("https://api.test/a%7eb/c%2fd", "https://api.test/a~b/c%2Fd"),
    ("https://api.test/caf%c3%a9", "https://api.test/caf%C3%A9"),
])
def test_htu_is_compared_after_rfc_9449_normalisation(htu, url):
    assert normalised_uri(htu) == normalised_uri(url)
    checker().check([at_now(url=htu)], method="GET", url=url)


def test_normalised_uri():
    assert normalised_uri("HTTP://Api.Test:80/a%7eb/%2f?q#f") == "http://api.test/a~b/%2F"
    assert normalised_uri("https://api.test:8443") == "https://api.test:8443/"
    assert normalised_uri("http://[::1]:6543/x") == "http://[::1]:6543/x"


# Refresh tokens issued with a proof are bound to its key.

def refresh(stack, refresh_token, dpop=None):
    return stack.token({"grant_type": "refresh_token", "refresh_token": refresh_token}, dpop)


def test_a_refresh_token_issued_with_a_proof_is_refreshed_only_with_that_keys_proof(stack):
    key = new_key()
    token = stack.bound_tokens(key)
    other = refresh(stack, token["refresh_token"], proof(new_key(), "POST", stack.token_endpoint))
    assert other.status_code == 400
    assert other.json() == {"error": "invalid_grant", "error_description": "The refresh token is bound to another DPoP key."}
    # The refused attempt did not spend it (this provider rotates refresh tokens).
    same = refresh(stack, token["refresh_token"], proof(key, "POST", stack.token_endpoint))
    assert same.status_code == 200 and same.json()["token_type"] == "DPoP", same.text
    rotated = same.json()["refresh_token"]
    assert rotated != token["refresh_token"]
    # Its successor is bound to the same key.
    assert refresh(stack, rotated, proof(new_key(), "POST", stack.token_endpoint)).json()["error"] == "invalid_grant"
    # This confidential client may refresh it without a proof (RFC 9449 section 5): a Bearer token
    # (what myapp.upstream.<name>.dpop = false asks for)...
    bearer = refresh(stack, rotated)
    assert bearer.status_code == 200 and bearer.json()["token_type"] == "Bearer"
    assert "cnf" not in claims_of(bearer.json()["access_token"])
    # ...and the binding stays: the next successor still refuses another key.
    successor = bearer.json()["refresh_token"]
    assert refresh(stack, successor, proof(new_key(), "POST", stack.token_endpoint)).json()["error"] == "invalid_grant"
    assert refresh(stack, successor, proof(key, "POST", stack.token_endpoint)).status_code == 200


def test_a_bad_proof_on_a_refresh_is_invalid_dpop_proof(stack):
    key = new_key()
    token = stack.bound_tokens(key)
    response = refresh(stack, token["refresh_token"], proof(key, "POST", stack.token_endpoint, header={"typ": "JWT"}))
    assert response.status_code == 400 and response.json()["error"] == "invalid_dpop_proof"


def test_a_refresh_token_issued_without_a_proof_is_not_bound(stack):
    token = stack.exchange_code().json()
    response = refresh(stack, token["refresh_token"], proof(new_key(), "POST", stack.token_endpoint))
    assert response.status_code == 200 and response.json()["token_type"] == "DPoP"


def test_with_dpop_refresh_requires_proof_a_bound_refresh_token_needs_its_keys_proof():
    with running_devstack(**{"devstack.idp.dpop_refresh_requires_proof": "true"}) as url:
        stack = Stack(url)
        key = new_key()
        token = stack.bound_tokens(key)
        without = refresh(stack, token["refresh_token"])
        assert without.status_code == 400 and without.json() == {
            "error": "invalid_grant",
            "error_description": "The refresh token is bound to a DPoP key: refresh with a proof by that key.",
        }
        assert refresh(stack, token["refresh_token"], proof(new_key(), "POST", stack.token_endpoint)).status_code == 400
        assert refresh(stack, token["refresh_token"], proof(key, "POST", stack.token_endpoint)).status_code == 200
        # An unbound one still refreshes without a proof.
        unbound = stack.exchange_code().json()["refresh_token"]
        assert refresh(stack, unbound).json()["token_type"] == "Bearer"


def test_token_exchange_refuses_a_bad_proof_and_without_one_issues_bearer(stack):
    key = new_key()
    subject = stack.bound_tokens(key)["access_token"]
    form = exchange_form(stack, subject)
    bad = stack.token(form, proof(key, "GET", stack.token_endpoint))
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_dpop_proof"
    bearer = stack.token(form)
    assert bearer.status_code == 200 and bearer.json()["token_type"] == "Bearer"
    assert "cnf" not in claims_of(bearer.json()["access_token"])


def test_with_nonces_demanded_userinfo_asks_once_then_accepts(nonce_stack):
    key = new_key()
    nonce = nonce_stack.exchange_code(key).headers["DPoP-Nonce"]
    token = nonce_stack.exchange_code(key, nonce=nonce).json()["access_token"]
    endpoint = nonce_stack.metadata["userinfo_endpoint"]

    def get(dpop):
        return requests.get(endpoint, headers={"Authorization": f"DPoP {token}", "DPoP": dpop}, timeout=5)

    missing = get(proof(key, "GET", endpoint, token=token))
    assert missing.status_code == 401 and missing.json()["error"] == "use_dpop_nonce"
    assert missing.headers["WWW-Authenticate"].startswith('DPoP algs="ES256 ES384 PS256 RS256", error="use_dpop_nonce"')
    assert missing.headers["DPoP-Nonce"] == nonce
    good = get(proof(key, "GET", endpoint, token=token, nonce=nonce))
    assert good.status_code == 200 and good.json()["sub"] == "alice" and good.headers["DPoP-Nonce"] == nonce


def test_with_nonces_demanded_a_refresh_needs_one_and_the_api_tells_it_on_success(nonce_stack):
    key = new_key()
    nonce = nonce_stack.exchange_code(key).headers["DPoP-Nonce"]
    token = nonce_stack.exchange_code(key, nonce=nonce).json()
    without = refresh(nonce_stack, token["refresh_token"], proof(key, "POST", nonce_stack.token_endpoint))
    assert without.status_code == 400 and without.json()["error"] == "use_dpop_nonce" and without.headers["DPoP-Nonce"]
    refreshed = refresh(nonce_stack, token["refresh_token"], proof(key, "POST", nonce_stack.token_endpoint, nonce=nonce))
    assert refreshed.status_code == 200 and refreshed.json()["token_type"] == "DPoP"
    access = refreshed.json()["access_token"]
    good = requests.get(nonce_stack.api, headers={
        "Authorization": f"DPoP {access}", "DPoP": proof(key, "GET", nonce_stack.api, token=access, nonce=nonce)}, timeout=5)
    assert good.status_code == 200 and good.headers["DPoP-Nonce"] == nonce


def test_the_api_checks_htu_against_the_url_as_the_caller_addressed_it(stack):
    key = new_key()
    token = stack.bound_tokens(key)["access_token"]
    # The caller addressed 127.0.0.1:PORT; a proof for "localhost" names another URL.
    elsewhere = stack.api.replace("127.0.0.1", "localhost")
    refused = requests.get(stack.api, headers={"Authorization": f"DPoP {token}",
                                               "DPoP": proof(key, "GET", elsewhere, token=token)}, timeout=5)
    assert refused.status_code == 401 and refused.json()["message"] == "htu does not match the request URL"
    # Query, fragment, and scheme and host case do not matter.
    loud = stack.api.replace("http://127.0.0.1", "HTTP://127.0.0.1") + "?x=1#frag"
    accepted = requests.get(stack.api + "?x=1", headers={"Authorization": f"DPoP {token}",
                                                         "DPoP": proof(key, "GET", loud, token=token)}, timeout=5)
    assert accepted.status_code == 200, accepted.text


def test_the_api_refuses_a_bad_proof_with_a_dpop_challenge(stack):
    key = new_key()
    token = stack.bound_tokens(key)["access_token"]
    response = requests.get(stack.api, headers={"Authorization": f"DPoP {token}",
                                                "DPoP": proof(key, "GET", stack.api, token=token, header={"typ": "JWT"})},
                            timeout=5)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        'DPoP algs="ES256 ES384 PS256 RS256", error="invalid_dpop_proof", error_description="typ must be dpop+jwt"'
    )
    assert response.json() == {"error": "invalid_dpop_proof", "message": "typ must be dpop+jwt"}
    as_bearer = requests.get(stack.api, headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert as_bearer.headers["WWW-Authenticate"].startswith('Bearer realm="demo", error="invalid_token"')
