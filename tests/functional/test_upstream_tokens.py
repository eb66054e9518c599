"""A token for each upstream (SPEC.md "Tokens for each upstream"), through the whole app, against
the programmable provider (which records what each access token was minted for) and a recording
upstream, on real sockets.
"""

import logging
import time
from datetime import timedelta

import pytest
from sqlalchemy import delete, func, select, update

from myapp.models import AuditEvent, SessionToken, TokenRevocation, UserSession
from myapp.models.meta import utcnow
from myapp.services import Services
from myapp.services import tokens as tokens_module
from myapp.services.oidc import client as client_module
from myapp.services.sessions import EndReason, minted_label
from myapp.services.tokens import UpstreamTokenRefused
from tests.conftest import TEST_PUBLIC_URL
from tests.functional.test_proxy import (
    REFUSED_WITH_A_ROTATED_REFRESH_TOKEN,
    api,
    queued_for_revocation,
    row_of,
    tokens_of,
)

GRAPH_SCOPE = "https://graph.example.test/.default"
OWN_RESOURCE = "https://api.example.test/own"
AUDIENCE = "https://api.example.test/audience"
EXCHANGED = "https://api.example.test/exchanged"


@pytest.fixture
def dbsession(committed):
    return committed


@pytest.fixture
def app(make_proxy_app, served_upstream):
    url = served_upstream.url
    return make_proxy_app(
        **{
            "myapp.upstreams": (
                f"plain = {url}/plain\ngraph = {url}/graph\nown = {url}/own\naud = {url}/aud\nswap = {url}/swap\n"
                f"readonly = {url}/ro\nup = {url}/up"
            ),
            "myapp.upstream.graph.scope": GRAPH_SCOPE,
            "myapp.upstream.own.resource": OWN_RESOURCE,
            "myapp.upstream.aud.token_params": f"audience = {AUDIENCE}",
            "myapp.upstream.swap.exchange": "true",
            "myapp.upstream.swap.resource": EXCHANGED,
        }
    )


def token_seen(upstream, index=-1) -> str:
    return upstream.seen[index]["headers"]["authorization"].removeprefix("Bearer ")


def refuse_the_token_minted_a_minute_ago(upstream, dbsession) -> None:
    """The upstream refuses the token it last saw, minted a minute ago: the next call gets another."""
    upstream.refuse_tokens.add(token_seen(upstream))
    dbsession.execute(update(SessionToken).values(refreshed_at=utcnow() - timedelta(minutes=1)))
    dbsession.commit()


def token_requests(provider):
    return [dict(form) for form in provider.token_forms]


def test_each_upstream_gets_a_token_minted_for_it(app, signed_in, upstream, provider):
    browser = signed_in(app=app)
    for name in ("plain", "graph", "own", "aud"):
        api(browser, "GET", f"/api/{name}/x", status=200)
    plain, graph, own, aud = (token_seen(upstream, i) for i in range(4))
    assert plain == "at-1"  # an upstream without settings of its own: the session's token, as before
    assert provider.access_tokens[graph]["aud"] == "scope:" + GRAPH_SCOPE
    assert provider.access_tokens[own]["aud"] == OWN_RESOURCE
    assert provider.access_tokens[aud]["aud"] == AUDIENCE
    assert len({plain, graph, own, aud}) == 4
    forms = token_requests(provider)
    assert [f["grant_type"] for f in forms] == ["refresh_token"] * 3
    assert (forms[0]["scope"], forms[1]["resource"], forms[2]["audience"]) == (GRAPH_SCOPE, OWN_RESOURCE, AUDIENCE)


def test_a_rotated_refresh_token_is_stored_before_the_next_upstream_uses_it(app, signed_in, upstream, provider):
    browser = signed_in(app=app)
    api(browser, "GET", "/api/graph/x", status=200)
    api(browser, "GET", "/api/own/x", status=200)
    assert provider.reuse_detected == 0
    assert provider.refresh_uses[0] == "rt-1" and provider.refresh_uses[1] != "rt-1"
    tokens = tokens_of(signed_in.store, browser)
    # The session keeps its own access and ID tokens; only the refresh token moved on.
    assert tokens.access_token == "at-1" and tokens.refresh_token in provider.refresh_tokens


def test_an_upstream_token_is_kept_until_it_is_due(app, signed_in, upstream, provider):
    browser = signed_in(app=app)
    for _ in range(3):
        api(browser, "GET", "/api/graph/x", status=200)
    assert len(provider.token_forms) == 1
    assert len({token_seen(upstream, i) for i in range(3)}) == 1


def test_an_upstream_token_is_read_from_the_database_by_another_process(app, make_proxy_app, signed_in, upstream, provider):
    browser = signed_in(app=app)
    api(browser, "GET", "/api/graph/x", status=200)
    browser.app = restarted(app, make_proxy_app)
    api(browser, "GET", "/api/graph/x", status=200)
    assert len(provider.token_forms) == 1
    assert token_seen(upstream, 0) == token_seen(upstream, 1)


def restarted(app, make_proxy_app, **changed):
    """The same app made again, as a restart makes it, with ``changed`` settings."""
    settings = {k: v for k, v in app.registry.settings.items() if k.startswith(("myapp.", "sqlalchemy."))}
    return make_proxy_app(**{**settings, **changed})


def re_pointed(app, name: str, path: str) -> dict:
    """``myapp.upstreams`` with upstream ``name`` at another path of the recording server."""
    lines = app.registry.settings["myapp.upstreams"].splitlines()
    return {"myapp.upstreams": "\n".join(
        f"{name} = {line.split('=', 1)[1].strip().rsplit('/', 1)[0]}{path}" if line.split("=", 1)[0].strip() == name
        else line for line in lines
    )}


@pytest.mark.parametrize("change", ["server", "scope", "servers swapped"])
def test_a_token_stored_for_an_upstream_a_restart_changed_is_never_sent_to_it(
    app, make_proxy_app, signed_in, upstream, provider, dbsession, change
):
    """A session's token of an upstream's own was found by the upstream's name alone: after a
    restart that pointed the name at another server (or swapped two upstreams' servers), or asked
    for another scope, the stored token went on to whatever was now behind the name until it
    expired. Another is asked for at once, with the settings as they are now, and kept."""
    browser = signed_in(app=app)
    api(browser, "GET", "/api/graph/x", status=200)
    api(browser, "GET", "/api/own/x", status=200)
    before = {"graph": token_seen(upstream, 0), "own": token_seen(upstream, 1)}
    changed = {
        "server": re_pointed(app, "graph", "/graph-moved"),
        "scope": {"myapp.upstream.graph.scope": GRAPH_SCOPE + " offline_access"},
        "servers swapped": {"myapp.upstreams": app.registry.settings["myapp.upstreams"]
                            .replace("/graph\n", "/TMP\n").replace("/own\n", "/graph\n").replace("/TMP\n", "/own\n")},
    }[change]
    browser.app = restarted(app, make_proxy_app, **changed)
    minted = len(provider.token_forms)
    api(browser, "GET", "/api/graph/x", status=200)
    sent = token_seen(upstream)
    assert sent not in before.values()
    assert len(provider.token_forms) == minted + 1
    if change == "scope":
        assert token_requests(provider)[-1]["scope"] == GRAPH_SCOPE + " offline_access"
        assert provider.access_tokens[sent]["aud"] == "scope:" + GRAPH_SCOPE + " offline_access"
    else:
        assert provider.access_tokens[sent]["aud"] == "scope:" + GRAPH_SCOPE
    api(browser, "GET", "/api/graph/x", status=200)  # the new one is stored and kept
    assert token_seen(upstream) == sent and len(provider.token_forms) == minted + 1
    if change == "servers swapped":
        api(browser, "GET", "/api/own/x", status=200)
        assert token_seen(upstream) not in before.values()
        assert upstream.seen[-1]["path"].startswith("/graph")
    else:
        api(browser, "GET", "/api/own/x", status=200)  # unchanged: its token goes on
        assert token_seen(upstream) == before["own"]


