"""The development stack included into the BFF, the way development.ini does it."""

import pytest
import webtest

from myapp import main
from myapp.services import Services
from myapp.settings import SettingsError, load_settings
from tests.conftest import base_settings
from tests.devstack.server import devstack_settings

PUBLIC_URL = "http://127.0.0.1:6543"


@pytest.fixture
def bff_settings(database_url):
    return base_settings(
        database_url,
        **{
            "myapp.environment": "development",
            "myapp.public_url": PUBLIC_URL,
            "myapp.session.cookie_secure": "false",
            "myapp.session.cookie_name": "myapp_session",
            "pyramid.includes": "myapp.devstack",
        },
        **devstack_settings(PUBLIC_URL),
    )


@pytest.fixture
def bff(engine, bff_settings):
    app = main({}, **bff_settings)
    yield webtest.TestApp(app, extra_environ={"HTTP_HOST": "127.0.0.1:6543"})
    app.registry[Services].close()


def test_provider_and_api_are_served_by_the_bff(bff):
    metadata = bff.get("/_dev/idp/.well-known/openid-configuration").json
    assert metadata["issuer"] == PUBLIC_URL + "/_dev/idp"
    assert bff.get("/_dev/api/me", status=401).headers["WWW-Authenticate"] == 'Bearer realm="demo"'


def test_devstack_pages_keep_their_own_headers(bff):
    page = bff.get("/_dev/idp/")
    assert "never point a production deployment at it" in page.text.lower()
    assert "form-action 'self'" in page.headers["Content-Security-Policy"]
    assert "myapp_session" not in page.headers.get("Set-Cookie", "")


def test_token_endpoint_needs_no_bff_csrf_token(bff):
    response = bff.post("/_dev/idp/token", {"grant_type": "refresh_token", "refresh_token": "x"}, status=401)
    assert response.json["error"] == "invalid_client"


def test_its_api_takes_bodies_as_large_as_waitress_would_served_by_myapps_server(bff, bff_settings):
    """The demo API's echo and upload take a body of any size; myapp's server, which refuses one
    larger than any route takes, must let them through (helper-123: 11 MiB to /_dev/api/echo was
    413 under make run). The app's own routes take far less."""
    from myapp.devstack.api import MAX_BYTES
    from myapp.request import LARGEST_BODY

    assert bff.app.registry[LARGEST_BODY] == MAX_BYTES
    alone = main({}, **{k: v for k, v in bff_settings.items() if k != "pyramid.includes"})
    try:
        assert alone.registry[LARGEST_BODY] == load_settings(bff_settings).proxy.max_body_bytes
    finally:
        alone.registry[Services].close()


def test_production_refuses_the_include(bff_settings):
    with pytest.raises(SettingsError, match="refused in production"):
        load_settings({**bff_settings, "myapp.environment": "production"})
