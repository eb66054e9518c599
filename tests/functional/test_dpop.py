"""DPoP (SPEC.md "Sender-constrained tokens") through the whole app: the programmable provider and a
recording upstream that checks proofs as a strict resource server does (tests/support/dpop_check.py,
written apart from the app's proof maker), both on real sockets, on a committed database.
"""

import json
import logging
import socketserver
from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, update

from myapp.models import AuditEvent, SessionToken, TokenRevocation, User, UserSession
from myapp.models.meta import utcnow
from myapp.services import Services
from myapp.services.dpop import DPoPKey
from myapp.services.tokenset import TokenCipher
from tests.conftest import TEST_PUBLIC_URL
from tests.functional.auth.flows import sign_in as sign_in_at
from tests.functional.auth.flows import start_login
from tests.functional.conftest import COOKIE, Browser
from tests.support.dpop_check import b64url_sha256, verify_proof
from tests.support.servers import socket_server

# Paths the browser asks for, with a query and with encoded characters.
PATHS = ("/api/up/items/7?sort=name&q=a%20b", "/api/up/caf%C3%A9/a%2Bb%40c~x", "/api/up/")


@pytest.fixture(autouse=True)
def dbsession(committed, committed_engine):
    """The committed database, emptied before (another module may have left rows) and after each test."""
    from myapp.models import Base

    with committed_engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(table.delete())
    return committed


@pytest.fixture
def dpop_provider(provider):
    provider.dpop_algorithms = ["ES256", "RS256"]
    return provider


@pytest.fixture
def make_dpop_app(make_proxy_app):
    def make(mode="required", **overrides):
        return make_proxy_app(**{"myapp.oidc.dpop": mode, **overrides})

    return make


def api(browser, method, path, status="*", **kw):
    headers = {"X-CSRF": "1"}
    if method in ("POST", "PUT", "PATCH", "DELETE"):
        headers["Origin"] = TEST_PUBLIC_URL
    return getattr(browser, method.lower())(path, headers=headers, status=status, **kw)


def signed_in_browser(app, provider):
    browser = Browser(app)
    response = sign_in_at(browser, provider)
    assert response.status_int == 303, response.text
    return browser


def session_row(dbsession):
    dbsession.commit()
    return dbsession.scalars(select(UserSession).order_by(UserSession.id.desc()).limit(1)).one()


def private_jwk(app, row) -> dict:
    return json.loads(app.registry[Services].cipher.decrypt(row.dpop_key))["jwk"]


def test_a_sign_in_makes_the_sessions_own_key_and_binds_its_tokens(make_dpop_app, dpop_provider, dbsession):
    app = make_dpop_app()
    signed_in_browser(app, dpop_provider)
    row = session_row(dbsession)
    assert row.access_token_type == "DPoP" and row.dpop_key is not None
    jwk = private_jwk(app, row)
    assert jwk["kty"] == "EC" and jwk["crv"] == "P-256" and "d" in jwk
    assert b'"d"' not in row.dpop_key and jwk["d"].encode() not in row.dpop_key  # encrypted at rest

    (token_path, proof, claims), (userinfo_path, userinfo_proof, userinfo_claims) = dpop_provider.dpop_proofs
    assert (token_path, userinfo_path) == ("/token", "/userinfo")
    header, claims, jkt = verify_proof(proof, method="POST", url=dpop_provider.issuer + "/token")
    assert header["typ"] == "dpop+jwt" and header["alg"] == "ES256" and "d" not in header["jwk"]
    assert "ath" not in claims and "nonce" not in claims
    access_token = app.registry[Services].cipher.decrypt(row.access_token)
    assert dpop_provider.access_tokens[access_token]["jkt"] == jkt
    # Userinfo got the bound token as DPoP, with a proof of its own carrying its hash.
    assert userinfo_claims["ath"] == b64url_sha256(access_token) and userinfo_claims["jti"] != claims["jti"]


@pytest.mark.parametrize("path", PATHS)
def test_every_proxied_call_carries_a_fresh_proof_for_exactly_that_request(make_dpop_app, dpop_provider, upstream, dbsession, path):
    app = make_dpop_app()
    browser = signed_in_browser(app, dpop_provider)
    api(browser, "GET", path, status=200)
    api(browser, "POST", path, params=b'{"n": 1}', content_type="application/json", status=200)
    access_token = app.registry[Services].cipher.decrypt(session_row(dbsession).access_token)
    proofs = []
    for seen, method in zip(upstream.seen, ("GET", "POST"), strict=True):
        assert seen["headers"]["authorization"] == f"DPoP {access_token}"
        # htu: the URL exactly as the upstream received it, without the query.
        target = upstream.url + seen["uri"].split("?")[0]
        header, claims, jkt = verify_proof(seen["headers"]["dpop"], method=method, url=target, access_token=access_token)
        assert claims["htu"] == target and claims["htm"] == method and "?" not in claims["htu"]
        assert jkt == dpop_provider.access_tokens[access_token]["jkt"]
        proofs.append(claims["jti"])
    assert len(set(proofs)) == 2
    assert upstream.dpop_refusals == [], upstream.dpop_failures


