"""The refresh grant: rotation with reuse detection, the non-rotating mode, concurrency."""

import threading

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.devstack.flows import DISCOVERY, log_in, refresh, token_request, userinfo
from tests.devstack.server import running_devstack


def claims_of(token, metadata):
    keys = KeySet.import_key_set(requests.get(metadata["jwks_uri"], timeout=5).json())
    return jwt.decode(token, keys, algorithms=["RS256"]).claims


def test_refresh_rotates_and_issues_a_new_id_token(browser, metadata, stats):
    before = stats()
    login = log_in(browser, metadata, "alice")
    response = refresh(metadata, login["refresh_token"])
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    refreshed = response.json()
    assert refreshed["refresh_token"] != login["refresh_token"]
    assert refreshed["access_token"] != login["access_token"]
    assert refreshed["scope"] == login["scope"]

    original, renewed = claims_of(login["id_token"], metadata), claims_of(refreshed["id_token"], metadata)
    for claim in ("iss", "sub", "aud", "sid", "auth_time"):
        assert renewed[claim] == original[claim]
    assert "nonce" not in renewed
    assert userinfo(metadata, refreshed["access_token"]).status_code == 200

    after = stats()
    assert after["authorization_code_grants"] - before["authorization_code_grants"] >= 1
    assert after["refresh_grants"] - before["refresh_grants"] >= 1


def test_reusing_a_rotated_token_revokes_the_whole_family(browser, metadata, stats):
    login = log_in(browser, metadata, "bob")
    first = refresh(metadata, login["refresh_token"]).json()
    second = refresh(metadata, first["refresh_token"]).json()
    before = stats()

    reuse = refresh(metadata, login["refresh_token"])
    assert reuse.status_code == 400
    assert reuse.json()["error"] == "invalid_grant"
    assert "already used" in reuse.json()["error_description"]
    assert stats()["refresh_reuse_detected"] - before["refresh_reuse_detected"] >= 1

    newest = refresh(metadata, second["refresh_token"])
    assert newest.status_code == 400
    assert newest.json()["error"] == "invalid_grant"
    assert userinfo(metadata, second["access_token"]).status_code == 401


def test_other_logins_are_not_affected_by_a_revoked_family(browser, metadata):
    victim = log_in(browser, metadata, "carol")
    bystander = log_in(browser, metadata, "carol")
    refresh(metadata, victim["refresh_token"])
    refresh(metadata, victim["refresh_token"])
    assert refresh(metadata, bystander["refresh_token"]).status_code == 200


def test_narrower_scope_on_refresh(browser, metadata):
    login = log_in(browser, metadata, "dave")
    response = token_request(
        metadata, {"grant_type": "refresh_token", "refresh_token": login["refresh_token"], "scope": "openid"}
    )
    assert response.status_code == 200
    assert response.json()["scope"] == "openid"
    wider = token_request(
        metadata,
        {"grant_type": "refresh_token", "refresh_token": response.json()["refresh_token"], "scope": "openid admin"},
    )
    assert wider.json()["error"] == "invalid_scope"


def test_unknown_refresh_token_is_invalid_grant(metadata):
    response = refresh(metadata, "not-a-refresh-token")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_concurrent_refreshes_of_one_token_let_exactly_one_through(browser, metadata):
    login = log_in(browser, metadata, "erin")
    start = threading.Barrier(10)
    results = []

    def attempt():
        start.wait()
        results.append(refresh(metadata, login["refresh_token"]))

    threads = [threading.Thread(target=attempt) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(r.status_code for r in results) == [200] + [400] * 9
    assert {r.json()["error"] for r in results if r.status_code == 400} == {"invalid_grant"}
    winner = next(r.json() for r in results if r.status_code == 200)
    # The losers presented a spent token: the family, winner included, is revoked.
    assert refresh(metadata, winner["refresh_token"]).json()["error"] == "invalid_grant"


@pytest.fixture(scope="module")
def non_rotating():
    with running_devstack(**{"devstack.idp.rotate_refresh_tokens": "false"}) as base_url:
        yield requests.get(base_url + DISCOVERY, timeout=5).json()


def test_non_rotating_provider_keeps_the_refresh_token(browser, non_rotating):
    login = log_in(browser, non_rotating, "frank")
    for _ in range(3):
        response = refresh(non_rotating, login["refresh_token"])
        assert response.status_code == 200
        assert "refresh_token" not in response.json()
        assert response.json()["id_token"]


def test_non_rotating_provider_allows_concurrent_refreshes(browser, non_rotating):
    login = log_in(browser, non_rotating, "grace")
    start = threading.Barrier(5)
    results = []

    def attempt():
        start.wait()
        results.append(refresh(non_rotating, login["refresh_token"]).status_code)

    threads = [threading.Thread(target=attempt) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 5


@pytest.fixture(scope="module")
def short_lived():
    settings = {"devstack.idp.refresh_token_lifetime": "1", "devstack.idp.access_token_lifetime": "1"}
    with running_devstack(**settings) as base_url:
        yield requests.get(base_url + DISCOVERY, timeout=5).json()


def test_expired_refresh_token_is_invalid_grant(browser, short_lived):
    login = log_in(browser, short_lived, "heidi")
    assert login["expires_in"] == 1
    threading.Event().wait(1.1)
    response = refresh(short_lived, login["refresh_token"])
    assert response.json()["error"] == "invalid_grant"
    assert "expired" in response.json()["error_description"]
    assert userinfo(short_lived, login["access_token"]).status_code == 401


@pytest.fixture(scope="module")
def with_grace():
    with running_devstack(**{"devstack.idp.refresh_token_reuse_interval": "60"}) as base_url:
        yield base_url, requests.get(base_url + DISCOVERY, timeout=5).json()


def test_reuse_within_the_interval_is_accepted_and_counted(browser, with_grace):
    base_url, metadata = with_grace
    before = requests.get(base_url + "/_dev/idp/stats", timeout=5).json()
    login = log_in(browser, metadata, "heidi")
    first = refresh(metadata, login["refresh_token"])
    again = refresh(metadata, login["refresh_token"])  # the client died before storing `first`
    assert first.status_code == again.status_code == 200, again.text
    assert refresh(metadata, again.json()["refresh_token"]).status_code == 200, "the family lives on"
    after = requests.get(base_url + "/_dev/idp/stats", timeout=5).json()
    assert after["refresh_reuse_in_grace"] - before["refresh_reuse_in_grace"] == 1
    assert after["refresh_reuse_detected"] == before["refresh_reuse_detected"]


def test_reuse_after_the_interval_still_revokes_the_family():
    from types import SimpleNamespace

    from myapp.devstack.models import IssuedToken, TokenFamily
    from myapp.devstack.storage import ProviderStore, TokenRejected

    now = [1000.0]
    store = ProviderStore(clock=lambda: now[0], reuse_interval=30)
    login = SimpleNamespace(user=SimpleNamespace(subject="ivan"))
    family = TokenFamily(client_id="c", login=login, scope="openid")
    token = IssuedToken(kind="refresh_token", family=family, scope="openid", expires_at=10_000)
    store.use_refresh_token(token, rotate=True)
    now[0] += 30
    store.use_refresh_token(token, rotate=True)  # within the interval, which does not restart
    now[0] += 1
    with pytest.raises(TokenRejected, match="already used"):
        store.use_refresh_token(token, rotate=True)
    assert family.revoked
