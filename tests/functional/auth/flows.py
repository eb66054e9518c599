"""Signing in through the whole app against the programmable provider: the steps a browser takes,
shared by the sign-in, sign-out and back-channel logout tests."""

from urllib.parse import parse_qs, urlsplit

from sqlalchemy import func, select

from myapp.models import AuditEvent, UserSession
from tests.functional.conftest import COOKIE


def start_login(browser, next_path=None, **params):
    query = {"next": next_path, **params} if next_path is not None else params
    response = browser.get("/login", params=query, status=303)
    parts = urlsplit(response.location)
    return response, {k: v[0] for k, v in parse_qs(parts.query).items()}


def sign_in(browser, provider, next_path="/", callback_extra=None, **claims):
    """The whole dance, as the browser and the provider would do it. Returns the final response."""
    _, query = start_login(browser, next_path)
    code = provider.grant(challenge=query["code_challenge"], nonce=query["nonce"], dpop_jkt=query.get("dpop_jkt"), **claims)
    params = {"code": code, "state": query["state"], "iss": provider.issuer, **(callback_extra or {})}
    return browser.get("/auth/callback", params={k: v for k, v in params.items() if v is not None}, expect_errors=True)


def session_count(dbsession):
    return dbsession.scalar(select(func.count()).select_from(UserSession).where(UserSession.ended_at.is_(None)))


def failures(dbsession):
    return [e.detail for e in dbsession.scalars(select(AuditEvent).where(AuditEvent.event == "login_failed"))]


def assert_no_session(response, dbsession):
    assert session_count(dbsession) == 0
    assert not any(v.startswith(COOKIE + "=") and "Max-Age=0" not in v for k, v in response.headerlist if k == "Set-Cookie")


def csrf_of(browser):
    return browser.get("/auth/user", headers={"X-CSRF": "1"}).json["csrf_token"]