def test_an_upstreams_nonce_is_answered_by_exactly_one_retry_and_then_remembered(make_dpop_app, dpop_provider, upstream):
    browser = signed_in_browser(make_dpop_app(), dpop_provider)
    upstream.dpop_nonce = "upstream-nonce-1"
    response = api(browser, "POST", "/api/up/items", params=b"payload", content_type="text/plain", status=200)
    assert response.json == {"ok": True}
    first, retry = upstream.seen
    assert upstream.dpop_refusals == ["use_dpop_nonce"]
    assert retry["body_sha256"] == first["body_sha256"] and retry["body_bytes"] == 7
    first_claims = verify_proof(first["headers"]["dpop"], method="POST", url=upstream.url + "/base/items")[1]
    retry_claims = verify_proof(retry["headers"]["dpop"], method="POST", url=upstream.url + "/base/items")[1]
    assert "nonce" not in first_claims and retry_claims["nonce"] == "upstream-nonce-1"
    assert retry_claims["jti"] != first_claims["jti"]
    # The nonce is kept for that upstream: the next call needs no retry.
    api(browser, "GET", "/api/up/items", status=200)
    assert len(upstream.seen) == 3 and len(upstream.dpop_refusals) == 1


def test_a_nonce_asked_for_again_after_the_retry_goes_back_as_a_401(make_dpop_app, dpop_provider, upstream, monkeypatch):
    browser = signed_in_browser(make_dpop_app(), dpop_provider)
    nonces = iter(f"n-{i}" for i in range(10))
    original = upstream._dpop_refusal

    def always_new_nonce(*args):
        upstream.dpop_nonce = next(nonces)
        return original(*args)

    monkeypatch.setattr(upstream, "_dpop_refusal", always_new_nonce)
    refresh_uses = list(dpop_provider.refresh_uses)
    api(browser, "GET", "/api/up/items", status=401)
    assert len(upstream.seen) == 2  # one retry, never a loop
    assert dpop_provider.refresh_uses == refresh_uses  # and no refresh: a new token would not help


def test_a_proof_the_upstream_refuses_gets_its_401_back_without_a_refresh(make_dpop_app, dpop_provider, upstream, caplog):
    browser = signed_in_browser(make_dpop_app(), dpop_provider)
    upstream.refuse_proofs = True
    refresh_uses = list(dpop_provider.refresh_uses)
    with caplog.at_level(logging.WARNING, logger="myapp.services.proxy"):
        response = api(browser, "GET", "/api/up/items", status=401)
    assert response.headers["WWW-Authenticate"].startswith('DPoP error="invalid_dpop_proof"')
    assert len(upstream.seen) == 1 and dpop_provider.refresh_uses == refresh_uses
    assert "upstream up refused the DPoP proof: invalid_dpop_proof" in caplog.text


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_a_proof_refusal_to_a_bearer_token_gets_its_401_back_without_a_refresh(
    make_dpop_app, dpop_provider, upstream, dbsession, mode, caplog
):
    """SPEC.md: an upstream 401 with error="invalid_dpop_proof" is never a reason to refresh. An
    upstream that wants DPoP answers a Bearer token (DPoP off, or a provider that chose Bearer) so:
    a refresh was made for it (and the call sent again), once every 30 seconds per session, though a
    new Bearer token is refused the same way. The log says that no proof was sent (it said the
    upstream "refused the DPoP proof", sending whoever reads it after a proof that never was)."""
    dpop_provider.dpop_bearer = True
    browser = signed_in_browser(make_dpop_app(mode), dpop_provider)
    dbsession.execute(update(UserSession).values(refreshed_at=utcnow() - timedelta(minutes=1)))
    dbsession.commit()
    upstream.challenge = 'DPoP algs="ES256", error="invalid_dpop_proof", error_description="no proof"'
    refresh_uses = list(dpop_provider.refresh_uses)
    with caplog.at_level(logging.WARNING, logger="myapp.services.proxy"):
        response = api(browser, "GET", "/api/up/items", status=401)
    assert 'error="invalid_dpop_proof"' in response.headers["WWW-Authenticate"]
    assert upstream.seen[-1]["headers"]["authorization"].startswith("Bearer ")
    assert len(upstream.seen) == 1 and dpop_provider.refresh_uses == refresh_uses
    assert "upstream up wants a DPoP proof (invalid_dpop_proof); a Bearer token was sent" in caplog.text
    assert "refused the DPoP proof" not in caplog.text


def test_a_long_proof_refusal_is_read_and_gets_no_refresh(make_dpop_app, dpop_provider, upstream):
    """Over 4,096 characters the challenge was not read: the refusal was taken for an expired token
    and refreshed (found by a black-box review)."""
    browser = signed_in_browser(make_dpop_app(), dpop_provider)
    upstream.challenge = f'DPoP algs="ES256", error="invalid_dpop_proof", error_description="{"x" * 5000}"'
    refresh_uses = list(dpop_provider.refresh_uses)
    api(browser, "GET", "/api/up/items", status=401)
    assert len(upstream.seen) == 1 and dpop_provider.refresh_uses == refresh_uses


def test_an_invalid_token_answer_refreshes_once_with_a_new_proof(make_dpop_app, dpop_provider, upstream, dbsession):
    app = make_dpop_app()
    browser = signed_in_browser(app, dpop_provider)
    old = app.registry[Services].cipher.decrypt(session_row(dbsession).access_token)
    upstream.refuse_tokens = {old}
    api(browser, "GET", "/api/up/items", status=200)
    new = app.registry[Services].cipher.decrypt(session_row(dbsession).access_token)
    assert new != old and [s["headers"]["authorization"] for s in upstream.seen] == [f"DPoP {old}", f"DPoP {new}"]
    refresh_proofs = [c for path, _, c in dpop_provider.dpop_proofs if path == "/token"][1:]
    assert len(refresh_proofs) == 1 and session_row(dbsession).access_token_type == "DPoP"


