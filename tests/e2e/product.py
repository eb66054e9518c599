"""The product as the browser tests see it: its URLs, its database, its provider's counters."""

import base64
import contextlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone

import requests
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from myapp.models import User, UserSession
from myapp.models.meta import utcnow
from myapp.services import Services
from tests.support.live import bff_in_thread, devstack_for, listener


@dataclass
class Product:
    url: str
    idp: str
    app: object
    engine: object

    def stats(self) -> dict:
        return requests.get(self.idp + "/_dev/idp/stats", timeout=10).json()

    def owns(self, url: str) -> bool:
        return url == self.url or url.startswith(self.url + "/")

    def sessions_of(self, name: str) -> list[UserSession]:
        with Session(self.engine) as dbsession:
            sessions = dbsession.scalars(
                select(UserSession).join(User).where(User.subject == name).order_by(UserSession.id)
            ).all()
            dbsession.expunge_all()
            return list(sessions)

    def tokens_of(self, name: str) -> dict[str, str]:
        """The user's live OAuth tokens as the server holds them (decrypted): what must never leak."""
        cipher = self.app.registry[Services].cipher
        tokens = {}
        for row in self.sessions_of(name):
            for kind in ("access_token", "refresh_token", "id_token"):
                value = cipher.decrypt(getattr(row, kind))
                if value:
                    tokens[f"{kind} of session {row.handle}"] = value
            key = cipher.decrypt(row.dpop_key)
            if key:  # the private part of the session's DPoP key, which must never leave the server either
                tokens[f"DPoP private key of session {row.handle}"] = json.loads(key)["jwk"]["d"]
        return tokens

    def expire_access_tokens(self, name: str):
        with self.engine.begin() as connection:
            user_id = connection.scalar(select(User.id).where(User.subject == name))
            connection.execute(
                update(UserSession).where(UserSession.user_id == user_id).values(access_token_expires_at=utcnow())
            )

    def end_sessions_by_time(self, name: str):
        """Make the user's sessions reach their absolute time limit, as if a month had passed."""
        with self.engine.begin() as connection:
            user_id = connection.scalar(select(User.id).where(User.subject == name))
            connection.execute(update(UserSession).where(UserSession.user_id == user_id).values(expires_at=utcnow()))


@contextlib.contextmanager
def running_product(database_url: str, engine, devstack: dict | None = None, **bff):
    sock, public_url = listener()
    with devstack_for(
        public_url,
        **{"devstack.idp.backchannel_logout_uri": public_url + "/auth/backchannel-logout", **(devstack or {})},
    ) as idp, bff_in_thread(
        database_url, sock, public_url, idp, **{"myapp.dashboard.upstream": "demo", **bff}
    ) as (url, app):
        yield Product(url=url, idp=idp, app=app, engine=engine)


def sign_in(browser, product: Product, name: str, *, start: str = "/", screenshot: str | None = None):
    """Sign in as a person does in a browser new to the provider: open ``start`` (the landing
    page's Sign in button is pressed; a private page sends the browser to the provider by itself),
    type a name into the provider's form and press its Sign in button. Leaves the browser on the
    page the BFF sends it to."""
    browser.get(product.url + start)
    if product.owns(browser.driver.current_url):
        browser.click_link("Sign in", within="main")
    at_provider_form(browser)
    if screenshot:
        browser.screenshot(screenshot)
    browser.type_into("input[name=name]", name)
    browser.click_button("Sign in", within="form")
    browser.wait(lambda d: product.owns(d.current_url))
    browser.settle()


def at_provider_form(browser):
    browser.wait(lambda d: "/_dev/idp/" in d.current_url and d.find_elements("css selector", "input[name=name]"))


def jwt_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def expiry_of(token: str) -> datetime:
    return datetime.fromtimestamp(jwt_claims(token)["exp"], timezone.utc)
