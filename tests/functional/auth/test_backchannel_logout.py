"""OpenID Connect Back-Channel Logout through the whole app: every rule on the logout token."""

import time

import pytest
from sqlalchemy import func, select

from myapp.models import AuditEvent, SeenLogoutToken, User
from myapp.services.audit import AuditFilter, AuditLog
from tests.functional.auth.flows import (
    session_count,
    sign_in,
)
from tests.functional.conftest import Browser


def post_logout_token(app, token, status):
    response = Browser(app).post("/auth/backchannel-logout", {"logout_token": token}, status=status)
    assert response.headers["Cache-Control"] == "no-store"
    return response


def signed_in_with_sid(app, provider, sid):
    """A browser signed in as Alice, the provider's ID token naming ``sid`` (None: no sid)."""
    provider.sid = sid
    browser = Browser(app)
    sign_in(browser, provider)
    return browser


def test_backchannel_logout_by_sid_ends_that_session_only(app, provider, dbsession):
    first = signed_in_with_sid(app, provider, provider.sid)
    second = signed_in_with_sid(app, provider, "another-sid")
    post_logout_token(app, provider.logout_token(sid="another-sid"), 200)
    assert "Alice" in first.get("/").text
    assert "reason=provider_logout" in second.get("/posts", status=303).location
    assert [detail for _, _, detail in backchannel_records(dbsession)] == ["1 session(s) ended (by sid)"]


def test_backchannel_logout_by_sub_ends_all_of_the_users_sessions(app, provider, dbsession):
    browsers = [Browser(app) for _ in range(2)]
    for b in browsers:
        sign_in(b, provider)
    post_logout_token(app, provider.logout_token(sid=None), 200)
    assert session_count(dbsession) == 0


def test_a_logout_token_naming_the_user_and_a_sid_ends_their_sessions_whose_sid_is_unknown(app, provider, dbsession):
    """SPEC.md: the sessions with that sid, else all of that user's. A session signed in with an ID
    token that named no sid (Entra ID sends one only when configured to) may be the one the
    provider ended; one with another sid is not."""
    unknown = signed_in_with_sid(app, provider, None)
    other = signed_in_with_sid(app, provider, "another-sid")
    post_logout_token(app, provider.logout_token(sid="sid-of-the-provider"), 200)
    assert "reason=provider_logout" in unknown.get("/posts", status=303).location
    assert "Alice" in other.get("/").text
    assert [detail for _, _, detail in backchannel_records(dbsession)] == ["1 session(s) ended (by sub: signed in without a sid)"]


def backchannel_records(dbsession):
    events = dbsession.scalars(select(AuditEvent).where(AuditEvent.event == "backchannel_logout").order_by(AuditEvent.id))
    return [(e.user_id, e.actor_id, e.detail) for e in events]


def test_a_backchannel_logout_is_recorded_against_the_person_it_signed_out(app, provider, dbsession):
    """Its record named nobody, so the audit page filtered by that person left it out."""
    sign_in(Browser(app), provider)
    alice_id = dbsession.scalar(select(User.id).where(User.subject == "alice"))
    post_logout_token(app, provider.logout_token(sub=None), 200)
    assert backchannel_records(dbsession) == [(alice_id, None, "1 session(s) ended (by sid)")]
    events, _ = AuditLog(dbsession=dbsession).page(where=AuditFilter(user="alice", event="backchannel_logout"))
    assert len(events) == 1


def test_a_backchannel_logout_by_sub_is_recorded_against_that_person(app, provider, dbsession):
    for _ in range(2):
        sign_in(Browser(app), provider)
    alice_id = dbsession.scalar(select(User.id).where(User.subject == "alice"))
    post_logout_token(app, provider.logout_token(sid=None), 200)
    assert backchannel_records(dbsession) == [(alice_id, None, "2 session(s) ended (by sub)")]