def test_a_token_stored_before_what_it_was_minted_for_was_recorded_is_asked_for_again_once(
    app, make_proxy_app, signed_in, upstream, provider, dbsession
):
    """A token stored before migration 0011 records nothing (None): nobody knows what it was minted
    for, so it is not sent; another is asked for once, in any process, and then kept."""
    browser = signed_in(app=app)
    api(browser, "GET", "/api/graph/x", status=200)
    first = token_seen(upstream)
    dbsession.execute(update(SessionToken).values(minted_for=None))
    dbsession.commit()
    browser.app = restarted(app, make_proxy_app)
    api(browser, "GET", "/api/graph/x", status=200)
    api(browser, "GET", "/api/graph/x", status=200)
    assert token_seen(upstream, -1) == token_seen(upstream, -2) != first
    assert len(provider.token_forms) == 2
    dbsession.expire_all()
    assert dbsession.execute(select(SessionToken.minted_for)).scalars().all() == [
        minted_label(browser.app.registry.settings["myapp"].upstreams["graph"].minted_for, token_seen(upstream))
    ]


def test_a_token_written_by_code_that_does_not_record_what_it_was_minted_for_is_not_taken_for_the_one_recorded(
    app, make_proxy_app, signed_in, upstream, provider, dbsession
):
    """A rolling upgrade to migration 0011: a process of the version before it mints a token with
    its settings and writes it over the row, leaving the label the new version wrote as it was.
    The label names the very token it was written with, so the other token reads as minted for
    nothing known, and is not sent by a process whose settings the label named."""
    browser = signed_in(app=app)
    api(browser, "GET", "/api/graph/x", status=200)
    first = token_seen(upstream)
    cipher = app.registry[Services].cipher
    dbsession.execute(update(SessionToken).values(access_token=cipher.encrypt("minted-by-the-old-version")))
    dbsession.commit()
    browser.app = restarted(app, make_proxy_app)
    api(browser, "GET", "/api/graph/x", status=200)
    assert token_seen(upstream) not in (first, "minted-by-the-old-version")
    assert len(provider.token_forms) == 2


def test_an_exchanged_token_replaced_because_a_restart_changed_its_upstream_is_queued_for_revocation(
    app, make_proxy_app, signed_in, upstream, provider, dbsession
):
    """Exchanged, it is not of the session's grant: no refresh token's revocation covers it, and
    its row, which would have queued it at the session's end, now holds the new one."""
    browser = signed_in(app=app)
    api(browser, "GET", "/api/swap/x", status=200)
    old = token_seen(upstream)
    browser.app = restarted(app, make_proxy_app, **{"myapp.upstream.swap.resource": EXCHANGED + "/v2"})
    api(browser, "GET", "/api/swap/x", status=200)
    assert token_seen(upstream) != old
    assert provider.access_tokens[token_seen(upstream)]["aud"] == EXCHANGED + "/v2"
    assert old in queued_for_revocation(dbsession, browser)


def test_an_exchanged_token_of_an_upstream_a_restart_set_to_the_refresh_grant_is_queued_for_revocation(
    app, make_proxy_app, signed_in, upstream, provider, dbsession
):
    """``exchange`` turned off: the upstream's token now comes of the session's refresh token, and
    the exchanged one its row held is not of that grant; replaced while live, it is queued, as the
    row said it was exchanged (whatever the upstream is set to now)."""
    browser = signed_in(app=app)
    api(browser, "GET", "/api/swap/x", status=200)
    old = token_seen(upstream)
    browser.app = restarted(app, make_proxy_app, **{"myapp.upstream.swap.exchange": "false"})
    api(browser, "GET", "/api/swap/x", status=200)
    assert token_seen(upstream) != old
    assert token_requests(provider)[-1]["grant_type"] == "refresh_token"
    assert old in queued_for_revocation(dbsession, browser)


def test_a_401_gets_a_new_upstream_token_and_one_retry(app, signed_in, upstream, provider):
    browser = signed_in(app=app)
    api(browser, "GET", "/api/graph/x", status=200)
    first = token_seen(upstream)
    upstream.refuse_tokens.add(first)
    # Minted moments ago: the 401 is passed back rather than minting again at once.
    api(browser, "GET", "/api/graph/x", status=401)
    assert len(provider.token_forms) == 1


def test_minting_an_upstreams_token_leaves_the_sessions_own_401_retry_alone(app, signed_in, upstream, provider):
    """Rotating the refresh token while minting graph's token is not a refresh of the session's
    own access token: its 401 still gets one refresh and one retry (helper-37; it was passed back
    for 30 s)."""
    browser = signed_in(app=app)
    api(browser, "GET", "/api/graph/x", status=200)
    assert provider.refresh_uses[0] == "rt-1" and tokens_of(signed_in.store, browser).refresh_token != "rt-1"
    upstream.refuse_tokens.add("at-1")
    api(browser, "GET", "/api/plain/x", status=200)
    assert token_seen(upstream, -2) == "at-1" and token_seen(upstream) != "at-1"
    assert len(provider.token_forms) == 2 and provider.reuse_detected == 0


