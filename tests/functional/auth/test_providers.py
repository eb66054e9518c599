"""Several identity providers at once (SPEC.md "Several identity providers"): two programmable
providers on their own sockets, one app that trusts both."""

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import func, select

from myapp.models import AuditEvent, LoginTransaction, TokenRevocation, User, UserSession
from myapp.models.meta import utcnow
from tests.conftest import TEST_PUBLIC_URL
from tests.functional.auth.flows import session_count
from tests.functional.conftest import COOKIE, Browser
from tests.support.fake_provider import CLIENT_ID, CLIENT_SECRET, FakeProvider, served_fake_provider

PARTNERS_CALLBACK = TEST_PUBLIC_URL + "/auth/callback/partners"


@pytest.fixture(scope="session")
def served_partner():
    with served_fake_provider() as partner:
        yield partner


@pytest.fixture
def partner(served_partner):
    served_partner.reset()
    yield served_partner
    served_partner.reset()


@pytest.fixture
def app(make_app, partner):
    return make_app(
        **{
            "myapp.providers": "default = Staff\npartners = Partner companies",
            "myapp.oidc.partners.issuer": partner.issuer,
            "myapp.oidc.partners.client_id": CLIENT_ID,
            "myapp.oidc.partners.client_secret": CLIENT_SECRET,
            "myapp.oidc.partners.http_timeout": "2",
        }
    )


def start(browser, provider_name, next_path="/posts"):
    response = browser.get("/login", params={"provider": provider_name, "next": next_path}, status=303)
    return response.location, {k: v[0] for k, v in parse_qs(urlsplit(response.location).query).items()}


def sign_in_at(browser, idp, provider_name, callback_path, **claims):
    """Start at ``provider_name``, let ``idp`` grant a code, deliver it to ``callback_path``."""
    _, query = start(browser, provider_name)
    code = idp.grant(challenge=query["code_challenge"], nonce=query["nonce"], redirect_uri=query["redirect_uri"], **claims)
    return browser.get(
        callback_path, params={"code": code, "state": query["state"], "iss": idp.issuer}, expect_errors=True
    ), query


def test_the_chooser_lists_every_provider_and_keeps_next(app):
    page = Browser(app).get("/login", params={"next": "/posts/new"}, status=200)
    assert page.headers["Cache-Control"] == "no-store"
    links = {a.text.strip(): a["href"] for a in page.html.select("[data-testid=providers] a")}
    assert links == {
        "Staff": "/login?provider=default&next=%2Fposts%2Fnew",
        "Partner companies": "/login?provider=partners&next=%2Fposts%2Fnew",
    }


def test_the_chooser_keeps_what_the_link_asks_of_the_sign_in(app, partner):
    """SPEC.md's own step-up button names no provider: with several, the chooser dropped
    acr_values, max_age and prompt (helper-40), and the step-up was lost."""
    page = Browser(app).get(
        "/login", params={"next": "/admin/audit", "acr_values": "urn:example:mfa", "max_age": "0", "prompt": "login"},
        status=200,
    )
    links = [a["href"] for a in page.html.select("[data-testid=providers] a")]
    assert links[1] == (
        "/login?provider=partners&next=%2Fadmin%2Faudit&acr_values=urn%3Aexample%3Amfa&max_age=0&prompt=login"
    )
    browser = Browser(app)
    sent = parse_qs(urlsplit(browser.get(links[1], status=303).location).query)
    assert (sent["acr_values"], sent["max_age"], sent["prompt"]) == (["urn:example:mfa"], ["0"], ["login"])


def test_the_landing_pages_sign_in_leads_to_the_chooser(app):
    browser = Browser(app)
    href = browser.get("/", status=200).html.select_one(".hero-actions a")["href"]
    assert browser.get(href, status=200).html.select("[data-testid=providers] a")


def test_a_link_naming_no_provider_in_its_provider_parameter_gets_the_chooser(app, dbsession):
    """?provider= with nothing after it (a template that left the name out) is a link that names
    no provider, not an unknown one: the chooser, with next kept."""
    page = Browser(app).get("/login", params={"provider": "", "next": "/posts"}, status=200)
    links = [a["href"] for a in page.html.select("[data-testid=providers] a")]
    assert links[0] == "/login?provider=default&next=%2Fposts"
    assert dbsession.scalar(select(func.count()).select_from(LoginTransaction)) == 0


