"""How the app authenticates to the provider (SPEC.md "Client authentication and pushed
authorization requests"), against the programmable provider, which checks as strictly as the RFCs
say: Basic credentials decoded per RFC 6749 section 2.3.1, client assertions per RFC 7523, pushed
authorization requests per RFC 9126."""

import base64
import hashlib
import json
from urllib.parse import parse_qs, unquote_plus, urlsplit

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from joserfc.jwk import import_key
from sqlalchemy import func, select

from myapp.models import AuditEvent, LoginTransaction
from tests.conftest import TEST_PUBLIC_URL
from tests.functional.auth.flows import csrf_of, session_count, sign_in, start_login
from tests.functional.conftest import Browser
from tests.support.keys import ec_key, rsa_key, self_signed, write_key

ODD_SECRET = "s:e%c+r é/t=&"


def token_calls(provider):
    return [(form, headers) for path, form, headers in provider.requests if path in ("/token", "/revoke", "/par")]


def sign_in_and_out(app, provider, dbsession):
    """A sign-in, a refresh (through the proxy) and a sign-out: every authenticated endpoint."""
    browser = Browser(app)
    response = sign_in(browser, provider)
    assert response.status_int == 303, response.text
    csrf = csrf_of(browser)
    browser.post("/logout", {"csrf_token": csrf}, headers={"Origin": TEST_PUBLIC_URL}, status=303)
    assert session_count(dbsession) == 0
    return browser


# -- client_secret_basic and client_secret_post --

def test_basic_credentials_are_form_urlencoded_before_base64(make_app, provider, dbsession):
    provider.client_secret = ODD_SECRET
    app = make_app(**{"myapp.oidc.client_secret": ODD_SECRET})
    sign_in_and_out(app, provider, dbsession)
    calls = token_calls(provider)
    assert len(calls) == 2  # the code exchange and the revocation, both accepted
    assert provider.revoked
    header = calls[0][1]["HTTP_AUTHORIZATION"]
    user, _, password = base64.b64decode(header.removeprefix("Basic ")).decode("ascii").partition(":")
    assert password == "s%3Ae%25c%2Br+%C3%A9%2Ft%3D%26" and unquote_plus(password) == ODD_SECRET


def test_client_secret_post_keeps_working(make_app, provider, dbsession):
    provider.client_secret = ODD_SECRET
    app = make_app(**{"myapp.oidc.client_secret": ODD_SECRET, "myapp.oidc.token_endpoint_auth_method": "client_secret_post"})
    sign_in_and_out(app, provider, dbsession)
    form, headers = token_calls(provider)[0]
    assert form["client_secret"] == ODD_SECRET and "HTTP_AUTHORIZATION" not in headers


def test_a_wrong_secret_is_a_clean_refusal(make_app, provider, dbsession):
    provider.client_secret = "the-real-one"
    response = sign_in(Browser(make_app()), provider)
    assert response.status_int == 400 and session_count(dbsession) == 0


# -- private_key_jwt --

@pytest.fixture
def keys(tmp_path):
    first, second = rsa_key(), ec_key()
    return {
        "first": first,
        "second": second,
        "first_path": write_key(tmp_path, "first.pem", first),
        "second_path": write_key(tmp_path, "second.pem", second),
        "dir": tmp_path,
    }


def key_app(make_app, keys, *paths, **settings):
    paths = paths or (keys["first_path"],)
    return make_app(
        **{
            "myapp.oidc.token_endpoint_auth_method": "private_key_jwt",
            "myapp.oidc.client_secret": "",
            "myapp.oidc.client_keys": "\n".join(f"file:{p}" for p in paths),
            **settings,
        }
    )


def register(provider, app):
    provider.client_jwks = Browser(app).get("/auth/jwks.json", status=200).json["keys"]


def test_every_call_authenticates_with_a_fresh_assertion(make_app, provider, keys, dbsession):
    app = key_app(make_app, keys)
    register(provider, app)
    browser = sign_in_and_out(app, provider, dbsession)
    assert browser is not None
    assert len(provider.assertions) == 2 and provider.revoked  # code exchange and revocation
    assert not provider.client_auth_failures
    jtis = set()
    for header, claims in provider.assertions:
        assert header["alg"] == "PS256"  # the first the provider advertises that an RSA key can make
        assert header["kid"] == import_key(provider.client_jwks[0]).thumbprint()
        assert claims["iss"] == claims["sub"] == "myapp-test"
        assert claims["aud"] == provider.issuer
        assert 0 < claims["exp"] - claims["iat"] <= 60
        jtis.add(claims["jti"])
    assert len(jtis) == 2
    form, headers = token_calls(provider)[0]
    assert "client_secret" not in form and "HTTP_AUTHORIZATION" not in headers