def test_a_backchannel_logout_says_which_sessions_it_ended_for_having_no_sid(app, provider, dbsession):
    """A token naming the user and a sid also ends their sessions signed in without one: the record
    said "(by sid)" of those too."""
    provider.sid = None
    unknown = [Browser(app), Browser(app)]
    for browser in unknown:
        sign_in(browser, provider)
    alice_id = dbsession.scalar(select(User.id).where(User.subject == "alice"))
    post_logout_token(app, provider.logout_token(sid="sid-of-the-provider"), 200)
    provider.sid = "sid-of-the-provider"
    sign_in(Browser(app), provider)
    provider.sid = None
    sign_in(Browser(app), provider)
    post_logout_token(app, provider.logout_token(sid="sid-of-the-provider"), 200)
    assert backchannel_records(dbsession) == [
        (alice_id, None, "2 session(s) ended (by sub: signed in without a sid)"),
        (alice_id, None, "2 session(s) ended (1 by sid, 1 by sub: signed in without a sid)"),
    ]


def test_a_sid_longer_than_its_column_signs_in_and_is_ended_by_its_logout_token(app, provider, dbsession):
    """A provider's sid is opaque and of no length OIDC bounds: one longer than the column
    (255) made PostgreSQL refuse the session's INSERT, a 500 at the callback. It is kept as a
    digest, which the logout token's sid is matched against."""
    long_sid = "s" * 300
    provider.sid = long_sid
    browser = Browser(app)
    assert sign_in(browser, provider).status_code == 303
    assert "Alice" in browser.get("/").text
    provider.sid = long_sid[:-1] + "t"
    other = Browser(app)
    sign_in(other, provider)
    post_logout_token(app, provider.logout_token(sub=None, sid=long_sid), 200)
    assert "reason=provider_logout" in browser.get("/posts", status=303).location
    assert "Alice" in other.get("/").text


def test_a_logout_token_naming_only_a_sid_ends_no_session_whose_sid_is_unknown(app, provider, dbsession):
    provider.sid = None
    browser = Browser(app)
    sign_in(browser, provider)
    post_logout_token(app, provider.logout_token(sub=None, sid="sid-of-the-provider"), 200)
    assert "Alice" in browser.get("/").text


def test_backchannel_logout_replay_is_refused(app, provider, dbsession):
    token = provider.logout_token()
    post_logout_token(app, token, 200)
    response = post_logout_token(app, token, 400)
    assert response.json["error"] == "invalid_request"
    assert dbsession.scalar(select(func.count()).select_from(SeenLogoutToken)) == 1


@pytest.mark.parametrize(
    "overrides",
    [
        {"iss": "https://evil.example"},
        {"aud": "another-app"},
        {"iat": None},
        {"exp": int(time.time()) - 600},
        {"events": None},
        {"sub": None, "sid": None},
        {"nonce": "x"},
        {"jti": None},
    ],
)
def test_bad_logout_tokens_end_nothing(app, provider, dbsession, overrides):
    browser = Browser(app)
    sign_in(browser, provider)
    post_logout_token(app, provider.logout_token(**overrides), 400)
    assert session_count(dbsession) == 1


@pytest.mark.parametrize("claim", ["iat", "exp"])
def test_a_logout_token_whose_time_is_not_a_number_is_a_bad_token(app, provider, dbsession, claim):
    """NaN, which Python's JSON parser reads: an iat of NaN was a 500, an exp of NaN never expired."""
    browser = Browser(app)
    sign_in(browser, provider)
    response = post_logout_token(app, provider.logout_token(**{claim: float("nan")}), 400)
    assert response.json["error"] == "invalid_request"
    assert session_count(dbsession) == 1


def test_bad_logout_token_signature_and_type(app, provider, dbsession):
    from joserfc.jwk import RSAKey

    browser = Browser(app)
    sign_in(browser, provider)
    impostor = RSAKey.generate_key(2048, parameters={"kid": "key-1"})
    claims_token = provider.logout_token()
    post_logout_token(app, claims_token.rsplit(".", 1)[0] + "." + provider.sign({}, key=impostor).rsplit(".", 1)[1], 400)
    post_logout_token(app, provider.logout_token(header={"typ": "at+jwt"}), 400)
    assert post_logout_token(app, "", 400).json["message"].startswith("The request has no logout_token")
    assert post_logout_token(app, "garbage", 400).json["message"] == (
        "The logout token is not a signed JWT that names its issuer."
    )
    # Posted as JSON: no form field, and said so (helper-142: "not from a provider this app trusts").
    response = Browser(app).post_json("/auth/backchannel-logout", {"logout_token": claims_token}, status=400)
    assert response.json["message"].startswith("The request has no logout_token")
    assert session_count(dbsession) == 1