def test_an_unknown_provider_is_a_400_page(app, dbsession):
    page = Browser(app).get("/login", params={"provider": "nope"}, status=400)
    assert "Unknown sign-in provider" in page.text
    assert dbsession.scalar(select(func.count()).select_from(LoginTransaction)) == 0


@pytest.mark.parametrize("query", [
    "provider=default&provider=partners", "provider=partners&provider=default",
    "provider=default&acr_values=urn:myapp:mfa&acr_values=", "provider=default&max_age=0&max_age=600",
    "provider=default&prompt=login&prompt=none",
])
def test_a_link_asking_for_one_thing_twice_is_a_400_page(app, dbsession, query):
    """Two providers or two step-ups in one link: the last copy was taken, where a proxy or a log
    may read the first (helper-132). A clear page that offers to sign in, and nothing started."""
    page = Browser(app).get("/login?" + query + "&next=%2Fposts", status=400)
    assert "It asks for the same thing twice." in page.text
    assert page.html.select_one("a[href='/login?next=%2Fposts']") is not None
    assert dbsession.scalar(select(func.count()).select_from(LoginTransaction)) == 0


def test_each_provider_gets_its_own_redirect_uri(app, provider, partner):
    location, query = start(Browser(app), "partners")
    assert location.startswith(partner.issuer + "/authorize?")
    assert query["redirect_uri"] == PARTNERS_CALLBACK
    location, query = start(Browser(app), "default")
    assert location.startswith(provider.issuer + "/authorize?")
    assert query["redirect_uri"] == TEST_PUBLIC_URL + "/auth/callback"


def test_sign_in_at_each_provider(app, provider, partner, dbsession):
    staff = Browser(app)
    response, _ = sign_in_at(staff, provider, "default", "/auth/callback")
    assert response.status_int == 303 and response.location.endswith("/posts")
    outsider = Browser(app)
    response, _ = sign_in_at(outsider, partner, "partners", "/auth/callback/partners")
    assert response.status_int == 303
    sessions = dbsession.scalars(select(UserSession).order_by(UserSession.id)).all()
    assert [(s.provider, s.user.issuer) for s in sessions] == [("default", provider.issuer), ("partners", partner.issuer)]


def test_the_same_email_at_two_providers_is_two_people(app, provider, partner, dbsession):
    sign_in_at(Browser(app), provider, "default", "/auth/callback", email="pat@example.org")
    sign_in_at(Browser(app), partner, "partners", "/auth/callback/partners", email="pat@example.org")
    users = dbsession.scalars(select(User).where(User.email == "pat@example.org")).all()
    assert sorted(u.issuer for u in users) == sorted([provider.issuer, partner.issuer])


def test_a_transaction_started_for_one_provider_is_refused_at_anothers_callback(app, provider, partner, dbsession):
    """The mix-up defence (RFC 9700 section 4.4): whatever the response says, it came back to the
    wrong provider's redirect URI; the sign-in is spent, nothing is created."""
    browser = Browser(app)
    _, query = start(browser, "partners")
    code = partner.grant(challenge=query["code_challenge"], nonce=query["nonce"], redirect_uri=PARTNERS_CALLBACK)
    params = {"code": code, "state": query["state"], "iss": partner.issuer}
    page = browser.get("/auth/callback", params=params, status=400)
    assert "started with another provider" in page.text
    assert session_count(dbsession) == 0 and dbsession.scalar(select(func.count()).select_from(User)) == 0
    assert [p for p, _, _ in partner.requests if p == "/token"] == []
    assert [p for p, _, _ in provider.requests if p == "/token"] == []
    detail = dbsession.scalars(select(AuditEvent.detail).where(AuditEvent.event == "login_failed")).one()
    assert detail == "wrong_provider_callback"
    # Spent: the right callback cannot complete it afterwards either.
    browser.get("/auth/callback/partners", params=params, status=400)
    assert session_count(dbsession) == 0