def test_the_token_endpoints_nonce_is_answered_by_one_retry_at_sign_in_and_refresh(
    make_dpop_app, dpop_provider, upstream, dbsession
):
    dpop_provider.dpop_nonce = "provider-nonce-1"
    app = make_dpop_app()
    browser = signed_in_browser(app, dpop_provider)
    assert dpop_provider.dpop_refusals == [("/token", "nonce")]
    (_, _, accepted), *_ = dpop_provider.dpop_proofs
    assert accepted["nonce"] == "provider-nonce-1"
    # The provider moves on to another nonce: the refresh asks once more, with a fresh jti.
    dpop_provider.dpop_nonce = "provider-nonce-2"
    dbsession.execute(update(UserSession).values(access_token_expires_at=utcnow() - timedelta(seconds=1)))
    dbsession.commit()
    api(browser, "GET", "/api/up/items", status=200)
    assert dpop_provider.dpop_refusals == [("/token", "nonce")] * 2
    token_proofs = [c for path, _, c in dpop_provider.dpop_proofs if path == "/token"]
    assert [c.get("nonce") for c in token_proofs] == ["provider-nonce-1", "provider-nonce-2"]
    assert len({c["jti"] for c in token_proofs}) == 2
    assert len(dpop_provider.refresh_uses) == 1


def test_a_provider_that_issues_bearer_tokens_when_dpop_is_required_is_refused(make_dpop_app, dpop_provider, dbsession):
    dpop_provider.dpop_bearer = True
    browser = Browser(make_dpop_app())
    response = sign_in_at(browser, dpop_provider)
    assert response.status_int == 502
    assert "Bearer token" in response.text and "DPoP" in response.text
    assert dbsession.scalars(select(UserSession)).all() == []
    dbsession.commit()
    details = dbsession.scalars(select(AuditEvent.detail).where(AuditEvent.event == "login_failed")).all()
    assert any("dpop_not_bound" in d for d in details)


def test_auto_takes_the_bearer_tokens_a_provider_chose_to_issue(make_dpop_app, dpop_provider, upstream, dbsession):
    dpop_provider.dpop_bearer = True
    browser = signed_in_browser(make_dpop_app("auto"), dpop_provider)
    row = session_row(dbsession)
    assert (row.access_token_type, row.dpop_key) == (None, None)
    api(browser, "GET", "/api/up/items", status=200)
    assert upstream.seen[-1]["headers"]["authorization"].startswith("Bearer ") and "dpop" not in upstream.seen[-1]["headers"]


def test_auto_without_dpop_at_the_provider_signs_in_with_bearer_tokens(make_dpop_app, provider, dbsession):
    signed_in_browser(make_dpop_app("auto"), provider)
    assert session_row(dbsession).dpop_key is None
    assert provider.dpop_proofs == [] and all("HTTP_DPOP" not in headers for _, _, headers in provider.requests)


def test_required_at_a_provider_without_dpop_stops_before_the_person_signs_in(make_dpop_app, provider):
    browser = Browser(make_dpop_app())
    response = browser.get("/login", status=502)
    assert "dpop_signing_alg_values_supported" in response.text and "myapp.oidc.dpop = required" in response.text


def test_a_key_no_encryption_key_can_read_ends_the_session(make_dpop_app, dpop_provider, upstream, dbsession):
    app = make_dpop_app()
    browser = signed_in_browser(app, dpop_provider)
    row = session_row(dbsession)
    retired = TokenCipher([Fernet.generate_key().decode()])
    dbsession.execute(update(UserSession).values(dpop_key=retired.encrypt('{"alg": "ES256", "jwk": {}}')))
    dbsession.commit()
    response = api(browser, "GET", "/api/up/items", status=401)
    assert response.json["error"] == "login_required"
    assert upstream.seen == []
    dbsession.expire_all()
    ended = dbsession.get(UserSession, row.id)
    assert ended.ended_at is not None and ended.dpop_key is None and ended.access_token is None
    details = dbsession.scalars(select(AuditEvent.detail).where(AuditEvent.event == "refresh_failed")).all()
    assert any("DPoP key unreadable" in d for d in details)
    assert browser.get("/", status=200)  # the person is simply signed out, and can sign in again


def test_the_private_key_is_in_no_response_log_line_audit_row_or_outgoing_request(
    make_dpop_app, dpop_provider, upstream, dbsession, caplog
):
    app = make_dpop_app()
    caplog.set_level(logging.DEBUG)
    browser = Browser(app)
    responses = [sign_in_at(browser, dpop_provider)]
    private = private_jwk(app, session_row(dbsession))["d"]
    upstream.dpop_nonce = "n-1"
    for path in ("/", "/auth/user", "/account/sessions", "/api/up/items"):
        responses.append(browser.get(path, headers={"X-CSRF": "1"}, expect_errors=True))
    dbsession.execute(update(UserSession).values(access_token_expires_at=utcnow() - timedelta(seconds=1)))
    dbsession.commit()
    responses.append(api(browser, "GET", "/api/up/items"))
    responses.append(browser.post("/logout", {"csrf_token": browser.get("/auth/user", headers={"X-CSRF": "1"}).json["csrf_token"]},
                                  headers={"Origin": TEST_PUBLIC_URL}, expect_errors=True))
    dbsession.commit()
    texts = [r.text + str(r.headerlist) for r in responses] + [caplog.text]
    texts += [str(e.detail) + str(e.request_id) for e in dbsession.scalars(select(AuditEvent))]
    texts += [json.dumps(seen) for seen in upstream.seen]
    texts += [json.dumps([path, form, headers]) for path, form, headers in dpop_provider.requests]
    assert all(private not in text for text in texts)
    assert len(upstream.seen) >= 3  # the scan covered real calls, nonce retry included