def test_token_exchange_sends_the_exchanged_token_never_the_sessions(app, signed_in, upstream, provider):
    provider.access_tokens["at-1"] = {"aud": "session", "sub": "alice", "grant": "authorization_code"}
    browser = signed_in(app=app)
    api(browser, "GET", "/api/swap/x", status=200)
    sent = token_seen(upstream)
    assert sent != "at-1"
    assert provider.access_tokens[sent] == {"aud": EXCHANGED, "sub": "alice", "grant": "token_exchange"}
    (form,) = token_requests(provider)
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert form["subject_token"] == "at-1"
    assert form["subject_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert form["resource"] == EXCHANGED
    assert provider.refresh_uses == []  # the session's refresh token was not needed


def test_token_exchange_of_an_expired_session_token_refreshes_it_first(app, signed_in, upstream, provider):
    browser = signed_in(app=app, expires_in=0)
    api(browser, "GET", "/api/swap/x", status=200)
    grants = [f["grant_type"] for f in token_requests(provider)]
    assert grants == ["refresh_token", "urn:ietf:params:oauth:grant-type:token-exchange"]
    assert token_requests(provider)[1]["subject_token"] == tokens_of(signed_in.store, browser).access_token


@pytest.mark.parametrize("error", ["invalid_target", "invalid_scope"])
def test_a_refused_target_is_a_502_for_that_upstream_only(app, signed_in, upstream, provider, dbsession, error):
    provider.refused_targets[OWN_RESOURCE] = error
    browser = signed_in(app=app)
    response = api(browser, "GET", "/api/own/x", status=502)
    assert response.json["error"] == "upstream_unavailable" and error in response.json["message"]
    assert upstream.seen == []
    assert row_of(dbsession, browser).ended_at is None
    api(browser, "GET", "/api/graph/x", status=200)
    api(browser, "GET", "/api/plain/x", status=200)


def test_invalid_grant_for_one_upstreams_target_leaves_the_session_and_its_other_upstreams(
    app, signed_in, upstream, provider, dbsession
):
    """Entra ID answers invalid_grant (consent_required, AADSTS65001) for a resource the person has
    not consented to, or that conditional access keeps from them, though the refresh token lives:
    the session ended, and with that upstream on the dashboard every sign-in ended on its first page
    (helper-131). The session's own refresh tells: it lives, so only this upstream is refused."""
    provider.refused_targets[OWN_RESOURCE] = "invalid_grant"
    browser = signed_in(app=app)
    response = api(browser, "GET", "/api/own/x", status=502)
    assert response.json["error"] == "upstream_unavailable" and "invalid_grant" in response.json["message"]
    assert [f.get("resource") for f in token_requests(provider)] == [OWN_RESOURCE, None]  # then the session's own
    assert row_of(dbsession, browser).ended_at is None and upstream.seen == []
    api(browser, "GET", "/api/plain/x", status=200)
    api(browser, "GET", "/api/graph/x", status=200)
    # Asked again, as the session's tokens changed since (graph's scope rotated them), and refused
    # again; the session's own refresh of a moment ago tells it lives, without another.
    api(browser, "GET", "/api/own/x", status=502)
    assert [f.get("resource") for f in token_requests(provider)] == [OWN_RESOURCE, None, None, OWN_RESOURCE]
    assert row_of(dbsession, browser).ended_at is None


def test_a_refusal_told_apart_by_the_sessions_own_refresh_is_held_at_what_that_refresh_made(
    app, signed_in, upstream, provider, dbsession
):
    """Held at the session's token generation of before that refresh, the refusal was asked again
    by the very next call, and after the hold each call cost a refused request and a refresh of
    the session's own tokens (helper-134)."""
    provider.refused_targets[OWN_RESOURCE] = "invalid_grant"
    browser = signed_in(app=app)
    for _ in range(3):
        api(browser, "GET", "/api/own/x", status=502)
    assert [f.get("resource") for f in token_requests(provider)] == [OWN_RESOURCE, None]


def test_a_refusal_holds_a_request_that_read_the_session_before_it_was_refused(app, signed_in, upstream, provider):
    """Held at the generation the checking refresh made, a request that read the session before
    (in flight meanwhile) found no match, dropped the hold and asked again (helper-138)."""
    provider.refused_targets[OWN_RESOURCE] = "invalid_grant"
    browser = signed_in(app=app)
    before = browser.session_row  # as a request that read the session before the refusal has it
    api(browser, "GET", "/api/own/x", status=502)
    manager = app.registry[Services].tokens
    with pytest.raises(UpstreamTokenRefused):
        manager.access_token(before, upstream="own")
    assert [f.get("resource") for f in token_requests(provider)] == [OWN_RESOURCE, None]


def test_invalid_grant_for_an_upstream_whose_refresh_token_is_dead_ends_the_session(
    app, signed_in, upstream, provider, dbsession
):
    """The same answer when the refresh token is dead (revoked, expired, reused): the session's own
    refresh is refused too, and the session ends, as SPEC.md has it for a refresh."""
    browser = signed_in(app=app)
    provider.refresh_tokens.clear()
    response = api(browser, "GET", "/api/own/x", status=401)
    assert response.json["error"] == "login_required"
    assert row_of(dbsession, browser).ended_at is not None
    assert len(token_requests(provider)) == 2 and upstream.seen == []


def refusals_audited(dbsession, upstream_name: str) -> int:
    dbsession.commit()
    return len(dbsession.scalars(select(AuditEvent).where(
        AuditEvent.event == "refresh_failed", AuditEvent.detail.contains(f"upstream {upstream_name}")
    )).all())


def test_a_refused_upstream_token_is_not_asked_for_again_at_once(
    app, signed_in, upstream, provider, dbsession, monkeypatch
):
    """A refusal is the provider's configuration or policy (a scope it does not know): asked again
    on every call, a page and its calls each made one more token request and one more audit record
    of the same refusal. The session's later calls to that upstream are refused at once, for
    REFUSAL_HOLD, without the provider; then it is asked again. Other upstreams and sessions go on."""
    monkeypatch.setattr(tokens_module, "REFUSAL_HOLD", timedelta(seconds=0.5))
    provider.refused_targets[OWN_RESOURCE] = "invalid_target"
    browser = signed_in(app=app)
    for _ in range(3):
        response = api(browser, "GET", "/api/own/x", status=502)
        assert response.json["error"] == "upstream_unavailable" and "invalid_target" in response.json["message"]
    assert [f.get("resource") for f in token_requests(provider)] == [OWN_RESOURCE]
    assert refusals_audited(dbsession, "own") == 1
    api(browser, "GET", "/api/graph/x", status=200)  # another upstream of the same session
    other = signed_in(app=app, refresh_token="rt-other")  # the same upstream for another session
    api(other, "GET", "/api/own/x", status=502)
    assert [f.get("resource") for f in token_requests(provider)].count(OWN_RESOURCE) == 2
    assert upstream.seen[-1]["path"].startswith("/graph") and len(upstream.seen) == 1
    time.sleep(0.6)
    del provider.refused_targets[OWN_RESOURCE]  # set right at the provider meanwhile
    api(browser, "GET", "/api/own/x", status=200)
    assert provider.access_tokens[token_seen(upstream)]["aud"] == OWN_RESOURCE


def test_a_refusal_is_asked_again_once_the_sessions_tokens_changed(
    app, signed_in, upstream, provider, dbsession
):
    """What the provider refused was asked with the session's tokens of then: refreshed since (in
    any process), it is asked again at once, with the new ones."""
    provider.refused_targets[OWN_RESOURCE] = "invalid_target"
    browser = signed_in(app=app)
    api(browser, "GET", "/api/own/x", status=502)
    api(browser, "GET", "/api/own/x", status=502)
    assert len(token_requests(provider)) == 1
    dbsession.execute(update(UserSession).values(token_generation=UserSession.token_generation + 1))
    dbsession.commit()
    api(browser, "GET", "/api/own/x", status=502)
    assert len(token_requests(provider)) == 2


def test_a_provider_that_does_not_answer_is_asked_again_at_once(app, signed_in, upstream, provider, dbsession):
    """Only a refusal is held: a provider that fails (a 503, a timeout) may answer the next call."""
    answers = iter([(503, {"error": "temporarily_unavailable"})])
    provider.token_response = lambda form: next(answers, None) or provider.issue_tokens(form, provider.token_forms[-1])
    browser = signed_in(app=app)
    api(browser, "GET", "/api/own/x", status=503)
    api(browser, "GET", "/api/own/x", status=200)
    assert len(token_requests(provider)) == 2


def test_invalid_grant_for_an_upstream_token_ends_the_session(app, signed_in, upstream, provider, dbsession):
    browser = signed_in(app=app, refresh_token="rt-dead")
    del provider.refresh_tokens["rt-dead"]
    response = api(browser, "GET", "/api/graph/x", status=401)
    assert response.json["error"] == "login_required"
    assert row_of(dbsession, browser).end_reason == "refresh_failed"
    assert upstream.seen == []


def test_a_session_without_a_refresh_token_loses_only_the_upstreams_that_need_one(
    app, signed_in, upstream, provider, dbsession
):
    # A provider that issued no refresh token (a scope without offline_access): its sessions live
    # on their own access token; ending them at the first call to such an upstream made a dashboard
    # that shows one sign its people out right after every sign-in.
    browser = signed_in(app=app, refresh_token=None)
    response = api(browser, "GET", "/api/graph/x", status=502)
    assert response.json["error"] == "upstream_unavailable"
    assert upstream.seen == [] and provider.token_forms == []
    assert row_of(dbsession, browser).ended_at is None
    api(browser, "GET", "/api/plain/x", status=200)
    assert token_seen(upstream) == "at-1"


def test_an_upstream_token_whose_refresh_names_another_user_ends_the_session(
    app, signed_in, upstream, provider, dbsession
):
    # SPEC.md: an ID token in a refresh response must name the session's user, else the session
    # ends; the refresh that mints an upstream's token is one too, and its token is never sent.
    browser = signed_in(app=app)
    provider.id_token_claims = {"sub": "mallory"}
    assert api(browser, "GET", "/api/graph/x", status=401).json["error"] == "login_required"
    assert upstream.seen == []
    assert row_of(dbsession, browser).end_reason == "refresh_failed"
    stored = select(func.count(SessionToken.id)).where(SessionToken.session_id == browser.session_row.id)
    assert dbsession.scalars(stored).one() == 0
    assert queued_for_revocation(dbsession, browser) == {"rt-1", *provider.refresh_tokens}


@pytest.mark.parametrize("answer", REFUSED_WITH_A_ROTATED_REFRESH_TOKEN)
def test_a_refresh_token_rotated_by_a_refused_upstream_token_answer_is_kept(
    app, signed_in, upstream, provider, dbsession, answer
):
    """As for the session's own refresh: the provider spent the session's refresh token on the
    refused answer, and the session goes on with the one it issued with it."""
    provider.token_response = lambda form: (200, {**answer, "refresh_token": "rt-rotated"})
    browser = signed_in(app=app)
    assert api(browser, "GET", "/api/graph/x", status=503).json["error"] == "provider_unavailable"
    assert row_of(dbsession, browser).ended_at is None and upstream.seen == []
    assert tokens_of(signed_in.store, browser).refresh_token == "rt-rotated"
    assert queued_for_revocation(dbsession, browser) == set()


def test_a_provider_that_is_down_is_a_503_and_keeps_the_session(app, signed_in, upstream, provider, dbsession):
    provider.token_response = lambda form: (503, "down")
    browser = signed_in(app=app)
    assert api(browser, "GET", "/api/graph/x", status=503).json["error"] == "provider_unavailable"
    assert row_of(dbsession, browser).ended_at is None


def test_ending_a_session_removes_its_upstream_tokens(app, signed_in, upstream, provider, dbsession):
    browser = signed_in(app=app)
    api(browser, "GET", "/api/graph/x", status=200)
    api(browser, "GET", "/api/own/x", status=200)
    count = lambda: dbsession.scalar(select(func.count()).select_from(SessionToken))  # noqa: E731
    dbsession.commit()
    assert count() == 2
    signed_in.store.end(browser.session_row, "logout")
    dbsession.commit()
    assert count() == 0


def test_a_new_session_that_takes_a_purged_sessions_row_id_never_gets_its_upstream_token(
    app, signed_in, upstream, provider, dbsession
):
    """SQLite gives a new row the highest rowid plus one, so once a purge deletes the newest
    session the next one takes its id: a token this process cached for the old one is not for it."""
    first = signed_in(app=app)
    api(first, "GET", "/api/graph/x", status=200)
    cached = token_seen(upstream)
    row_id = first.session_row.id
    dbsession.execute(delete(UserSession).where(UserSession.id == row_id))
    dbsession.commit()
    second = signed_in(app=app, refresh_token="rt-2")
    if second.session_row.id != row_id:
        # PostgreSQL's sequence never gives an id twice: the row takes it as it would on SQLite.
        dbsession.execute(update(UserSession).where(UserSession.id == second.session_row.id).values(id=row_id))
        dbsession.commit()
    api(second, "GET", "/api/graph/x", status=200)
    assert token_seen(upstream) != cached
    assert provider.refresh_uses[-1] == "rt-2"


def test_upstream_tokens_are_stored_encrypted(app, signed_in, upstream, provider, dbsession):
    browser = signed_in(app=app)
    api(browser, "GET", "/api/graph/x", status=200)
    dbsession.commit()
    stored = dbsession.scalars(select(SessionToken)).one()
    assert token_seen(upstream).encode() not in bytes(stored.access_token)
    assert stored.upstream == "graph" and stored.expires_at is not None


def test_an_upstream_for_other_providers_is_refused_before_anything_is_sent(
    make_proxy_app, signed_in, upstream, provider, dbsession
):
    app = make_proxy_app(
        **{
            "myapp.providers": "default = Staff\npartners = Partners",
            "myapp.oidc.partners.issuer": "https://partners.example.test",
            "myapp.oidc.partners.client_id": "p",
            "myapp.oidc.partners.client_secret": "p-secret",
            "myapp.upstreams": f"partner-api = {upstream.url}/p\nup = {upstream.url}/up\nreadonly = {upstream.url}/ro",
            "myapp.upstream.partner-api.providers": "partners",
        }
    )
    browser = signed_in(app=app)
    response = api(browser, "GET", "/api/partner-api/x", status=403)
    assert response.json == {"error": "wrong_provider", "message": response.json["message"]}
    assert upstream.seen == [] and provider.token_forms == []
    # A denied action, audited as every other 403 is (SPEC.md: the audit log has denied actions).
    dbsession.expire_all()
    denials = dbsession.scalars(select(AuditEvent).where(AuditEvent.event == "access_denied")).all()
    assert [(d.detail, d.request_id) for d in denials] == [
        ("GET /api/partner-api/x (wrong provider)", response.headers["X-Request-ID"])
    ]
    api(browser, "GET", "/api/up/x", status=200)


def test_the_authorization_request_asks_for_every_resource(app, provider):
    from tests.functional.conftest import Browser

    response = Browser(app).get("/login", status=303)
    assert f"resource={OWN_RESOURCE.replace(':', '%3A').replace('/', '%2F')}" in response.location
    # Exchanged and scope-only upstreams add nothing to the grant.
    assert "exchanged" not in response.location and "graph" not in response.location


def test_the_lock_backend_unreachable_is_503_service_unavailable(
    make_proxy_app, signed_in, upstream, provider, dbsession, caplog
):
    """SPEC.md: 503 service_unavailable when the lock backend cannot be reached; the session stays."""
    app = make_proxy_app(**{"myapp.lock.backend": "redis", "myapp.redis.url": "redis://:hunter2@127.0.0.1:9/0"})
    browser = signed_in(app=app, expires_in=0)
    response = api(browser, "GET", "/api/up/x", status=503)
    assert response.json["error"] == "service_unavailable" and response.headers["Retry-After"] == "5"
    assert row_of(dbsession, browser).ended_at is None and upstream.seen == []
    # What failed, said in one line, and never the password of the URL.
    [line] = [m for m in caplog.messages if m.startswith("refresh lock unavailable: ")]
    assert line.startswith("refresh lock unavailable: ConnectionError: ") and "127.0.0.1:9" in line
    assert "hunter2" not in caplog.text


def test_upstream_tokens_that_live_no_longer_than_the_leeway_are_warned_of_once(
    make_proxy_app, served_upstream, signed_in, upstream, provider, caplog
):
    """The provider's tokens live 300 s: a 400 s leeway has every call mint again, which the log
    says once, naming the upstream and the setting."""
    url = served_upstream.url
    app = make_proxy_app(**{
        "myapp.upstreams": f"graph = {url}/graph\nreadonly = {url}/ro\nup = {url}/up",
        "myapp.upstream.graph.scope": GRAPH_SCOPE,
        "myapp.tokens.refresh_leeway": "400",
    })
    browser = signed_in(app=app, expires_in=3600)
    with caplog.at_level("WARNING", logger="myapp.services.tokens"):
        api(browser, "GET", "/api/graph/x", status=200)
        api(browser, "GET", "/api/graph/x", status=200)
    assert len(provider.token_forms) == 2
    assert [r.getMessage() for r in caplog.records if "refresh_leeway" in r.getMessage()] == [
        "Access tokens for upstream 'graph' expire within myapp.tokens.refresh_leeway (400 s) of being issued,"
        " so every call refreshes them; set the leeway below the tokens' lifetime"
    ]


def exchange_answering(provider, **extra):
    """The provider's token exchange, its answer with ``extra`` (a refresh token, say)."""
    issue = provider.issue_tokens

    def answer(form):
        status, body = issue(form, provider.token_forms[-1])
        if form.get("grant_type") == "urn:ietf:params:oauth:grant-type:token-exchange" and status == 200:
            body = {**body, **extra}
        return status, body

    return answer


def revocations(provider) -> list[tuple[str, str]]:
    """(token, token_type_hint) of each revocation request the provider received."""
    return [(form.get("token"), form.get("token_type_hint")) for path, form, _ in provider.requests if path == "/revoke"]


def end_by(how, browser, app, signed_in, dbsession):
    if how == "sign-out":
        csrf = browser.get("/auth/user", headers={"X-CSRF": "1"}).json["csrf_token"]
        browser.post("/logout", {"csrf_token": csrf}, headers={"Origin": TEST_PUBLIC_URL}, status=303)
    elif how == "revoked":  # from the sessions page, by an administrator, by back-channel logout
        signed_in.store.end(browser.session_row, EndReason.REVOKED_BY_ADMIN)
        dbsession.commit()
    else:  # its time ran out: the revoker's sweep ends it
        dbsession.execute(update(UserSession).values(expires_at=utcnow() - timedelta(minutes=1)))
        dbsession.commit()
        app.registry[Services].revoker.end_expired_sessions()


@pytest.mark.parametrize("how", ["sign-out", "revoked", "expired"])
def test_ending_a_session_revokes_its_exchanged_token(app, signed_in, upstream, provider, dbsession, caplog, how):
    """An exchanged token's source is the session's access token, not the refresh token that ending
    the session revokes: it is queued (encrypted) and revoked as an access token. A token minted
    with the session's refresh token (graph) goes with that refresh token, as before."""
    caplog.set_level(logging.DEBUG)
    provider.access_tokens["at-1"] = {"aud": "session", "sub": "alice", "grant": "authorization_code"}
    browser = signed_in(app=app)
    api(browser, "GET", "/api/swap/x", status=200)
    api(browser, "GET", "/api/graph/x", status=200)
    exchanged, graph = token_seen(upstream, 0), token_seen(upstream, 1)
    provider.requests.clear()
    end_by(how, browser, app, signed_in, dbsession)
    queued = dbsession.execute(select(TokenRevocation.token, TokenRevocation.token_type_hint)).all()
    assert "access_token" in [hint for _, hint in queued]
    assert queued_for_revocation(dbsession, browser) >= {exchanged}
    assert all(exchanged.encode() not in bytes(token) for token, _ in queued)
    app.registry[Services].revoker.run_once()
    assert (exchanged, "access_token") in revocations(provider)
    assert graph not in [token for token, _ in revocations(provider)]
    assert dbsession.scalars(select(TokenRevocation)).all() == []
    assert exchanged not in caplog.text


def test_a_refresh_token_an_exchange_answers_with_is_stored_encrypted_and_revoked_with_the_session(
    app, signed_in, upstream, provider, dbsession, caplog
):
    """Never revoked while the session lives (at Keycloak it would end the session's own client
    session, and with it the session's refresh token), never dropped: revoked when the session ends."""
    caplog.set_level(logging.DEBUG)
    provider.access_tokens["at-1"] = {"aud": "session", "sub": "alice", "grant": "authorization_code"}
    provider.token_response = exchange_answering(provider, refresh_token="rt-exchanged")
    browser = signed_in(app=app)
    api(browser, "GET", "/api/swap/x", status=200)
    assert revocations(provider) == []
    dbsession.commit()
    stored = dbsession.scalars(select(SessionToken)).one()
    assert stored.exchanged and b"rt-exchanged" not in bytes(stored.refresh_token)
    # Minted again (its token refused a minute after), with no refresh token this time: the stored
    # one is kept, and so is the new access token, which it need not cover (another grant, at a
    # provider that makes each exchange one of its own).
    provider.token_response = exchange_answering(provider)
    refuse_the_token_minted_a_minute_ago(upstream, dbsession)
    api(browser, "GET", "/api/swap/x", status=200)
    assert len([f for f in token_requests(provider) if "subject_token" in f]) == 2
    dbsession.commit()
    kept = [token for token in dbsession.scalars(select(SessionToken.refresh_token)) if token is not None]
    assert [app.registry[Services].cipher.decrypt(token) for token in kept] == ["rt-exchanged"]
    assert revocations(provider) == []
    signed_in.store.end(browser.session_row, EndReason.REVOKED)
    dbsession.commit()
    queued = dbsession.execute(select(TokenRevocation.token, TokenRevocation.token_type_hint)).all()
    assert all(b"rt-exchanged" not in bytes(token) for token, _ in queued)
    app.registry[Services].revoker.run_once()
    assert sorted(revocations(provider)) == sorted(
        [("rt-1", "refresh_token"), ("rt-exchanged", "refresh_token"), (token_seen(upstream), "access_token")]
    )
    assert "rt-exchanged" not in caplog.text


def exchanging_on_redis(make_proxy_app, served_upstream, provider, committed_database_url):
    """An app whose upstream "swap" is reached by token exchange, with the Redis lock: a session
    can end (or be replaced) while the provider answers, which the database lock would not let
    happen. Skipped on SQLite, whose one writer the lock's transaction holds meanwhile."""
    from tests.conftest import redis_url

    if committed_database_url.startswith("sqlite"):
        pytest.skip("SQLite's one writer: the lock's transaction holds it while the provider answers")
    url = served_upstream.url
    app = make_proxy_app(**{
        "myapp.upstreams": f"swap = {url}/swap\ngraph = {url}/graph\nreadonly = {url}/ro\nup = {url}/up",
        "myapp.upstream.swap.exchange": "true",
        "myapp.upstream.swap.resource": EXCHANGED,
        "myapp.upstream.graph.scope": GRAPH_SCOPE,
        "myapp.lock.backend": "redis", "myapp.redis.url": redis_url(),
    })
    provider.access_tokens["at-1"] = {"aud": "session", "sub": "alice", "grant": "authorization_code"}
    return app


@pytest.mark.redis
def test_a_session_ended_while_its_token_is_exchanged_revokes_what_the_exchange_issued(
    make_proxy_app, served_upstream, signed_in, upstream, provider, dbsession, committed_database_url
):
    """With the Redis lock an administrator's revocation ends a session without the refresh lock,
    while the provider answers the exchange: what it issued is stored nowhere, and is revoked."""
    app = exchanging_on_redis(make_proxy_app, served_upstream, provider, committed_database_url)
    browser = signed_in(app=app)
    exchange = exchange_answering(provider, refresh_token="rt-exchanged")

    def ended_meanwhile(form):
        answer = exchange(form)
        with app.registry[Services].database.own_transaction() as other, other.begin():
            other.execute(update(UserSession).values(ended_at=utcnow(), end_reason="revoked_by_admin"))
        return answer

    provider.token_response = ended_meanwhile
    assert api(browser, "GET", "/api/swap/x", status=401).json["error"] == "login_required"
    issued = next(t for t, what in provider.access_tokens.items() if what["grant"] == "token_exchange")
    assert queued_for_revocation(dbsession, browser) == {"rt-exchanged"}
    assert issued not in queued_for_revocation(dbsession, browser)  # covered by its refresh token (RFC 7009 2.1)


@pytest.mark.redis
def test_a_session_replaced_in_its_session_at_the_provider_while_its_token_is_exchanged_revokes_nothing(
    make_proxy_app, served_upstream, signed_in, upstream, provider, dbsession, committed_database_url
):
    """A step-up (or a sign-in again behind single sign-on) replaces the session, in the same
    session at the provider, while the provider answers an exchange for it (the Redis lock: the
    sign-in does not wait for it). The replaced session's own tokens are left to expire, not
    revoked (revoking any refresh token of that client session at Keycloak would end the new
    session's); what the exchange issued is left to expire too, not queued."""
    app = exchanging_on_redis(make_proxy_app, served_upstream, provider, committed_database_url)
    browser = signed_in(app=app)
    exchange = exchange_answering(provider, refresh_token="rt-exchanged")
    provider.token_response = ending_meanwhile(app, browser, dbsession, "replaced", exchange)
    assert api(browser, "GET", "/api/swap/x", status=401).json["error"] == "login_required"
    assert dbsession.scalar(select(func.count()).select_from(UserSession).where(UserSession.ended_at.is_(None))) == 1
    assert queued_for_revocation(dbsession, browser) == set()


def ending_meanwhile(app, browser, dbsession, how, answer):
    """A token endpoint that answers with ``answer(form)`` and, meanwhile, ends the session:
    ``replaced`` in the same session at the provider by a new one that goes on (as remember() does
    for a step-up or a sign-in again behind single sign-on: ended, not revoked), or
    ``revoked_by_admin`` (which queues its tokens)."""
    from myapp.models import User
    from myapp.services.sessions import SessionStore
    from myapp.services.tokenset import TokenSet
    from tests.functional.conftest import load_settings_of

    dbsession.execute(update(UserSession).values(provider_sid="sid-1"))
    dbsession.commit()
    services = app.registry[Services]

    def answering(form):
        answered = answer(form)
        with services.database.own_transaction() as other, other.begin():
            store = SessionStore(dbsession=other, cipher=services.cipher, settings=load_settings_of(app).session)
            old = store.rows.read(browser.session_row.id).session
            if how == "replaced":
                store.end(old, EndReason.REPLACED, revoke=False)
                store.create(user=other.get(User, old.user_id), provider_sid="sid-1",
                             tokens=TokenSet(access_token="at-new", refresh_token="rt-new"))
            else:
                store.end(old, EndReason.REVOKED_BY_ADMIN)
        return answered

    return answering


ROTATING = {"access_token": "at-rotated", "token_type": "Bearer", "expires_in": 300, "refresh_token": "rt-rotated"}


@pytest.mark.redis
@pytest.mark.parametrize("how", ["replaced", "revoked_by_admin"])
@pytest.mark.parametrize(
    "path, answer",
    [
        ("/api/up/x", ROTATING),  # the session's own refresh, its answer used
        ("/api/up/x", {"token_type": "Bearer", "refresh_token": "rt-rotated"}),  # refused for its access token
        ("/api/graph/x", ROTATING),  # an upstream's own token minted with the refresh token
        ("/api/graph/x", {"token_type": "Bearer", "refresh_token": "rt-rotated"}),
    ],
)
def test_a_refresh_token_rotated_for_a_session_replaced_meanwhile_beside_a_live_one_is_not_revoked(
    make_proxy_app, served_upstream, signed_in, upstream, provider, dbsession, committed_database_url, path, answer, how
):
    """The rule of exchanges (4e66897) holds for the refresh token a refresh rotated while the session
    was replaced in the same session at the provider (the Redis lock: the sign-in does not wait for
    the refresh): that token belongs to the client session the new session's refresh token belongs
    to at Keycloak, and revoking it there would end the new session. Ended otherwise (an
    administrator), it is revoked, as before."""
    app = exchanging_on_redis(make_proxy_app, served_upstream, provider, committed_database_url)
    browser = signed_in(app=app, expires_in=0 if path == "/api/up/x" else 300)
    provider.token_response = ending_meanwhile(app, browser, dbsession, how, lambda form: (200, dict(answer)))
    assert api(browser, "GET", path, status=401).json["error"] == "login_required"
    assert upstream.seen == []
    queued = queued_for_revocation(dbsession, browser)
    assert queued == ({"rt-1", "rt-rotated"} if how == "revoked_by_admin" else set())


@pytest.mark.parametrize("answer", REFUSED_WITH_A_ROTATED_REFRESH_TOKEN)
def test_a_refresh_token_in_a_refused_exchange_answer_is_revoked_with_the_session(
    app, signed_in, upstream, provider, dbsession, answer
):
    """An exchange answer refused for its access token (none, or of another type) that carries a
    refresh token: that token is live at the provider. Not revoked at once (at Keycloak it belongs
    to the session's own client session), not dropped either: kept (encrypted) and revoked when the
    session ends, as the refresh token of an exchange answer that is used."""
    provider.access_tokens["at-1"] = {"aud": "session", "sub": "alice", "grant": "authorization_code"}
    provider.token_response = lambda form: (
        (200, {**answer, "refresh_token": "rt-exchanged"}) if "subject_token" in form else provider.issue_tokens(form, form)
    )
    browser = signed_in(app=app)
    assert api(browser, "GET", "/api/swap/x", status=503).json["error"] == "provider_unavailable"
    assert row_of(dbsession, browser).ended_at is None and upstream.seen == []
    assert queued_for_revocation(dbsession, browser) == set()
    stored = dbsession.scalars(select(SessionToken.refresh_token)).all()
    assert all(b"rt-exchanged" not in bytes(token) for token in stored if token is not None)
    assert signed_in.store.rows.upstream_token(browser.session_row.id, "swap") is None
    # The next exchange is answered properly: that token is used, and the kept refresh token stays.
    provider.token_response = None
    api(browser, "GET", "/api/swap/x", status=200)
    assert provider.access_tokens[token_seen(upstream)]["aud"] == EXCHANGED
    # The upstream's row holds only a token it can use (no empty one kept for the refresh token).
    assert signed_in.store.rows.upstream_token(browser.session_row.id, "swap").access_token == token_seen(upstream)
    signed_in.store.end(browser.session_row, EndReason.REVOKED)
    dbsession.commit()
    # That access token too: the refused answer's refresh token is of another grant.
    assert queued_for_revocation(dbsession, browser) == {"rt-1", "rt-exchanged", token_seen(upstream)}


# Answers refused for their access token that carry one the provider would take all the same.
REFUSED_WITH_A_USABLE_ACCESS_TOKEN = [
    {"access_token": "at-refused"},
    {"access_token": "at-refused", "token_type": "mac"},
    {"access_token": "at-refused", "token_type": "DPoP"},  # bound, and no proof was sent
    {"access_token": "at-refused", "token_type": "Bearer", "refresh_token": 7},
]


@pytest.mark.parametrize("answer", REFUSED_WITH_A_USABLE_ACCESS_TOKEN)
def test_an_access_token_in_a_refused_exchange_answer_is_revoked(app, signed_in, upstream, provider, dbsession, answer):
    """An exchange answer refused for its access token, with no refresh token: the access token is
    live at the provider all the same, a grant of its own that nothing else revokes. It is queued
    at once (token_type_hint=access_token: at Keycloak an access token only goes on the revoked
    list, the client session stays) and revoked by the revoker's next pass; the session goes on."""
    provider.access_tokens["at-1"] = {"aud": "session", "sub": "alice", "grant": "authorization_code"}
    provider.token_response = lambda form: (
        (200, dict(answer)) if "subject_token" in form else provider.issue_tokens(form, form)
    )
    browser = signed_in(app=app)
    assert api(browser, "GET", "/api/swap/x", status=503).json["error"] == "provider_unavailable"
    assert row_of(dbsession, browser).ended_at is None and upstream.seen == []
    queued = dbsession.execute(select(TokenRevocation.token, TokenRevocation.token_type_hint)).all()
    assert [hint for _, hint in queued] == ["access_token"] and b"at-refused" not in bytes(queued[0][0])
    assert queued_for_revocation(dbsession, browser) == {"at-refused"}
    app.registry[Services].revoker.run_once()
    assert revocations(provider) == [("at-refused", "access_token")]
    # The session goes on: the next exchange answered properly is used.
    provider.token_response = None
    api(browser, "GET", "/api/swap/x", status=200)
    assert row_of(dbsession, browser).ended_at is None


@pytest.mark.parametrize("answer", [{"token_type": "Bearer"}, {"access_token": "at refused", "token_type": "Bearer"}])
def test_a_refused_exchange_answer_without_a_usable_access_token_queues_nothing(
    app, signed_in, upstream, provider, dbsession, answer
):
    """None, or one no header (nor the provider) could take: nothing to revoke."""
    provider.access_tokens["at-1"] = {"aud": "session", "sub": "alice", "grant": "authorization_code"}
    provider.token_response = lambda form: (
        (200, dict(answer)) if "subject_token" in form else provider.issue_tokens(form, form)
    )
    browser = signed_in(app=app)
    assert api(browser, "GET", "/api/swap/x", status=503).json["error"] == "provider_unavailable"
    assert queued_for_revocation(dbsession, browser) == set()


@pytest.mark.redis
@pytest.mark.parametrize("how", ["replaced", "revoked_by_admin"])
def test_an_access_token_in_a_refused_exchange_answer_for_a_session_replaced_beside_a_live_one_is_not_revoked(
    make_proxy_app, served_upstream, signed_in, upstream, provider, dbsession, committed_database_url, how
):
    """The one rule (revoke_issued_later): ended beside a live session in the same session at the
    provider, what was issued for it is left to expire; ended otherwise, it is revoked."""
    app = exchanging_on_redis(make_proxy_app, served_upstream, provider, committed_database_url)
    browser = signed_in(app=app)
    issue = provider.issue_tokens

    def refused(form):
        return (200, {"access_token": "at-refused"}) if "subject_token" in form else issue(form, form)

    provider.token_response = ending_meanwhile(app, browser, dbsession, how, refused)
    api(browser, "GET", "/api/swap/x")
    assert upstream.seen == []
    assert queued_for_revocation(dbsession, browser) == ({"rt-1", "at-refused"} if how == "revoked_by_admin" else set())


@pytest.mark.parametrize("second", ["used", "refused"])
@pytest.mark.parametrize("how", ["revoked", "replaced"])
def test_a_refresh_token_an_exchange_replaced_is_revoked_with_the_session(
    app, signed_in, upstream, provider, dbsession, second, how
):
    """A later exchange for the same upstream answers with another refresh token (its answer used, or
    refused for its access token): the earlier one is still live at a provider that makes each
    exchange a grant of its own (RFC 8693 ties no issued token to an earlier one), and was
    overwritten, revoked by nobody. Not revoked at once either (at Keycloak it would be one of the
    session's own client session, and revoking it would end the session's refresh token): kept and
    revoked when the session ends, with the other, unless the session was replaced beside a live one
    in the same session at the provider (then nothing is queued, as for the session's own)."""
    provider.access_tokens["at-1"] = {"aud": "session", "sub": "alice", "grant": "authorization_code"}
    provider.token_response = exchange_answering(provider, refresh_token="rt-exchanged-1")
    browser = signed_in(app=app)
    api(browser, "GET", "/api/swap/x", status=200)
    # Its token refused a minute after it was minted: exchanged again.
    refuse_the_token_minted_a_minute_ago(upstream, dbsession)
    if second == "used":
        provider.token_response = exchange_answering(provider, refresh_token="rt-exchanged-2")
        api(browser, "GET", "/api/swap/x", status=200)
    else:
        provider.token_response = lambda form: (
            (200, {"token_type": "Bearer", "refresh_token": "rt-exchanged-2"}) if "subject_token" in form
            else provider.issue_tokens(form, form)
        )
        api(browser, "GET", "/api/swap/x", status=503)
    assert len([f for f in token_requests(provider) if "subject_token" in f]) == 2
    assert revocations(provider) == [] and queued_for_revocation(dbsession, browser) == set()
    stored = dbsession.scalars(select(SessionToken.refresh_token)).all()
    assert all(b"rt-exchanged" not in bytes(token) for token in stored if token is not None)
    if how == "revoked":
        signed_in.store.end(browser.session_row, EndReason.REVOKED)
    else:  # as remember() ends a session a sign-in replaced in the same session at the provider
        signed_in.store.end(browser.session_row, EndReason.REPLACED, revoke=False)
    dbsession.commit()
    assert dbsession.scalars(select(SessionToken)).all() == []
    expected = {"rt-1", "rt-exchanged-1", "rt-exchanged-2"} if how == "revoked" else set()
    assert queued_for_revocation(dbsession, browser) == expected


def test_the_same_refresh_token_answered_again_is_revoked_once(app, signed_in, upstream, provider, dbsession):
    provider.access_tokens["at-1"] = {"aud": "session", "sub": "alice", "grant": "authorization_code"}
    provider.token_response = exchange_answering(provider, refresh_token="rt-exchanged")
    browser = signed_in(app=app)
    api(browser, "GET", "/api/swap/x", status=200)
    refuse_the_token_minted_a_minute_ago(upstream, dbsession)
    api(browser, "GET", "/api/swap/x", status=200)
    signed_in.store.end(browser.session_row, EndReason.REVOKED)
    dbsession.commit()
    assert sorted(t for t, _ in dbsession.execute(select(TokenRevocation.token_type_hint, TokenRevocation.id))) == [
        "refresh_token", "refresh_token"
    ]
    assert queued_for_revocation(dbsession, browser) == {"rt-1", "rt-exchanged"}


def queued_at_the_end(signed_in, browser, dbsession) -> list[str]:
    """End the session, then every token queued for revocation, in clear, duplicates kept."""
    signed_in.store.end(browser.session_row, EndReason.REVOKED)
    dbsession.commit()
    cipher = browser.app.registry[Services].cipher
    return sorted(cipher.decrypt(token) for token in dbsession.scalars(select(TokenRevocation.token)))


def test_a_refresh_token_a_refused_exchange_answer_repeats_is_revoked_once(
    app, signed_in, upstream, provider, dbsession
):
    """The same refresh token in a used answer, then in two answers refused for their access token
    (none): it is kept once, so queued once when the session ends, as when a used answer repeats it."""
    provider.access_tokens["at-1"] = {"aud": "session", "sub": "alice", "grant": "authorization_code"}
    provider.token_response = exchange_answering(provider, refresh_token="rt-exchanged")
    browser = signed_in(app=app)
    api(browser, "GET", "/api/swap/x", status=200)
    provider.token_response = lambda form: (
        (200, {"refresh_token": "rt-exchanged"}) if "subject_token" in form else provider.issue_tokens(form, form)
    )
    for _ in range(2):
        refuse_the_token_minted_a_minute_ago(upstream, dbsession)
        api(browser, "GET", "/api/swap/x", status=503)
    queued = queued_at_the_end(signed_in, browser, dbsession)
    assert queued == ["rt-1", "rt-exchanged"]


def test_a_refresh_token_kept_from_a_refused_exchange_answer_then_used_is_revoked_once(
    app, signed_in, upstream, provider, dbsession
):
    """Refused for its access token (none) first, then the same refresh token in a used answer: the
    upstream's row takes it from the row that kept it, so it is queued once."""
    provider.access_tokens["at-1"] = {"aud": "session", "sub": "alice", "grant": "authorization_code"}
    provider.token_response = lambda form: (
        (200, {"refresh_token": "rt-exchanged"}) if "subject_token" in form else provider.issue_tokens(form, form)
    )
    browser = signed_in(app=app)
    api(browser, "GET", "/api/swap/x", status=503)
    provider.token_response = exchange_answering(provider, refresh_token="rt-exchanged")
    api(browser, "GET", "/api/swap/x", status=200)
    queued = queued_at_the_end(signed_in, browser, dbsession)
    assert queued == ["rt-1", "rt-exchanged"]


def test_a_refused_exchange_answer_echoing_the_sessions_own_access_token_does_not_revoke_it(
    app, signed_in, upstream, provider, dbsession
):
    """An exchange answer refused for its access token (no token_type) whose access token is the
    subject token itself, the session's own: revoking it would leave the live session a dead token
    until it expires. Nothing is queued, and the session's other calls go on with it."""
    provider.access_tokens["at-1"] = {"aud": "session", "sub": "alice", "grant": "authorization_code"}
    provider.token_response = lambda form: (
        (200, {"access_token": form["subject_token"]}) if "subject_token" in form
        else provider.issue_tokens(form, form)
    )
    browser = signed_in(app=app)
    assert api(browser, "GET", "/api/swap/x", status=503).json["error"] == "provider_unavailable"
    assert row_of(dbsession, browser).ended_at is None
    assert queued_for_revocation(dbsession, browser) == set()


def test_a_refresh_token_two_upstreams_were_answered_with_is_revoked_once(app, signed_in, dbsession):
    """The same refresh token in the answers for two upstreams: the first upstream's row keeps it,
    the second's access token is queued of its own, and the refresh token once."""
    from myapp.services.sessions import UpstreamToken

    browser = signed_in(app=app)
    rows = signed_in.store.rows
    later = utcnow() + timedelta(minutes=5)
    for name in ("swap", "aud"):
        assert rows.write_upstream_token(
            browser.session_row.id, name, UpstreamToken(f"at-{name}", later, utcnow(), None, exchanged=True),
            refresh_token="rt-exchanged",
        )
    rows.dbsession.commit()
    assert rows.upstream_token(browser.session_row.id, "aud").access_token == "at-aud"
    queued = queued_at_the_end(signed_in, browser, dbsession)
    assert queued == ["at-aud", "rt-1", "rt-exchanged"]


@pytest.mark.parametrize("whose", ["its own", "another upstream's"])
def test_a_refused_exchange_answer_repeating_a_token_an_upstream_still_uses_does_not_revoke_it(
    make_proxy_app, served_upstream, signed_in, upstream, provider, dbsession, whose
):
    """An exchange answer refused for its access token (no token_type) that repeats the token an
    upstream's row holds and serves (a provider that answers an exchange with the token it issued
    for the same target before): queuing it had the revoker kill that upstream's token, every call
    to it refused until the next exchange. It is the session's own (its row's: revoked with the
    session when exchanged, else with the refresh token it came from): nothing is queued now."""
    url = served_upstream.url
    app = make_proxy_app(**{
        "myapp.upstreams": f"swap = {url}/swap\ntwin = {url}/twin\nreadonly = {url}/ro\nup = {url}/up",
        "myapp.upstream.swap.exchange": "true",
        "myapp.upstream.swap.resource": EXCHANGED,
        "myapp.upstream.twin.exchange": "true",
        "myapp.upstream.twin.token_params": f"audience = {AUDIENCE}",
    })
    provider.access_tokens["at-1"] = {"aud": "session", "sub": "alice", "grant": "authorization_code"}
    browser = signed_in(app=app)
    api(browser, "GET", "/api/swap/x", status=200)
    held = token_seen(upstream)
    provider.token_response = lambda form: (
        (200, {"access_token": held}) if "subject_token" in form else provider.issue_tokens(form, form)
    )
    if whose == "its own":
        # Refused once, a minute after it was minted: exchanged again, and the refused answer repeats it.
        refuse_the_token_minted_a_minute_ago(upstream, dbsession)
        api(browser, "GET", "/api/swap/x", status=503)
        upstream.refuse_tokens.clear()
    else:
        api(browser, "GET", "/api/twin/x", status=503)
    assert row_of(dbsession, browser).ended_at is None
    assert queued_for_revocation(dbsession, browser) == set()
    app.registry[Services].revoker.run_once()
    assert revocations(provider) == []
    api(browser, "GET", "/api/swap/x", status=200)
    assert token_seen(upstream) == held
    # Revoked with the session all the same, as swap's exchanged token.
    assert held in queued_at_the_end(signed_in, browser, dbsession)


EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


def test_an_exchange_refusing_the_sessions_access_token_refreshes_it_and_exchanges_again(
    app, signed_in, upstream, provider, dbsession
):
    """An exchange's invalid_grant is about its subject token, the session's own access token, not
    its refresh token: one the provider no longer takes though the app still thinks it fresh (no
    expires_in, so used until refused; a provider whose clock runs ahead) ended the session, whose
    refresh token was alive. The session's token is refreshed (under the same lock) and the
    exchange asked again, once, with the new one."""
    browser = signed_in(app=app)  # "at-1" is no token the provider knows any more
    api(browser, "GET", "/api/swap/x", status=200)
    assert [f["grant_type"] for f in token_requests(provider)] == [EXCHANGE, "refresh_token", EXCHANGE]
    forms = token_requests(provider)
    assert forms[0]["subject_token"] == "at-1" and forms[2]["subject_token"] == tokens_of(signed_in.store, browser).access_token
    assert provider.access_tokens[token_seen(upstream)]["aud"] == EXCHANGED
    assert row_of(dbsession, browser).ended_at is None


def test_an_exchange_refusing_a_fresh_access_token_is_a_502_for_that_upstream_only(
    app, signed_in, upstream, provider, dbsession, monkeypatch
):
    """The session's token, refreshed moments ago, still refused: the provider will not exchange it
    (its policy, not a dead session). That upstream is out of reach; the session and the others go on.
    (Asked again at once, without the hold that keeps a refusal: tested on its own below.)"""
    monkeypatch.setattr(tokens_module, "REFUSAL_HOLD", timedelta(0))
    provider.token_response = lambda form: (
        (400, {"error": "invalid_grant"}) if form.get("grant_type") == EXCHANGE
        else provider.issue_tokens(form, provider.token_forms[-1])
    )
    browser = signed_in(app=app)
    response = api(browser, "GET", "/api/swap/x", status=502)
    assert response.json["error"] == "upstream_unavailable" and "invalid_grant" in response.json["message"]
    assert [f["grant_type"] for f in token_requests(provider)] == [EXCHANGE, "refresh_token", EXCHANGE]
    assert row_of(dbsession, browser).ended_at is None and upstream.seen == []
    api(browser, "GET", "/api/graph/x", status=200)
    api(browser, "GET", "/api/plain/x", status=200)
    # Refused again a moment later: the session's token, minted moments ago, is not refreshed again.
    api(browser, "GET", "/api/swap/x", status=502)
    assert [f["grant_type"] for f in token_requests(provider)][-1:] == [EXCHANGE]
    assert row_of(dbsession, browser).ended_at is None


def test_an_exchange_refused_with_a_dead_refresh_token_behind_it_ends_the_session(
    app, signed_in, upstream, provider, dbsession
):
    browser = signed_in(app=app)
    provider.refresh_tokens.clear()  # revoked at the provider, and "at-1" with it
    assert api(browser, "GET", "/api/swap/x", status=401).json["error"] == "login_required"
    assert row_of(dbsession, browser).end_reason == "refresh_failed"
    assert upstream.seen == []


def test_an_exchange_refusing_a_token_refreshed_for_it_does_not_refresh_it_again(
    app, signed_in, upstream, provider, dbsession
):
    """The session's token was due, so it was refreshed for this very exchange, and the provider
    refuses to exchange it: a second refresh cannot help (nothing newer than a token minted moments
    ago). With access tokens that live no longer than the leeway (never fresh by expiry), the retry
    refreshed the session again, two refreshes (two rotations) for one call."""
    def short_lived(form):
        if form.get("grant_type") == EXCHANGE:
            return 400, {"error": "invalid_grant"}
        status, body = provider.issue_tokens(form, provider.token_forms[-1])
        return status, ({**body, "expires_in": 30} if status == 200 else body)

    provider.token_response = short_lived
    browser = signed_in(app=app, expires_in=30)  # due: refreshed before it is exchanged
    response = api(browser, "GET", "/api/swap/x", status=502)
    assert response.json["error"] == "upstream_unavailable"
    assert [f["grant_type"] for f in token_requests(provider)] == ["refresh_token", EXCHANGE]
    assert row_of(dbsession, browser).ended_at is None and upstream.seen == []


def test_an_exchange_refused_for_a_session_without_a_refresh_token_is_a_502_for_that_upstream_only(
    app, signed_in, upstream, provider, dbsession
):
    """A session the provider gave no refresh token, whose exchange is refused (invalid_grant, a
    policy of the target's): nothing can tell whether its access token is dead, and no refresh can
    be tried. bd9379e sent it to the refresh, which ended the session ("no refresh token"), so a
    dashboard showing that upstream signed its people out right after every sign-in. Only that
    upstream is out of reach, as for an upstream whose token needs the refresh token; the session
    goes on with its own access token (and ends when that is refused or expires)."""
    provider.access_tokens["at-1"] = {"aud": "session", "sub": "alice", "grant": "authorization_code"}
    provider.token_response = lambda form: (
        (400, {"error": "invalid_grant"}) if form.get("grant_type") == EXCHANGE
        else provider.issue_tokens(form, provider.token_forms[-1])
    )
    browser = signed_in(app=app, refresh_token=None)
    response = api(browser, "GET", "/api/swap/x", status=502)
    assert response.json["error"] == "upstream_unavailable" and "invalid_grant" in response.json["message"]
    assert [f["grant_type"] for f in token_requests(provider)] == [EXCHANGE]
    assert row_of(dbsession, browser).ended_at is None and upstream.seen == []
    api(browser, "GET", "/api/plain/x", status=200)
    assert token_seen(upstream) == "at-1"


def test_a_provider_that_held_a_refresh_up_is_left_alone_for_a_while(
    make_proxy_app, served_upstream, signed_in, upstream, provider, dbsession, monkeypatch
):
    """helper-140: a provider that held each refresh up to myapp.oidc.http_timeout held a thread
    for each, until it held every one, and calls that needed no refresh waited behind them. It is
    waited for once (oidc.client.TokenEndpointRest), then left alone for a few seconds: a call
    whose token is due (the session's own or an upstream's) is a 503 at once, as SPEC.md says of
    a provider that is down or slow, and one whose token is fresh carries on."""
    monkeypatch.setattr(client_module, "TOKEN_ENDPOINT_REST", 60.0)  # not over before the test is, however slow the machine
    url = served_upstream.url
    app = make_proxy_app(**{
        "myapp.upstreams": f"up = {url}/up\ngraph = {url}/graph\nreadonly = {url}/ro",
        "myapp.upstream.graph.scope": GRAPH_SCOPE,
        "myapp.oidc.http_timeout": "1",
    })
    due = signed_in(app=app, expires_in=30, refresh_token="rt-due")
    assert api(due, "GET", "/api/graph/x", status=200)  # its graph token, minted for 300 s
    provider.token_delay = 5  # then the provider hangs

    def token_requests():
        return sum(1 for path, _, _ in provider.requests if path == "/token")

    asked = token_requests()
    assert api(due, "GET", "/api/up/x", status=503).json["error"] == "provider_unavailable"  # waited out once
    assert token_requests() == asked + 1
    assert api(due, "GET", "/api/up/x", status=503).json["error"] == "provider_unavailable"  # then not asked
    assert api(due, "GET", "/api/graph/x", status=200)  # its fresh graph token needs no provider
    # Its graph token due as well (this process's copy forgotten, as by a restart): not asked either.
    dbsession.execute(update(SessionToken).values(expires_at=utcnow() + timedelta(seconds=30)))
    dbsession.commit()
    app.registry[Services].tokens._upstream_tokens.clear()
    assert api(due, "GET", "/api/graph/x", status=503).json["error"] == "provider_unavailable"
    fresh = signed_in(app=app, expires_in=300, refresh_token="rt-fresh")
    assert api(fresh, "GET", "/api/up/x", status=200)
    assert token_requests() == asked + 1
    assert row_of(dbsession, due).ended_at is None
    # Nothing was asked after the first, so nothing more is recorded: one refresh_failed, the timeout.
    failed = dbsession.scalars(select(AuditEvent.detail).where(AuditEvent.event == "refresh_failed")).all()
    assert failed == ["provider_unavailable"]
