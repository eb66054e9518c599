"""Several processes on one database behave as one: what one process does to a session, the
others honour on their very next request. (Single-flight refresh across processes is in
test_refresh_concurrency.py.)"""

import pytest
import requests

from myapp.devstack import make_app as make_devstack
from tests.devstack.flows import submit_form
from tests.devstack.server import devstack_settings
from tests.support.live import api, bff_processes, bff_settings, free_port, listener, sign_in, write_ini
from tests.support.servers import running_wsgi

# The refresh lock a test's processes use: the database's, unless it asks for both (indirect).
BOTH_LOCKS = pytest.mark.parametrize("two_processes", ["database", pytest.param("redis", marks=pytest.mark.redis)], indirect=True)


@pytest.fixture
def two_processes(request, committed_database_url, committed, tmp_path):
    """Processes A and B on one database, with the database's refresh lock or (``BOTH_LOCKS``)
    Redis's, and the development provider; A receives back-channel logouts."""
    overrides = {"myapp.public_url": "env:MYAPP_PUBLIC_URL"}
    if getattr(request, "param", "database") == "redis":
        from tests.conftest import redis_url

        overrides.update({"myapp.lock.backend": "redis", "myapp.redis.url": redis_url()})
    dev_sock, dev_url = listener()
    ini = write_ini(tmp_path / "app.ini", bff_settings(committed_database_url, "unused", dev_url, **overrides))
    with bff_processes(ini, [free_port(), free_port()]) as (first, second):
        settings = devstack_settings(
            dev_url,
            **{
                "devstack.idp.redirect_uris": f"{first}/auth/callback {second}/auth/callback",
                "devstack.idp.post_logout_redirect_uris": f"{first}/ {second}/",
                "devstack.idp.backchannel_logout_uri": f"{first}/auth/backchannel-logout",
            },
        )
        with running_wsgi(lambda base: make_devstack(settings), listener=dev_sock) as idp:
            yield first, second, idp


def signed_in_on(browser, url) -> bool:
    return api(browser, url + "/auth/user").status_code == 200


@pytest.mark.slow
def test_a_session_made_on_one_process_is_live_on_the_other(two_processes):
    first, second, _ = two_processes
    browser = sign_in(first, "alice")
    assert signed_in_on(browser, second)
    assert api(browser, second + "/api/demo/me").json()["sub"] == "alice"


@pytest.mark.slow
@BOTH_LOCKS  # a sign-out ends the session under the refresh lock: with each of them
def test_a_logout_on_one_process_ends_the_session_on_the_other_at_once(two_processes):
    first, second, _ = two_processes
    browser = sign_in(first, "alice")
    other_device = sign_in(second, "alice", requests.Session())
    csrf = api(browser, first + "/auth/user").json()["csrf_token"]
    cookies = browser.cookies.get_dict()
    response = browser.post(first + "/logout", data={"csrf_token": csrf}, headers={"Origin": first}, allow_redirects=False)
    assert response.status_code == 303
    stale = requests.Session()
    stale.cookies.update(cookies)
    assert not signed_in_on(stale, second)
    assert api(stale, second + "/api/demo/me").json()["error"] == "login_required"
    assert signed_in_on(other_device, second), "only the session that signed out ends"


@pytest.mark.slow
def test_a_revocation_on_one_process_is_honoured_by_the_other(two_processes):
    first, second, _ = two_processes
    laptop = sign_in(first, "alice")
    phone = sign_in(second, "alice", requests.Session())
    page = laptop.get(first + "/account/sessions")
    csrf = api(laptop, first + "/auth/user").json()["csrf_token"]
    response = laptop.post(
        first + "/account/sessions/revoke-others", data={"csrf_token": csrf}, headers={"Origin": first}, allow_redirects=False
    )
    assert page.status_code == 200 and response.status_code == 303
    assert not signed_in_on(phone, second)
    assert signed_in_on(laptop, second)


@pytest.mark.slow
def test_a_provider_logout_delivered_to_one_process_is_honoured_by_the_other(two_processes):
    first, second, idp = two_processes
    browser = sign_in(first, "alice")
    assert signed_in_on(browser, second)
    home = browser.get(idp + "/_dev/idp/")
    signed_out = submit_form(browser, home)
    assert signed_out.status_code in (200, 302, 303)
    stats = requests.get(idp + "/_dev/idp/stats").json()
    assert stats["backchannel_logouts_sent"] == 1 and stats["backchannel_logout_failures"] == 0
    assert not signed_in_on(browser, second)
    assert not signed_in_on(browser, first)


@pytest.mark.slow
def test_an_administrators_revocation_on_one_process_is_honoured_by_the_other_for_pages_and_json(
    two_processes, committed_engine
):
    from sqlalchemy import select

    from myapp.models import User

    first, second, _ = two_processes
    admin = sign_in(first, "admin-ann")
    laptop = sign_in(first, "bob", requests.Session())
    phone = sign_in(second, "bob", requests.Session())
    with committed_engine.connect() as connection:
        bob = connection.execute(select(User.id).where(User.subject == "bob")).scalar_one()
    csrf = api(admin, first + "/auth/user").json()["csrf_token"]
    phone_cookies = phone.cookies.get_dict()
    response = admin.post(
        first + f"/admin/users/{bob}/sessions/revoke", data={"csrf_token": csrf}, headers={"Origin": first},
        allow_redirects=False,
    )
    assert response.status_code == 303
    for browser in (laptop, phone):
        assert not signed_in_on(browser, second)
    assert signed_in_on(sign_in(second, "bob", requests.Session()), first), "a sign-in afterwards is a new session"
    stale = requests.Session()
    stale.cookies.update(phone_cookies)
    page = stale.get(second + "/posts", allow_redirects=False)
    assert page.status_code == 303 and "/signed-out?reason=revoked_by_admin" in page.headers["Location"]
    assert api(stale, second + "/api/demo/me").json()["error"] == "login_required"