def test_an_hmac_logout_token_to_a_client_without_a_secret_is_a_400(make_app, provider, keys):
    """Anyone may post a logout token: one signed HS256, when the provider advertises it, was a
    500 for a client that has no secret to check it with (helper-38)."""
    from joserfc.jwk import OctKey

    provider.metadata_overrides["id_token_signing_alg_values_supported"] = ["RS256", "HS256"]
    app = key_app(make_app, keys)
    token = provider.sign(provider.logout_claims(), key=OctKey.import_key(b"guessed-by-anyone-who-posts-one"), alg="HS256")
    response = Browser(app).post("/auth/backchannel-logout", {"logout_token": token}, status=400)
    assert response.json["error"] == "invalid_request"


def test_the_assertion_audience_may_be_the_token_endpoint(make_app, provider, keys, dbsession):
    app = key_app(make_app, keys, **{"myapp.oidc.client_assertion_audience": "token_endpoint"})
    register(provider, app)
    sign_in(Browser(app), provider)
    assert provider.assertions[0][1]["aud"] == provider.issuer + "/token"


def test_an_ec_key_signs_with_es256(make_app, provider, keys, dbsession):
    app = key_app(make_app, keys, keys["second_path"])
    register(provider, app)
    assert sign_in(Browser(app), provider).status_int == 303
    assert provider.assertions[0][0]["alg"] == "ES256"


def test_rotation_publishes_both_keys_and_the_first_signs(make_app, provider, keys, dbsession):
    app = key_app(make_app, keys, keys["second_path"], keys["first_path"])
    published = Browser(app).get("/auth/jwks.json", status=200).json["keys"]
    assert [k["kty"] for k in published] == ["EC", "RSA"]
    for key in published:
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)
    provider.client_jwks = published
    sign_in(Browser(app), provider)
    assert provider.assertions[0][0]["kid"] == published[0]["kid"]


def test_a_certificate_adds_its_thumbprints(make_app, provider, keys, dbsession):
    certificate = self_signed(keys["first"], keys["dir"])
    app = key_app(make_app, keys, **{"myapp.oidc.client_certificate": f"file:{certificate}"})
    register(provider, app)
    sign_in(Browser(app), provider)
    header = provider.assertions[0][0]
    from cryptography import x509

    der = x509.load_pem_x509_certificate(certificate.read_bytes()).public_bytes(Encoding.DER)
    expected = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    assert header["x5t#S256"] == expected and header["x5t"]


def test_a_provider_that_accepts_no_algorithm_the_key_can_make_is_a_clear_page(make_app, provider, keys, dbsession, caplog):
    provider.metadata_overrides["token_endpoint_auth_signing_alg_values_supported"] = ["ES256"]
    app = key_app(make_app, keys)  # an RSA key
    page = Browser(app).get("/login", status=502)
    assert "Sign-in is misconfigured" in page.text and "ES256" in page.text
    assert "the configured key can make only PS256, RS256" in caplog.text
    assert dbsession.scalar(select(func.count()).select_from(LoginTransaction)) == 0


def test_an_unregistered_key_is_refused_by_the_provider_and_no_session_is_made(make_app, provider, keys, dbsession):
    app = key_app(make_app, keys)
    provider.client_jwks = []  # never registered
    response = sign_in(Browser(app), provider)
    assert response.status_int == 400 and session_count(dbsession) == 0


def test_no_keys_no_jwks(app):
    response = Browser(app).get("/auth/jwks.json", status=404)
    assert response.json["error"] == "http_error"


@pytest.mark.parametrize("method", ["post", "put", "delete"])
def test_the_key_set_answers_another_method_in_json(make_app, keys, method):
    """SPEC.md: JSON errors from /auth/* have the shape {"error", "message"}; this one was a page."""
    response = getattr(Browser(key_app(make_app, keys)), method)("/auth/jwks.json", status=(404, 405))
    assert response.content_type == "application/json"
    assert set(response.json) == {"error", "message"}


# -- pushed authorization requests (RFC 9126) --

def test_with_par_the_browser_carries_only_client_id_and_request_uri(make_app, provider, dbsession):
    provider.offers_par = True
    app = make_app()
    browser = Browser(app)
    response = browser.get("/login", params={"next": "/posts"}, status=303)
    parts = urlsplit(response.location)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == provider.issuer + "/authorize"
    query = parse_qs(parts.query)
    assert set(query) == {"client_id", "request_uri"}
    pairs = provider.pushed[query["request_uri"][0]]
    assert [name for name, _ in pairs].count("client_id") == 1, "no parameter twice"
    pushed = dict(pairs)
    assert {"state", "nonce", "code_challenge", "redirect_uri", "scope", "response_type"} <= set(pushed)
    assert pushed["code_challenge_method"] == "S256"
    # The provider's own checks of the pushed request pass, and the sign-in completes.
    code = provider.grant(challenge=pushed["code_challenge"], nonce=pushed["nonce"])
    done = browser.get("/auth/callback", params={"code": code, "state": pushed["state"], "iss": provider.issuer}, status=303)
    assert done.location.endswith("/posts") and session_count(dbsession) == 1