def test_an_upstream_with_dpop_false_gets_a_bearer_token_asked_for_without_a_proof(make_dpop_app, dpop_provider, upstream):
    app = make_dpop_app(**{"myapp.upstream.up.dpop": "false", "myapp.upstream.up.scope": "items:read"})
    browser = signed_in_browser(app, dpop_provider)
    proofs_at_sign_in = len(dpop_provider.dpop_proofs)
    api(browser, "GET", "/api/up/items", status=200)
    seen = upstream.seen[-1]["headers"]
    assert seen["authorization"].startswith("Bearer ") and "dpop" not in seen
    assert len(dpop_provider.dpop_proofs) == proofs_at_sign_in  # the upstream's token came without a proof
    assert "jkt" not in dpop_provider.access_tokens[seen["authorization"].removeprefix("Bearer ")]


@pytest.mark.parametrize("own", [{"myapp.upstream.up.scope": "items:read"},
                                 {"myapp.upstream.up.exchange": "true", "myapp.upstream.up.resource": "https://items.test"}])
def test_an_upstream_set_to_dpop_false_gets_a_bearer_token_at_once_not_its_stored_bound_one(
    make_dpop_app, dpop_provider, upstream, dbsession, own
):
    """An upstream with a token of its own that cannot take DPoP tokens is set to dpop = false, and
    the app restarted: a session's stored token for it is bound, and a bound token is never sent as
    Bearer, so every call was a 502 "This API takes no DPoP-bound token" until it expired. It is
    not used for that upstream any more: a Bearer one is asked for, without a proof, at once."""
    browser = signed_in_browser(make_dpop_app(**own), dpop_provider)
    api(browser, "GET", "/api/up/items", status=200)
    assert upstream.seen[-1]["headers"]["authorization"].startswith("DPoP ")
    browser.app = make_dpop_app(**own, **{"myapp.upstream.up.dpop": "false"})
    proofs = len(dpop_provider.dpop_proofs)
    api(browser, "GET", "/api/up/items", status=200)
    seen = upstream.seen[-1]["headers"]
    assert seen["authorization"].startswith("Bearer ") and "dpop" not in seen
    assert "jkt" not in dpop_provider.access_tokens[seen["authorization"].removeprefix("Bearer ")]
    assert len(dpop_provider.dpop_proofs) == proofs
    dbsession.commit()
    assert dbsession.execute(select(SessionToken.token_type)).scalars().all() == [None]
    api(browser, "GET", "/api/up/items", status=200)
    assert upstream.seen[-1]["headers"]["authorization"] == seen["authorization"]


def test_an_exchanged_bound_token_an_upstream_set_to_dpop_false_no_longer_takes_is_queued_for_revocation(
    make_dpop_app, dpop_provider, upstream, dbsession
):
    """The stored token 07a775a stops serving to an upstream set to dpop = false is replaced in its
    row by the Bearer one asked for: an exchanged one is live (not of the session's grant, so its
    refresh token's revocation does not cover it), and its row was what queued it when the session
    ended. Overwritten, it was revoked by nobody until it expired. It is queued at once now, as an
    exchange's access token nobody keeps is, and only once."""
    own = {"myapp.upstream.up.exchange": "true", "myapp.upstream.up.resource": "https://items.test"}
    app = make_dpop_app(**own)
    browser = signed_in_browser(app, dpop_provider)
    api(browser, "GET", "/api/up/items", status=200)
    bound = upstream.seen[-1]["headers"]["authorization"].removeprefix("DPoP ")
    browser.app = make_dpop_app(**own, **{"myapp.upstream.up.dpop": "false"})
    api(browser, "GET", "/api/up/items", status=200)
    bearer = upstream.seen[-1]["headers"]["authorization"].removeprefix("Bearer ")
    dbsession.commit()
    cipher = app.registry[Services].cipher
    queued = [(cipher.decrypt(row.token), row.token_type_hint) for row in dbsession.scalars(select(TokenRevocation))]
    assert queued == [(bound, "access_token")]
    assert bearer != bound and session_row(dbsession).ended_at is None


def test_a_token_refused_without_a_proof_by_a_provider_that_binds_refresh_tokens_leaves_the_session(
    make_dpop_app, dpop_provider, upstream, dbsession
):
    # RFC 9449 section 5: a provider may bind the refresh token to the session's key, and then refuses
    # the proofless request for a dpop = false upstream with invalid_grant while the token lives.
    app = make_dpop_app(**{"myapp.upstream.up.dpop": "false", "myapp.upstream.up.scope": "items:read"})
    browser = signed_in_browser(app, dpop_provider)
    dpop_provider.dpop_bound_refresh = True
    response = api(browser, "GET", "/api/up/items", status=502)
    assert response.json["error"] == "upstream_unavailable" and "invalid_grant" in response.json["message"]
    assert upstream.seen == []
    assert session_row(dbsession).ended_at is None
    # The session's refresh token, tried with its proof, was alive: the other upstreams go on.
    assert ("/token", "refresh token bound") in dpop_provider.dpop_refusals
    api(browser, "GET", "/api/readonly/x", status=200)
    assert upstream.seen[-1]["headers"]["authorization"].startswith("DPoP ")


