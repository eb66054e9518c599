"""WebTest drives the whole app through main(); each test's writes are rolled back."""

from datetime import timedelta

import pytest
import webtest

import myapp
from myapp.models import User
from myapp.models.meta import utcnow
from myapp.services import Services
from myapp.services.sessions import SessionStore
from myapp.services.tokenset import TokenCipher, TokenSet
from myapp.settings import load_settings
from tests.conftest import TEST_ISSUER, TEST_PUBLIC_URL, base_settings
from tests.support.database import RolledBackDatabase
from tests.support.fake_provider import CLIENT_ID, CLIENT_SECRET
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import serve

HOST = TEST_PUBLIC_URL.split("://", 1)[1]
COOKIE = "__Host-session"


class Browser(webtest.TestApp):
    """A TestApp that behaves like a same-origin browser: https, Origin on forms, the CSRF token."""

    csrf_token: str | None = None

    def __init__(self, app):
        super().__init__(app, extra_environ={"wsgi.url_scheme": "https", "HTTP_HOST": HOST, "REMOTE_ADDR": "203.0.113.7"})

    def submit(self, url, data=None, *, csrf=True, headers=None, **kw):
        data = dict(data or {})
        if csrf and self.csrf_token is not None:
            data.setdefault("csrf_token", self.csrf_token)
        headers = {"Origin": TEST_PUBLIC_URL, **(headers or {})}
        return self.post(url, data, headers=headers, **kw)

    def json_get(self, url, **kw):
        headers = {"X-CSRF": "1", **kw.pop("headers", {})}
        return self.get(url, headers=headers, **kw)

    def session_cookie(self):
        return self.cookies.get(COOKIE)


@pytest.fixture(scope="session")
def app_settings(database_url):
    return base_settings(database_url)


def dispose(app):
    app.registry[Services].close()


@pytest.fixture(scope="session")
def database(engine):
    return RolledBackDatabase(engine)


@pytest.fixture(scope="session")
def app(database, app_settings):
    app = myapp.make_app(app_settings, database=database)
    yield app
    dispose(app)


@pytest.fixture
def session_store(dbsession, app_settings):
    settings = load_settings(app_settings)
    return SessionStore(
        dbsession=dbsession, cipher=TokenCipher(settings.tokens.encryption_keys), settings=settings.session
    )


@pytest.fixture
def make_browser(app, database, connection):
    database.bind(connection)
    return lambda: Browser(app)


@pytest.fixture
def browser(make_browser):
    return make_browser()


@pytest.fixture
def make_user(dbsession):
    def make(subject, *, groups=("staff",), name=None, email=None):
        user = User(
            issuer=TEST_ISSUER,
            subject=subject,
            name=name if name is not None else subject.title(),
            email=email if email is not None else f"{subject}@example.test",
            groups=list(groups),
        )
        dbsession.add(user)
        dbsession.flush()
        return user

    return make


@pytest.fixture
def sign_in(session_store, dbsession):
    """Create a session through the SessionStore and hand its cookie to a browser."""

    def sign_in(browser, user, **kw):
        raw_id, row = session_store.create(user=user, user_agent="pytest", ip_address="203.0.113.7", **kw)
        dbsession.flush()
        browser.set_cookie(COOKIE, raw_id)
        browser.csrf_token = row.csrf_token
        return raw_id, row

    return sign_in


@pytest.fixture
def alice(make_user):
    return make_user("alice")


@pytest.fixture
def bob(make_user):
    return make_user("bob")


@pytest.fixture
def admin(make_user):
    return make_user("admin-ann", groups=("staff", "admins"))


def provider_settings(database_url: str, issuer: str, **overrides) -> dict:
    """Settings for an app whose provider is the fake one (tests/support/fake_provider.py)."""
    return base_settings(
        database_url,
        **{
            "myapp.oidc.issuer": issuer,
            "myapp.oidc.client_id": CLIENT_ID,
            "myapp.oidc.client_secret": CLIENT_SECRET,
            "myapp.oidc.http_timeout": "2",
            **overrides,
        },
    )


@pytest.fixture
def make_app(engine, database_url, served_provider, connection):
    """An app configured for the fake provider, with fresh discovery and key caches."""
    apps = []

    def make(**overrides):
        database = RolledBackDatabase(engine).bind(connection)
        app = myapp.make_app(provider_settings(database_url, served_provider.issuer, **overrides), database=database)
        apps.append(app)
        return app

    yield make
    for app in apps:
        dispose(app)


# The proxy through the whole app (test_proxy.py, test_upstream_tokens.py): a recording upstream
# and the programmable provider on real sockets, on a committed database.


@pytest.fixture(scope="session")
def served_upstream():
    upstream = FakeUpstream()
    # Keep the X-Forwarded-* headers the proxy sets: they are what these tests look at.
    with serve(upstream, clear_untrusted_proxy_headers=False) as url:
        upstream.url = url
        try:
            yield upstream
        finally:
            upstream.stop.set()


@pytest.fixture
def upstream(served_upstream):
    served_upstream.reset()
    yield served_upstream
    served_upstream.reset()


@pytest.fixture
def make_proxy_app(committed_database_url, served_provider, served_upstream):
    """The app on a committed database: refreshes commit on their own, as in production."""
    apps = []

    def make(**overrides):
        settings = provider_settings(
            committed_database_url,
            served_provider.issuer,
            **{
                "myapp.upstreams": (
                    f"up = {served_upstream.url}/base\nreadonly = {served_upstream.url}/ro\ndown = http://127.0.0.1:9/"
                ),
                "myapp.upstream.readonly.methods": "GET HEAD",
                "myapp.upstream.up.timeout": "2",
                **overrides,
            },
        )
        apps.append(myapp.main({}, **settings))
        return apps[-1]

    yield make
    for app in apps:
        dispose(app)


@pytest.fixture
def proxy_app(make_proxy_app):
    return make_proxy_app()


@pytest.fixture
def signed_in(proxy_app, provider, committed):
    """A browser whose session holds tokens the fake provider can refresh."""
    user = User(issuer=provider.issuer, subject="alice", name="Alice", email="alice@example.org", groups=["staff"])
    committed.add(user)
    committed.commit()
    store = SessionStore(
        dbsession=committed, cipher=proxy_app.registry[Services].cipher, settings=load_settings_of(proxy_app).session
    )

    def make(*, expires_in=300, refresh_token="rt-1", app=None):
        provider.refresh_tokens[refresh_token] = provider.claims()
        tokens = TokenSet(
            access_token="at-1",
            refresh_token=refresh_token,
            id_token=provider.sign(provider.claims()),
            access_token_expires_at=utcnow() + timedelta(seconds=expires_in),
        )
        raw_id, row = store.create(user=user, tokens=tokens)
        committed.commit()
        browser = Browser(app or proxy_app)
        browser.set_cookie(COOKIE, raw_id)
        browser.session_row = row
        return browser

    make.store = store
    return make


def load_settings_of(app):
    return app.registry.settings["myapp"]
