"""The whole product with keys instead of secrets and pushed authorization requests required
(issue 12): the BFF and the development provider on real sockets, the provider registered with
the BFF's key and refusing any authorization request that was not pushed."""

from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
from sqlalchemy import update

from myapp.models import UserSession
from myapp.models.meta import utcnow
from tests.devstack.flows import sign_in as type_name_at_provider
from tests.support.keys import rsa_key, write_key
from tests.support.live import api, bff_in_thread, devstack_for, listener

pytestmark = pytest.mark.slow


@pytest.fixture
def product(committed_database_url, committed_engine, committed, tmp_path):
    key = write_key(tmp_path, "client.pem", rsa_key())
    sock, public_url = listener()
    with devstack_for(
        public_url,
        **{
            "devstack.idp.client_keys": str(key),
            "devstack.idp.require_par": "true",
            "devstack.idp.backchannel_logout_uri": public_url + "/auth/backchannel-logout",
        },
    ) as idp, bff_in_thread(
        committed_database_url, sock, public_url, idp,
        **{
            "myapp.oidc.token_endpoint_auth_method": "private_key_jwt",
            "myapp.oidc.client_secret": "",
            "myapp.oidc.client_keys": f"file:{key}",
            "myapp.oidc.par": "always",
            "myapp.stepup.rules": "/admin = acr=urn:myapp:mfa",
        },
    ) as (url, app):
        yield url, idp, committed_engine


def stats(idp):
    return requests.get(idp + "/_dev/idp/stats", timeout=5).json()


def test_sign_in_refresh_revocation_and_logout_all_authenticate_with_keys(product):
    url, idp, engine = product
    browser = requests.Session()
    start = browser.get(url + "/login", allow_redirects=False)
    # Under PAR the browser carries nothing but client_id and request_uri.
    assert set(parse_qs(urlsplit(start.headers["Location"]).query)) == {"client_id", "request_uri"}
    callback = type_name_at_provider(browser, start.headers["Location"], "alice")
    assert browser.get(urljoin(url, callback), allow_redirects=False).status_code == 303
    assert api(browser, url + "/api/demo/me").json()["sub"] == "alice"
    with engine.begin() as connection:
        connection.execute(update(UserSession).values(access_token_expires_at=utcnow()))
    before = stats(idp)["refresh_grants"]
    assert api(browser, url + "/api/demo/me").status_code == 200
    assert stats(idp)["refresh_grants"] == before + 1, "the refresh authenticated with an assertion"
    csrf = api(browser, url + "/auth/user").json()["csrf_token"]
    out = browser.post(url + "/logout", data={"csrf_token": csrf}, headers={"Origin": url}, allow_redirects=False)
    assert out.status_code == 303
    assert stats(idp)["revocations"] >= 1, "the revocation authenticated with an assertion"


def test_step_up_with_the_second_factor(product):
    url, idp, _ = product
    browser = requests.Session()
    start = browser.get(url + "/login", allow_redirects=False)
    callback = type_name_at_provider(browser, start.headers["Location"], "admin-ann")
    browser.get(urljoin(url, callback), allow_redirects=False)
    page = browser.get(url + "/admin/audit", allow_redirects=False)
    assert page.status_code == 401 and "Sign in again" in page.text
    login = page.text.split('data-testid="step-up-sign-in"')[0].rsplit('href="', 1)[1].split('"')[0].replace("&amp;", "&")
    start = browser.get(urljoin(url, login), allow_redirects=False)
    assert set(parse_qs(urlsplit(start.headers["Location"]).query)) == {"client_id", "request_uri"}
    second_factor = browser.get(start.headers["Location"], allow_redirects=False)
    assert "Confirm with a second factor" in second_factor.text
    from tests.devstack.flows import submit_form

    done = submit_form(browser, second_factor, name="admin-ann", otp="123456")
    back = browser.get(urljoin(url, done.headers["Location"]), allow_redirects=False)
    assert back.status_code == 303 and back.headers["Location"].endswith("/admin/audit")
    assert browser.get(url + "/admin/audit", allow_redirects=False).status_code == 200
    assert "urn:myapp:mfa" in browser.get(url + "/account/sessions").text