def test_par_is_used_when_the_provider_requires_it(make_app, provider):
    provider.offers_par = True
    provider.metadata_overrides["require_pushed_authorization_requests"] = True
    response = Browser(make_app(**{"myapp.oidc.par": "auto"})).get("/login", status=303)
    assert "request_uri=" in response.location


def test_par_never_keeps_the_parameters_in_the_url(make_app, provider):
    provider.offers_par = True
    _, query = start_login(Browser(make_app(**{"myapp.oidc.par": "never"})))
    assert "state" in query and "request_uri" not in query


def test_par_never_with_a_provider_that_requires_it_is_a_clear_page(make_app, provider):
    provider.offers_par = True
    provider.metadata_overrides["require_pushed_authorization_requests"] = True
    page = Browser(make_app(**{"myapp.oidc.par": "never"})).get("/login", status=502)
    assert "requires pushed authorization requests" in page.text


def test_par_always_with_a_provider_without_it_is_a_clear_page(make_app, provider, dbsession):
    page = Browser(make_app(**{"myapp.oidc.par": "always"})).get("/login", status=502)
    assert "offers no pushed authorization request endpoint" in page.text
    assert dbsession.scalar(select(func.count()).select_from(LoginTransaction)) == 0


def test_a_refused_par_is_an_error_page_an_audit_record_and_no_transaction(make_app, provider, dbsession):
    provider.offers_par = True
    provider.par_response = lambda form: (400, {"error": "invalid_request", "error_description": "bad scope"})
    page = Browser(make_app()).get("/login", status=502)
    assert "Sign-in was refused" in page.text and "invalid_request" in page.text
    assert dbsession.scalar(select(func.count()).select_from(LoginTransaction)) == 0
    event = dbsession.scalars(select(AuditEvent).where(AuditEvent.event == "login_failed")).one()
    assert event.detail == "par_refused:invalid_request"


@pytest.mark.parametrize("error", ["x\n2026-12-05 00:00:00,000 INFO  [myapp.views.auth] FORGED", "<b>x</b>", "e" * 65, 7])
def test_a_par_refusal_with_an_error_code_that_is_not_one_is_recorded_as_invalid(make_app, provider, dbsession, caplog,
                                                                                   error):
    """A provider's error code goes into the log, the audit record and the page: a line feed in it
    forged a log line (helper-40)."""
    provider.offers_par = True
    provider.par_response = lambda form: (400, {"error": error})
    with caplog.at_level("INFO"):
        page = Browser(make_app()).get("/login", status=502)
    assert "(invalid)" in page.text
    event = dbsession.scalars(select(AuditEvent).where(AuditEvent.event == "login_failed")).one()
    assert event.detail == "par_refused:invalid"
    assert "FORGED" not in caplog.text and "\n2026" not in caplog.text


@pytest.mark.parametrize("answer", [(503, {"error": "temporarily_unavailable"}), (201, {"no": "request_uri"}), (200, "junk"), (201, "[" * 5000)])
def test_a_failing_par_endpoint_is_an_error_page_and_no_transaction(make_app, provider, dbsession, answer):
    provider.offers_par = True
    provider.par_response = lambda form: answer
    status = 503 if answer[0] == 503 else 502
    page = Browser(make_app()).get("/login", status=status)
    assert dbsession.scalar(select(func.count()).select_from(LoginTransaction)) == 0
    # Audited, a failure as a refusal (helper-140: a 5xx was not): what the provider did, not "did not answer".
    event = dbsession.scalars(select(AuditEvent).where(AuditEvent.event == "login_failed")).one()
    assert event.detail == ("par_unavailable" if status == 503 else "par_failed")
    if status == 503:
        assert "The sign-in provider is not available right now." in page.text and "did not answer" not in page.text


def test_par_authenticates_with_a_key_too(make_app, provider, keys, dbsession):
    provider.offers_par = True
    app = key_app(make_app, keys)
    register(provider, app)
    Browser(app).get("/login", status=303)
    (par_form,) = [form for path, form, _ in provider.requests if path == "/par"]
    assert par_form["client_assertion_type"].endswith("jwt-bearer")
    assert json.loads(base64.urlsafe_b64decode(par_form["client_assertion"].split(".")[1] + "=="))["aud"] == provider.issuer