def test_an_error_answered_at_anothers_callback_or_from_another_issuer_is_refused_as_a_mix_up(app, provider, partner, dbsession):
    """RFC 9207 section 2.4: a client must not take an error response for the intended provider's
    either. It was shown as that provider's ("Sign-in was cancelled, or the provider did not allow
    it.") and audited as provider_error:access_denied (helper-83), whichever callback it came back
    to and whatever issuer it named."""
    browser = Browser(app)
    _, query = start(browser, "partners")
    page = browser.get("/auth/callback", params={"error": "access_denied", "state": query["state"]}, status=400)
    assert "started with another provider" in page.text and "cancelled" not in page.text
    _, query = start(browser, "partners")
    params = {"error": "access_denied", "state": query["state"], "iss": provider.issuer}
    page = browser.get("/auth/callback/partners", params=params, status=400)
    assert "came from another provider" in page.text and "cancelled" not in page.text
    details = dbsession.scalars(select(AuditEvent.detail).where(AuditEvent.event == "login_failed").order_by(AuditEvent.id))
    assert details.all() == ["wrong_provider_callback", "bad_iss_parameter"]
    # Its own provider's error, at its own callback, is that provider's answer, as before.
    _, query = start(browser, "partners")
    params = {"error": "access_denied", "state": query["state"], "iss": partner.issuer}
    assert "Sign-in was cancelled" in browser.get("/auth/callback/partners", params=params, status=400).text
    assert session_count(dbsession) == 0 and dbsession.scalar(select(func.count()).select_from(LoginTransaction)) == 0


def test_a_callback_for_an_unknown_provider_creates_nothing(app, provider, dbsession):
    browser = Browser(app)
    _, query = start(browser, "default")
    browser.get("/auth/callback/nope", params={"code": "c", "state": query["state"]}, status=400)
    assert session_count(dbsession) == 0


def test_the_default_provider_also_answers_at_its_named_callback(make_app, provider, dbsession):
    app = make_app(**{"myapp.oidc.redirect_uri": TEST_PUBLIC_URL + "/auth/callback/default"})
    response, _ = sign_in_at(Browser(app), provider, "default", "/auth/callback/default")
    assert response.status_int == 303 and session_count(dbsession) == 1


def test_back_channel_logout_ends_only_that_providers_sessions(app, provider, partner, dbsession):
    staff, outsider = Browser(app), Browser(app)
    # The same sub and sid at both providers: only the issuer tells them apart.
    partner.sid = provider.sid
    sign_in_at(staff, provider, "default", "/auth/callback")
    sign_in_at(outsider, partner, "partners", "/auth/callback/partners")
    Browser(app).post("/auth/backchannel-logout", {"logout_token": partner.logout_token()}, status=200)
    assert outsider.get("/posts", status=303).location.endswith("reason=provider_logout&next=%2Fposts")
    assert staff.get("/posts", status=200)
    Browser(app).post("/auth/backchannel-logout", {"logout_token": partner.logout_token(sid=None)}, status=200)
    assert staff.get("/posts", status=200)


def test_a_logout_token_from_an_issuer_nobody_trusts_is_refused(app, provider):
    stranger = FakeProvider()
    stranger.issuer = "https://stranger.example.test"
    response = Browser(app).post("/auth/backchannel-logout", {"logout_token": stranger.logout_token()}, status=400)
    assert response.json["error"] == "invalid_request"


def test_a_logout_token_is_checked_with_the_keys_of_the_provider_it_names(app, provider, partner):
    """Signed by the default provider's key but claiming the partner's issuer: refused."""
    forged = provider.sign(partner.logout_claims(), header={"typ": "logout+jwt"})
    Browser(app).post("/auth/backchannel-logout", {"logout_token": forged}, status=400)


def test_sign_out_goes_to_the_sessions_provider(app, partner):
    browser = Browser(app)
    sign_in_at(browser, partner, "partners", "/auth/callback/partners")
    csrf = browser.get("/auth/user", headers={"X-CSRF": "1"}).json["csrf_token"]
    response = browser.post("/logout", {"csrf_token": csrf}, headers={"Origin": TEST_PUBLIC_URL}, status=303)
    assert response.location.startswith(partner.issuer + "/logout?")
    assert [p for p, _, _ in partner.requests if p == "/revoke"] == ["/revoke"]