def test_a_token_refused_without_a_proof_ends_the_session_when_its_refresh_token_is_dead(
    make_dpop_app, dpop_provider, upstream, dbsession
):
    app = make_dpop_app(**{"myapp.upstream.up.dpop": "false", "myapp.upstream.up.scope": "items:read"})
    browser = signed_in_browser(app, dpop_provider)
    dpop_provider.refresh_tokens.clear()  # revoked at the provider
    assert api(browser, "GET", "/api/up/items", status=401).json["error"] == "login_required"
    assert session_row(dbsession).end_reason == "refresh_failed"
    assert upstream.seen == []


def test_dpop_false_on_an_upstream_that_shares_the_sessions_bound_token_is_refused_at_startup(make_dpop_app):
    with pytest.raises(SystemExit, match=r"myapp.upstream.up.dpop = false needs a token of its own"):
        make_dpop_app(**{"myapp.upstream.up.dpop": "false"})


def test_a_dpop_header_from_the_browser_never_reaches_the_upstream(make_dpop_app, provider, upstream):
    with pytest.raises(SystemExit, match="'dpop' cannot be forwarded"):
        make_dpop_app("off", **{"myapp.upstream.up.forward_headers": "dpop"})
    browser = signed_in_browser(make_dpop_app("off"), provider)
    browser.get("/api/up/items", headers={"X-CSRF": "1", "DPoP": "forged"}, status=200)
    assert "dpop" not in upstream.seen[-1]["headers"] and upstream.seen[-1]["headers"]["authorization"].startswith("Bearer ")


def test_login_is_unchanged_when_dpop_is_off(make_dpop_app, dpop_provider, dbsession):
    app = make_dpop_app("off")
    _, query = start_login(Browser(app))
    assert "dpop_jkt" not in query
    signed_in_browser(app, dpop_provider)
    assert session_row(dbsession).dpop_key is None and dpop_provider.dpop_proofs == []


@pytest.mark.parametrize("own", [{"myapp.upstream.up.scope": "items:read"},
                                 {"myapp.upstream.up.exchange": "true", "myapp.upstream.up.resource": "https://items.test"}])
def test_an_upstreams_own_token_is_asked_for_with_a_proof_and_sent_bound(make_dpop_app, dpop_provider, upstream, dbsession, own):
    app = make_dpop_app(**own)
    browser = signed_in_browser(app, dpop_provider)
    api(browser, "GET", "/api/up/items", status=200)
    api(browser, "GET", "/api/up/items", status=200)
    scheme, _, token = upstream.seen[-1]["headers"]["authorization"].partition(" ")
    session_token = app.registry[Services].cipher.decrypt(session_row(dbsession).access_token)
    assert scheme == "DPoP" and token != session_token  # its own token, never the session's
    issued = dpop_provider.access_tokens[token]
    assert issued["grant"] in ("refresh_token", "token_exchange") and "jkt" in issued
    for seen in upstream.seen:
        _, _, jkt = verify_proof(seen["headers"]["dpop"], method="GET", url=upstream.url + "/base/items", access_token=token)
        assert jkt == issued["jkt"]
    token_proofs = [claims for path, _, claims in dpop_provider.dpop_proofs if path == "/token"]
    assert len(token_proofs) == 2  # the sign-in's, and the one for the upstream's token (kept, then reused)
    dbsession.commit()
    stored = dbsession.execute(select(SessionToken.token_type)).scalars().all()
    assert stored == ["DPoP"]


def test_the_authorization_code_is_bound_to_the_sessions_key_by_dpop_jkt(make_dpop_app, dpop_provider, dbsession):
    app = make_dpop_app()
    browser = Browser(app)
    _, query = start_login(browser)
    code = dpop_provider.grant(challenge=query["code_challenge"], nonce=query["nonce"], dpop_jkt=query["dpop_jkt"])
    browser.get("/auth/callback", params={"code": code, "state": query["state"], "iss": dpop_provider.issuer}, status=303)
    (_, proof, _), *_ = dpop_provider.dpop_proofs
    _, _, jkt = verify_proof(proof, method="POST", url=dpop_provider.issuer + "/token")
    assert jkt == query["dpop_jkt"]
    assert DPoPKey.from_json(json.dumps({"alg": "ES256", "jwk": private_jwk(app, session_row(dbsession))})).thumbprint() == jkt


def test_a_code_bound_to_another_key_is_not_redeemed(make_dpop_app, dpop_provider, dbsession):
    browser = Browser(make_dpop_app())
    _, query = start_login(browser)
    code = dpop_provider.grant(challenge=query["code_challenge"], nonce=query["nonce"], dpop_jkt=DPoPKey.generate().thumbprint())
    response = browser.get("/auth/callback", params={"code": code, "state": query["state"], "iss": dpop_provider.issuer},
                           expect_errors=True)
    assert response.status_int == 400 and dpop_provider.dpop_refusals == [("/token", "dpop_jkt")]
    assert dbsession.scalars(select(UserSession)).all() == []


