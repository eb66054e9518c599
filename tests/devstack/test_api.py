"""The demo API: bearer tokens checked against the provider's JWKS, notes, echo, streaming."""

import base64
import hashlib
import json
import time

import pytest
import requests
from joserfc import jws, jwt
from joserfc.jwk import RSAKey

from myapp.devstack.api import PATTERN
from tests.devstack.flows import log_in
from tests.devstack.server import provider_key


@pytest.fixture(scope="module")
def api(devstack):
    return devstack + "/_dev/api"


@pytest.fixture(scope="module")
def tokens(devstack, metadata):
    with requests.Session() as browser:
        alice = log_in(browser, metadata, "alice")["access_token"]
        browser.cookies.clear()
        bob = log_in(browser, metadata, "bob")["access_token"]
    return {"alice": alice, "bob": bob}


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def forged(metadata, api, *, key=None, header=None, **claims):
    key = key or provider_key()
    now = int(time.time())
    payload = {"iss": metadata["issuer"], "aud": api, "sub": "mallory", "iat": now, "exp": now + 60, **claims}
    return jwt.encode({"alg": "RS256", "kid": key.kid, **(header or {})}, payload, key)


def b64url(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned(claims):
    return f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{b64url(claims)}."


def test_me(api, tokens):
    response = requests.get(api + "/me", headers=bearer(tokens["alice"]), timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert body["sub"] == "alice"
    assert body["claims"]["sub"] == "alice" and body["claims"]["client_id"] == "myapp-test"


def test_ping(api, tokens):
    response = requests.get(api + "/ping", headers=bearer(tokens["alice"]), timeout=5)
    assert response.json() == {"pong": True}


def test_notes_belong_to_their_author(api, tokens):
    first = requests.post(api + "/notes", json={"text": "first"}, headers=bearer(tokens["alice"]), timeout=5)
    second = requests.post(api + "/notes", json={"text": "second"}, headers=bearer(tokens["alice"]), timeout=5)
    assert first.status_code == second.status_code == 201
    assert set(first.json()) == {"id", "text", "created_at"}

    mine = requests.get(api + "/notes", headers=bearer(tokens["alice"]), timeout=5).json()["notes"]
    assert [note["text"] for note in mine][:2] == ["second", "first"]
    assert requests.get(api + "/notes", headers=bearer(tokens["bob"]), timeout=5).json() == {"notes": []}

    note_id = first.json()["id"]
    stolen = requests.delete(f"{api}/notes/{note_id}", headers=bearer(tokens["bob"]), timeout=5)
    assert stolen.status_code == 404
    assert stolen.json()["error"] == "not_found"
    deleted = requests.delete(f"{api}/notes/{note_id}", headers=bearer(tokens["alice"]), timeout=5)
    assert deleted.status_code == 204
    assert requests.delete(f"{api}/notes/{note_id}", headers=bearer(tokens["alice"]), timeout=5).status_code == 404


@pytest.mark.parametrize(
    "body",
    [{"text": ""}, {"text": "   "}, {"text": "x" * 501}, {"text": 5}, {}, ["text"], "not json", "nested",
     # No text anyone typed: a lone surrogate, which no page can write out as UTF-8 (helper-116), a NUL.
     {"text": "x\ud800y"}, {"text": "x\u0000y"}],
)
def test_invalid_notes_are_400(api, tokens, body):
    if body in ("not json", "nested"):
        data = "{" if body == "not json" else "[" * 5000
        response = requests.post(api + "/notes", data=data, headers=bearer(tokens["alice"]), timeout=5)
    else:
        response = requests.post(api + "/notes", json=body, headers=bearer(tokens["alice"]), timeout=5)
    assert response.status_code == 400
    assert set(response.json()) == {"error", "message"}


def test_longest_note(api, tokens):
    response = requests.post(api + "/notes", json={"text": "x" * 500}, headers=bearer(tokens["alice"]), timeout=5)
    assert response.status_code == 201


def test_missing_token(api):
    response = requests.get(api + "/me", timeout=5)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="demo"'
    assert response.json()["error"] == "unauthorized"


@pytest.mark.parametrize(
    ("make", "description"),
    [
        (lambda md, api: forged(md, api, key=RSAKey.generate_key(2048, private=True, auto_kid=True)), "unknown key"),
        (lambda md, api: forged(md, api, key=provider_key(), aud="https://other.example.test"), "aud claim"),
        (lambda md, api: forged(md, api, iss="https://other.example.test"), "iss claim"),
        (lambda md, api: forged(md, api, exp=int(time.time()) - 31), "expired"),
        (lambda md, api: forged(md, api, sub=None), "sub claim"),
        (lambda md, api: unsigned({"iss": md["issuer"], "aud": api, "sub": "mallory", "exp": 2**31}), "RS256"),
        (lambda md, api: "not-a-jwt", "not a JWT"),
        (lambda md, api: jws.serialize_compact({"alg": "RS256", "kid": provider_key().kid}, b"[1]", provider_key()), "not a JWT"),
        (lambda md, api: unsigned({"iss": [md["issuer"]], "aud": api, "sub": "mallory", "exp": 2**31}), "iss claim"),
    ],
    ids=["other-key", "wrong-aud", "wrong-iss", "expired", "no-sub", "alg-none", "garbage", "payload-not-claims", "iss-a-list"],
)
def test_bad_tokens_are_401(api, metadata, make, description):
    response = requests.get(api + "/me", headers=bearer(make(metadata, api)), timeout=5)
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="demo", error="invalid_token", error_description="')
    assert description in challenge
    assert response.json()["error"] == "invalid_token"


def test_tampered_signature_is_401(api, tokens):
    header, payload, signature = tokens["alice"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    tampered = b64url({**claims, "sub": "bob"})
    response = requests.get(api + "/me", headers=bearer(f"{header}.{tampered}.{signature}"), timeout=5)
    assert response.status_code == 401
    assert "signature is invalid" in response.headers["WWW-Authenticate"]


def test_leeway_accepts_a_token_just_expired(api, metadata):
    token = forged(metadata, api, exp=int(time.time()) - 5)
    assert requests.get(api + "/me", headers=bearer(token), timeout=5).status_code == 200


def test_echo_redacts_the_token_and_cookie(api, tokens):
    response = requests.post(
        api + "/echo/some/path?a=1&b=two",
        data=b"hello",
        headers={**bearer(tokens["alice"]), "Cookie": "secret=1", "X-Custom": "yes"},
        timeout=5,
    )
    assert response.status_code == 200
    echo = response.json()
    assert tokens["alice"] not in response.text and "secret=1" not in response.text
    assert echo["method"] == "POST"
    assert echo["path"] == "/_dev/api/echo/some/path"
    assert echo["query_string"] == "a=1&b=two"
    assert echo["headers"]["authorization"] == "Bearer <redacted>"
    assert echo["headers"]["x-custom"] == "yes"
    assert "cookie" not in echo["headers"] and echo["cookie_present"] is True
    assert echo["token_sub"] == "alice" and echo["token_error"] is None
    assert echo["body"] == {"length": 5, "sha256": hashlib.sha256(b"hello").hexdigest()}


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
def test_echo_methods_without_a_token(api, method):
    echo = requests.request(method, api + "/echo/x", timeout=5).json()
    assert echo["method"] == method
    assert echo["token_sub"] is None and echo["cookie_present"] is False
    assert "authorization" not in echo["headers"]


@pytest.mark.parametrize("size", [0, 1, 65536, 65537, 5 * 1024 * 1024 + 3])
def test_bytes_streams_the_pattern(api, tokens, size):
    headers = bearer(tokens["alice"])
    with requests.get(api + "/bytes", params={"n": size}, headers=headers, stream=True, timeout=10) as response:
        assert response.status_code == 200
        assert int(response.headers["Content-Length"]) == size
        body = b"".join(response.iter_content(65536))
    assert len(body) == size
    assert body == (PATTERN * (size // len(PATTERN) + 1))[:size]


@pytest.mark.parametrize("size", ["-1", "x", str(2**30 + 1), "", "1e3"])
def test_bytes_refuses_bad_sizes(api, tokens, size):
    response = requests.get(api + "/bytes", params={"n": size}, headers=bearer(tokens["alice"]), timeout=5)
    assert response.status_code == 400


def test_upload_counts_and_hashes_the_body(api, tokens):
    body = bytes(range(256)) * 40000 + b"tail"
    response = requests.post(api + "/upload", data=body, headers=bearer(tokens["alice"]), timeout=10)
    assert response.json() == {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_upload_streams_a_chunked_body(api, tokens):
    chunks = [b"a" * 100000, b"b" * 100000]
    response = requests.post(api + "/upload", data=iter(chunks), headers=bearer(tokens["alice"]), timeout=10)
    assert response.json() == {"bytes": 200000, "sha256": hashlib.sha256(b"".join(chunks)).hexdigest()}


def test_upload_needs_a_token(api):
    assert requests.post(api + "/upload", data=b"x", timeout=5).status_code == 401


def test_wrong_method_is_405_json(api, tokens):
    response = requests.put(api + "/notes", headers=bearer(tokens["alice"]), timeout=5)
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"


@pytest.mark.parametrize("path", ["/_dev/api/echo/%ff", "/_dev/idp/%C0%AE", "/_dev/idp/authorize?client_id=%ff"])
def test_an_address_that_is_not_utf8_is_a_400_not_a_500(devstack, path):
    response = requests.get(devstack + path, timeout=5)
    assert (response.status_code, response.text) == (400, "The address is not valid UTF-8.")