def test_a_provider_that_is_down_affects_only_its_own_people(app, provider, partner, dbsession):
    partner.discovery_status = 503
    Browser(app).get("/login", params={"provider": "partners"}, status=503)
    response, _ = sign_in_at(Browser(app), provider, "default", "/auth/callback")
    assert response.status_int == 303


def test_a_renamed_provider_keeps_its_sessions_and_one_a_process_does_not_know_is_no_session_there(
    app, make_app, provider, partner, dbsession, served_upstream
):
    """configuration.md: renaming keeps sessions (found by issuer); a process that does not know
    the provider (removed, or not yet added there) serves no identity for them, pages and API calls
    alike (helper-40: they stayed signed in until a refresh), without ending them (helper-46)."""
    browser = Browser(app)
    sign_in_at(browser, partner, "partners", "/auth/callback/partners")
    base = {k: v for k, v in app.registry.settings.items() if k.startswith(("myapp.", "sqlalchemy."))}
    renamed = {k.replace("myapp.oidc.partners.", "myapp.oidc.acme."): v for k, v in base.items()}
    renamed["myapp.providers"] = "default = Staff\nacme = Partner companies"
    renamed["myapp.oidc.acme.redirect_uri"] = TEST_PUBLIC_URL + "/auth/callback/acme"
    renamed["myapp.stepup.rules"] = "/posts/new = max_age=5m"
    renamed["myapp.upstreams"] = f"acme-api = {served_upstream.url}/acme"
    renamed["myapp.upstream.acme-api.providers"] = "acme"
    browser.app = make_app(**renamed)
    assert browser.get("/auth/user", headers={"X-CSRF": "1"}, status=200).json["name"]
    # An upstream for acme's people takes the session by the provider's new name too.
    served_upstream.reset()
    browser.get("/api/acme-api/x", headers={"X-CSRF": "1"}, status=200)
    # The sessions page names it by its display name, not by the old name (helper-46).
    page = browser.get("/account/sessions", status=200)
    assert "<dd>Partner companies</dd>" in page.text and "<dd>partners</dd>" not in page.text
    # A step-up goes to the provider by its new name (helper-40: the old one, a 400 page).
    link = browser.get("/posts/new", status=401).html.select_one("[data-testid=step-up-sign-in]")["href"]
    assert parse_qs(urlsplit(link).query)["provider"] == ["acme"]
    browser.get(link, status=303)
    removed = {k: v for k, v in base.items() if not k.startswith("myapp.oidc.partners.")}
    removed["myapp.providers"] = "default = Staff"
    browser.app = make_app(**removed)
    response = browser.get("/posts", status=303)
    assert "/signed-out?reason=provider_removed" in response.location
    assert "The way you signed in is no longer offered here." in browser.get(response.location).text
    browser.get("/auth/user", headers={"X-CSRF": "1"}, status=401)
    # Nothing is ended, nor the cookie cleared: in a rolling deployment that adds a provider, a
    # process that does not know it yet must not end what one that does started (helper-46).
    row = dbsession.scalars(select(UserSession)).one()
    dbsession.refresh(row)
    assert row.end_reason is None and row.refresh_token is not None
    browser.app = make_app(**base)
    assert browser.get("/auth/user", headers={"X-CSRF": "1"}, status=200).json["name"]


def test_an_upstream_that_refuses_the_provider_says_so_before_any_step_up(make_app, app, partner, served_upstream):
    """configuration.md: a refusal comes first, without a step-up that would end in it (helper-40:
    a partners session was asked to step up for an upstream only staff may call)."""
    served_upstream.reset()
    settings = {k: v for k, v in app.registry.settings.items() if k.startswith(("myapp.", "sqlalchemy."))}
    settings.update({
        "myapp.upstreams": f"staff = {served_upstream.url}/staff",
        "myapp.upstream.staff.providers": "default",
        "myapp.stepup.rules": "/api/staff = acr=urn:example:mfa",
    })
    browser = Browser(make_app(**settings))
    sign_in_at(browser, partner, "partners", "/auth/callback/partners")
    response = browser.get("/api/staff/me", headers={"X-CSRF": "1"}, status=403)
    assert response.json["error"] == "wrong_provider"
    assert served_upstream.seen == []