@pytest.mark.parametrize("part", ["payload", "header"])
def test_a_logout_token_nested_past_pythons_limit_is_400(app, provider, dbsession, part):
    """JSON nested deeper than Python's stack raises RecursionError, not ValueError: the issuer
    read before any signature check answered a stranger 500 (helper-116)."""
    import base64

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header, payload = b'{"alg":"RS256"}', b'{"iss":"%s"}' % provider.issuer.encode()
    nested = b"[" * 5000
    token = ".".join([b64(nested if part == "header" else header), b64(nested if part == "payload" else payload), "AAAA"])
    browser = Browser(app)
    sign_in(browser, provider)
    post_logout_token(app, token, 400)
    assert session_count(dbsession) == 1


def test_backchannel_logout_needs_no_cookie_or_csrf(app, provider):
    response = Browser(app).post("/auth/backchannel-logout", {"logout_token": provider.logout_token()})
    assert response.status_int == 200


def test_oversized_backchannel_request(app):
    response = Browser(app).post("/auth/backchannel-logout", {"logout_token": "x" * 70000}, status=400)
    assert response.json["message"] == "The request is too large."


def test_backchannel_logout_with_an_unreadable_body(app):
    response = Browser(app).post(
        "/auth/backchannel-logout", b"x", headers={"Content-Type": "multipart/form-data"}, status=400
    )
    assert response.json["error"] == "bad_request"


def test_a_logout_that_ends_no_session_is_logged_not_audited(app, provider, dbsession, caplog):
    import logging

    caplog.set_level(logging.INFO)
    post_logout_token(app, provider.logout_token(sid="nobody-has-this-sid"), 200)
    assert dbsession.scalar(select(func.count()).select_from(AuditEvent)) == 0
    assert "back-channel logout ended no session" in caplog.text


@pytest.mark.parametrize(
    "claims", [{"sub": "ali\x00ce"}, {"sub": "ali\ud800"}, {"jti": "j\x00ti"}, {"jti": "j\udc00"}],
    ids=["sub NUL", "sub lone surrogate", "jti NUL", "jti lone surrogate"],
)
def test_a_logout_token_naming_what_no_database_stores_is_refused_not_a_500(app, provider, dbsession, claims):
    """PostgreSQL refuses a NUL in text and no driver encodes a lone surrogate: such a subject or
    jti was a 500 (the lookup, or recording the jti). A sid is compared by its stored form."""
    sign_in(Browser(app), provider)
    post_logout_token(app, provider.logout_token(**claims), 400)
    assert session_count(dbsession) == 1


def test_what_is_wrong_with_the_provider_is_logged_not_told_to_whoever_posts(make_app, provider, caplog):
    """Anyone may post a logout token: a provider misconfigured is a 400 with plain words, its
    details (an issuer setting, the provider's algorithms) in the log only (helper-127)."""
    provider.metadata_overrides["id_token_signing_alg_values_supported"] = [["RS256"]]
    answer = post_logout_token(make_app(), provider.logout_token(sid=None), status=400)
    assert answer.json == {"error": "invalid_request", "message": "The logout token cannot be checked now."}
    assert any("provider_misconfigured: The provider signs ID tokens" in r.getMessage() for r in caplog.records)


def test_a_provider_that_does_not_answer_is_logged_not_told_to_whoever_posts(make_app, provider, caplog):
    """The same for a provider that is down: its discovery document unreachable is a 400 with the
    same plain words (a provider's address or status is not for whoever posts), the reason logged."""
    provider.discovery_status = 503
    answer = post_logout_token(make_app(), provider.logout_token(sid=None), status=400)
    assert answer.json == {"error": "invalid_request", "message": "The logout token cannot be checked now."}
    assert answer.headers["Cache-Control"] == "no-store"
    assert any(r.getMessage().startswith("back-channel logout refused: provider_unavailable: ") for r in caplog.records)