def test_with_par_the_pushed_request_carries_dpop_jkt(make_dpop_app, dpop_provider):
    dpop_provider.offers_par = True
    response = Browser(make_dpop_app()).get("/login", status=303)
    assert "dpop_jkt" not in response.location
    (pushed,) = dpop_provider.pushed.values()
    assert len([value for name, value in pushed if name == "dpop_jkt"]) == 1


def test_dpop_jkt_cannot_be_set_by_hand(make_dpop_app):
    with pytest.raises(SystemExit, match="'dpop_jkt' cannot be set here"):
        make_dpop_app(**{"myapp.oidc.authorize_params": "dpop_jkt = abc"})


def test_a_sign_in_whose_key_cannot_be_read_is_refused_cleanly(make_dpop_app, dpop_provider, dbsession):
    from myapp.models import LoginTransaction

    browser = Browser(make_dpop_app())
    _, query = start_login(browser)
    retired = TokenCipher([Fernet.generate_key().decode()])
    dbsession.execute(update(LoginTransaction).values(dpop_key=retired.encrypt("{}")))
    dbsession.commit()
    code = dpop_provider.grant(challenge=query["code_challenge"], nonce=query["nonce"], dpop_jkt=query["dpop_jkt"])
    response = browser.get("/auth/callback", params={"code": code, "state": query["state"], "iss": dpop_provider.issuer},
                           expect_errors=True)
    assert response.status_int == 400 and "can no longer be completed" in response.text
    assert dpop_provider.dpop_proofs == [] and dbsession.scalars(select(UserSession)).all() == []


def test_the_dashboards_server_side_call_carries_a_proof_and_answers_a_nonce(make_dpop_app, dpop_provider, upstream, dbsession):
    app = make_dpop_app(**{"myapp.dashboard.upstream": "up"})
    browser = signed_in_browser(app, dpop_provider)
    upstream.body = b'{"notes": [{"id": "1", "text": "bound note", "created_at": "2026-01-01T00:00:00Z"}]}'
    upstream.dpop_nonce = "dash-nonce"
    page = browser.get("/", status=200)
    assert "bound note" in page.text
    access_token = app.registry[Services].cipher.decrypt(session_row(dbsession).access_token)
    first, retry = upstream.seen
    assert retry["headers"]["authorization"] == f"DPoP {access_token}"
    claims = verify_proof(retry["headers"]["dpop"], method="GET", url=upstream.url + "/base/notes", access_token=access_token)[1]
    assert claims["nonce"] == "dash-nonce" and upstream.dpop_refusals == ["use_dpop_nonce"]


def test_processes_learn_a_nonce_once_each(make_dpop_app, dpop_provider, upstream, dbsession):
    """Nonces are kept per process (docs/dpop.md): two apps on one database, as two processes, each
    pay one retry for the provider's nonce, and none after."""
    dpop_provider.dpop_nonce = "pn-1"
    first, second = make_dpop_app(), make_dpop_app()
    browser = signed_in_browser(first, dpop_provider)
    other = Browser(second)
    other.set_cookie(COOKIE, browser.session_cookie())

    def expire_and_call(b):
        dbsession.execute(update(UserSession).values(access_token_expires_at=utcnow() - timedelta(seconds=1)))
        dbsession.commit()
        api(b, "GET", "/api/up/items", status=200)

    assert len(dpop_provider.dpop_refusals) == 1  # the first process learnt it at the sign-in
    refusals = []
    for b in (other, other, browser, other):
        before = len(dpop_provider.dpop_refusals)
        expire_and_call(b)
        refusals.append(len(dpop_provider.dpop_refusals) - before)
    assert refusals == [1, 0, 0, 0]
    assert len(dpop_provider.refresh_uses) == 4


def test_htu_matches_the_wire_for_lower_case_escapes_and_characters_urllib3_encodes(make_dpop_app, dpop_provider, upstream):
    browser = signed_in_browser(make_dpop_app(), dpop_provider)
    for raw in ("/api/up/a%7eb/caf%c3%a9", "/api/up/x%5bb%5d"):
        browser.get(raw, headers={"X-CSRF": "1"}, extra_environ={"REQUEST_URI": raw}, status=200)
    assert upstream.dpop_refusals == [], upstream.dpop_failures
    assert [s["uri"] for s in upstream.seen] == ["/base/a%7Eb/caf%C3%A9", "/base/x%5Bb%5D"]


def test_an_access_token_no_header_may_carry_refuses_the_sign_in_cleanly(make_dpop_app, dpop_provider, dbsession):
    dpop_provider.token_response = lambda form: (200, {"access_token": "at-\u00e9\r\nX: y", "token_type": "DPoP",
                                                       "expires_in": 300})
    response = sign_in_at(Browser(make_dpop_app()), dpop_provider)
    assert response.status_int == 400 and "characters no header may carry" in response.text
    assert dbsession.scalars(select(UserSession)).all() == []


def test_a_bearer_answer_to_a_refresh_when_dpop_is_required_ends_the_session_and_is_revoked(
    make_dpop_app, dpop_provider, upstream, dbsession
):
    browser = signed_in_browser(make_dpop_app(), dpop_provider)
    dpop_provider.dpop_bearer = True
    dbsession.execute(update(UserSession).values(access_token_expires_at=utcnow() - timedelta(seconds=1)))
    dbsession.commit()
    assert api(browser, "GET", "/api/up/items", status=401).json["error"] == "login_required"
    assert upstream.seen == []  # the Bearer token never went anywhere
    dbsession.expire_all()
    assert session_row(dbsession).end_reason == "refresh_failed"
    details = dbsession.scalars(select(AuditEvent.detail).where(AuditEvent.event == "refresh_failed")).all()
    assert any("dpop_not_bound" in d for d in details)
    cipher = browser.app.registry[Services].cipher
    queued = {cipher.decrypt(t) for t in dbsession.scalars(select(TokenRevocation.token))}
    assert dpop_provider.refresh_tokens.keys() <= queued  # the refresh token it issued is queued for revocation