def _without_partners(app):
    settings = {k: v for k, v in app.registry.settings.items()
                if k.startswith(("myapp.", "sqlalchemy.")) and not k.startswith("myapp.oidc.partners.")}
    settings["myapp.providers"] = "default = Staff"
    return settings


def test_signing_out_where_the_provider_is_unknown_still_ends_the_session(app, make_app, partner, dbsession):
    """It only cleared the cookie, and the session lived on at the processes that know the provider
    (helper-48). Still with the CSRF token; the refresh token is queued for one of them to revoke."""
    browser = Browser(app)
    sign_in_at(browser, partner, "partners", "/auth/callback/partners")
    csrf = browser.get("/auth/user", headers={"X-CSRF": "1"}).json["csrf_token"]
    browser.app = make_app(**_without_partners(app))
    browser.post("/logout", {"csrf_token": "wrong"}, headers={"Origin": TEST_PUBLIC_URL}, status=400)
    browser.post("/logout", {"csrf_token": csrf}, headers={"Origin": "https://evil.example"}, status=400)
    row = dbsession.scalars(select(UserSession)).one()
    dbsession.refresh(row)
    assert row.end_reason is None
    response = browser.post("/logout", {"csrf_token": csrf}, headers={"Origin": TEST_PUBLIC_URL}, status=303)
    assert response.location == TEST_PUBLIC_URL + "/"  # no provider here to sign out at
    assert any(v.startswith(COOKIE + "=;") and "Max-Age=0" in v for k, v in response.headerlist if k == "Set-Cookie")
    dbsession.refresh(row)
    assert row.end_reason == "logout"
    assert dbsession.scalars(select(TokenRevocation.issuer)).all() == [partner.issuer]
    assert [p for p, _, _ in partner.requests if p in ("/revoke", "/logout")] == []
    (event,) = dbsession.scalars(select(AuditEvent).where(AuditEvent.event == "logout")).all()
    assert (event.user_id, event.actor_id, event.session_handle) == (row.user_id, row.user_id, row.handle)
    assert event.detail == "revocation queued (this process does not know the provider)"


def test_a_dead_session_where_the_provider_is_unknown_is_only_tidied_up(app, make_app, partner, dbsession):
    """Expired (not yet swept): signing out is no sign-out of it, as for any dead session; it
    ends by its own reason, not as a logout (helper-49's probe, pinned)."""
    browser = Browser(app)
    sign_in_at(browser, partner, "partners", "/auth/callback/partners")
    csrf = browser.get("/auth/user", headers={"X-CSRF": "1"}).json["csrf_token"]
    dbsession.execute(UserSession.__table__.update().values(expires_at=utcnow() - timedelta(minutes=1)))
    browser.app = make_app(**_without_partners(app))
    browser.post("/logout", {"csrf_token": csrf}, headers={"Origin": TEST_PUBLIC_URL}, status=303)
    row = dbsession.scalars(select(UserSession)).one()
    dbsession.refresh(row)
    assert row.end_reason is None
    assert dbsession.scalars(select(AuditEvent).where(AuditEvent.event == "logout")).all() == []


def test_signing_in_where_the_provider_is_unknown_replaces_the_session(app, make_app, provider, partner, dbsession):
    """The new session's cookie took the old one's place, and the old one lived on (helper-48)."""
    browser = Browser(app)
    sign_in_at(browser, partner, "partners", "/auth/callback/partners")
    browser.app = make_app(**_without_partners(app))
    response, _ = sign_in_at(browser, provider, "default", "/auth/callback")
    assert response.status_int == 303
    reasons = dbsession.scalars(select(UserSession.end_reason).order_by(UserSession.id)).all()
    assert reasons == ["replaced", None]