@pytest.mark.parametrize("own", [{"myapp.upstream.up.scope": "items:read"},
                                 {"myapp.upstream.up.exchange": "true", "myapp.upstream.up.resource": "https://items.test"}])
def test_a_bearer_answer_for_an_upstreams_own_token_when_dpop_is_required_leaves_the_session(
    make_dpop_app, dpop_provider, upstream, dbsession, own
):
    """dpop = required, and the provider answers Bearer to the request for one upstream's own token
    (a policy of that target's): that token is never used, and that upstream is out of reach (502).
    It ended the session, whose own tokens are bound and alive: every sign-in ended again at its
    first call to that upstream (at once, when the dashboard shows it). Nothing of the session's is
    lost: a refresh token the refresh grant rotated is kept as the session's (the provider spent the
    old one), as for any answer refused; an exchange's Bearer access token is queued for revocation."""
    app = make_dpop_app(**own)
    browser = signed_in_browser(app, dpop_provider)
    dpop_provider.dpop_bearer = True
    response = api(browser, "GET", "/api/up/items", status=502)
    assert response.json["error"] == "upstream_unavailable" and "dpop_not_bound" in response.json["message"]
    assert upstream.seen == []  # the Bearer token never went anywhere
    row = session_row(dbsession)
    assert row.ended_at is None and row.access_token_type == "DPoP"
    details = dbsession.scalars(select(AuditEvent.detail).where(AuditEvent.event == "refresh_failed")).all()
    assert details == ["dpop_not_bound (token for upstream up)"]
    cipher = app.registry[Services].cipher
    queued = {cipher.decrypt(t) for t in dbsession.scalars(select(TokenRevocation.token))}
    [issued] = [t for t, claims in dpop_provider.access_tokens.items() if claims["aud"] != "session" and "jkt" not in claims]
    if "myapp.upstream.up.exchange" in own:
        assert queued == {issued}
    else:
        assert queued == set()
        assert cipher.decrypt(row.refresh_token) in dpop_provider.refresh_tokens  # the rotated one, kept
    # The session's own calls go on, bound.
    dpop_provider.dpop_bearer = False
    api(browser, "GET", "/api/readonly/x", status=200)
    assert upstream.seen[-1]["headers"]["authorization"].startswith("DPoP ")


def test_a_refused_sign_in_leaves_no_token_it_issued_unrevoked(make_dpop_app, dpop_provider, dbsession):
    dpop_provider.dpop_bearer = True
    app = make_dpop_app()
    assert sign_in_at(Browser(app), dpop_provider).status_int == 502
    dbsession.commit()
    cipher = app.registry[Services].cipher
    queued = {cipher.decrypt(t) for t in dbsession.scalars(select(TokenRevocation.token))}
    assert len(dpop_provider.refresh_tokens) == 1 and dpop_provider.refresh_tokens.keys() <= queued


def test_a_provider_that_refuses_the_sessions_key_at_refresh_ends_the_session_after_one_call(
    make_dpop_app, dpop_provider, upstream, dbsession
):
    browser = signed_in_browser(make_dpop_app(), dpop_provider)
    dpop_provider.token_response = lambda form: (400, {"error": "invalid_dpop_proof"})
    dbsession.execute(update(UserSession).values(access_token_expires_at=utcnow() - timedelta(seconds=1)))
    dbsession.commit()
    token_calls = len([p for p, _, _ in dpop_provider.requests if p == "/token"])
    assert api(browser, "GET", "/api/up/items", status=401).json["error"] == "login_required"
    assert len([p for p, _, _ in dpop_provider.requests if p == "/token"]) == token_calls + 1
    assert upstream.seen == []


def test_the_token_endpoint_asking_for_a_nonce_again_after_the_retry_refuses_the_sign_in(
    make_dpop_app, dpop_provider, monkeypatch, dbsession
):
    from tests.support import fake_provider

    nonces = iter(f"pn-{i}" for i in range(10))
    original = fake_provider.verify_proof

    def rotating(*args, **kwargs):
        dpop_provider.dpop_nonce = next(nonces)
        return original(*args, **kwargs)

    monkeypatch.setattr(fake_provider, "verify_proof", rotating)
    response = sign_in_at(Browser(make_dpop_app()), dpop_provider)
    assert response.status_int == 400
    assert len([p for p, _, _ in dpop_provider.requests if p == "/token"]) == 2  # one retry, no loop
    assert dbsession.scalars(select(UserSession)).all() == []


def test_userinfo_answers_its_nonce_challenge_once(make_dpop_app, dpop_provider, dbsession):
    dpop_provider.userinfo_dpop_nonce = "ui-nonce"
    signed_in_browser(make_dpop_app(), dpop_provider)
    assert dpop_provider.dpop_refusals == [("/userinfo", "nonce")]
    (_, _, claims), = [p for p in dpop_provider.dpop_proofs if p[0] == "/userinfo"]
    assert claims["nonce"] == "ui-nonce"
    dbsession.commit()
    assert dbsession.scalars(select(User.name)).one() == "Alice From Userinfo"


def test_a_nonce_given_with_userinfo_s_claims_goes_with_the_next_proof(make_dpop_app, dpop_provider, dbsession):
    """RFC 9449 section 8.2: a server may give a new nonce with any answer. One given with the
    claims was dropped (only a 401's was kept), so the next sign-in's proof carried the old one and
    paid a refusal and a retry (helper-110)."""
    dpop_provider.userinfo_dpop_nonce = "ui-1"
    dpop_provider.userinfo_next_dpop_nonces = ["ui-2", "ui-3"]
    app = make_dpop_app()
    signed_in_browser(app, dpop_provider)
    signed_in_browser(app, dpop_provider)
    assert dpop_provider.dpop_refusals == [("/userinfo", "nonce")]  # the first proof's, which had none
    assert [claims["nonce"] for path, _, claims in dpop_provider.dpop_proofs if path == "/userinfo"] == ["ui-1", "ui-2"]


@pytest.mark.parametrize("algorithm", ["PS256", "ES256"])
def test_no_private_member_of_the_key_leaves_the_server(make_dpop_app, dpop_provider, upstream, dbsession, caplog, algorithm):
    dpop_provider.dpop_algorithms = [algorithm]
    app = make_dpop_app()
    caplog.set_level(logging.DEBUG)
    browser = Browser(app)
    responses = [sign_in_at(browser, dpop_provider)]
    jwk = private_jwk(app, session_row(dbsession))
    assert jwk["kty"] == ("RSA" if algorithm == "PS256" else "EC")
    private = [value for name, value in jwk.items() if name in ("d", "p", "q", "dp", "dq", "qi")]
    responses += [api(browser, "GET", "/api/up/items"), browser.get("/auth/user", headers={"X-CSRF": "1"})]
    texts = [r.text + str(r.headerlist) for r in responses] + [caplog.text]
    texts += [json.dumps(seen) for seen in upstream.seen] + [json.dumps(r) for r in dpop_provider.requests]
    assert private and not [p for p in private for text in texts if p in text]
    assert verify_proof(upstream.seen[-1]["headers"]["dpop"], method="GET", url=upstream.url + "/base/items")[0]["alg"] == algorithm


@pytest.mark.parametrize("token_type", [["DPoP"], "DPoP ", 5, None, "PoP"])
def test_a_token_type_that_is_neither_dpop_nor_bearer_refuses_the_sign_in(make_dpop_app, dpop_provider, dbsession, token_type):
    dpop_provider.token_response = lambda form: (200, {"access_token": "at-1", "token_type": token_type, "expires_in": 300})
    response = sign_in_at(Browser(make_dpop_app()), dpop_provider)
    assert response.status_int == 400 and "not a DPoP or Bearer token" in response.text
    assert dbsession.scalars(select(UserSession)).all() == []


def test_an_unreadable_key_ends_the_session_on_an_upstreams_own_token_and_on_the_dashboard(
    make_dpop_app, dpop_provider, upstream, dbsession
):
    app = make_dpop_app(**{"myapp.upstream.up.scope": "items:read", "myapp.dashboard.upstream": "up"})
    browser = signed_in_browser(app, dpop_provider)
    api(browser, "GET", "/api/up/items", status=200)  # the upstream's own token, minted and kept
    retired = TokenCipher([Fernet.generate_key().decode()])
    dbsession.execute(update(UserSession).values(dpop_key=retired.encrypt("{}")))
    dbsession.commit()
    assert api(browser, "GET", "/api/up/items", status=401).json["error"] == "login_required"
    assert len(upstream.seen) == 1
    assert browser.get("/", status=200)  # signed out, the landing page, never a 500
    dbsession.expire_all()
    assert session_row(dbsession).ended_at is not None


def test_a_request_sent_again_on_a_new_connection_carries_a_new_proof(make_dpop_app, dpop_provider, dbsession):
    """A kept connection the upstream closes as it reads the next request is sent again once, on a
    new connection (services/http1.py): with a proof of its own, since the upstream may have
    recorded the first one's jti (RFC 9449 section 11.1)."""
    heads = []

    class ClosesTheSecondRequestUnanswered(socketserver.StreamRequestHandler):
        def handle(self):
            while True:
                lines = []
                while (line := self.rfile.readline()) not in (b"\r\n", b""):
                    lines.append(line.decode().rstrip("\r\n"))
                if not lines:
                    return
                heads.append(lines)
                if len(heads) == 2:
                    return  # read, then closed without a byte of an answer
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")

    with socket_server(ClosesTheSecondRequestUnanswered) as url:
        app = make_dpop_app(**{"myapp.upstreams": f"raw = {url}\nup = {url}\nreadonly = {url}"})
        browser = signed_in_browser(app, dpop_provider)
        api(browser, "GET", "/api/raw/x", status=200)
        api(browser, "GET", "/api/raw/x", status=200)
    assert len(heads) == 3
    access_token = app.registry[Services].cipher.decrypt(session_row(dbsession).access_token)
    proofs = [next(line.split(": ", 1)[1] for line in head if line.lower().startswith("dpop:")) for head in heads]
    jtis = [verify_proof(proof, method="GET", url=url + "/x", access_token=access_token)[1]["jti"] for proof in proofs]
    assert len(set(jtis)) == 3
