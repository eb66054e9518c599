"""RFC 7009 revocation: client-authenticated; a refresh token takes its family with it."""

import requests

from tests.devstack.flows import log_in, refresh, token_request, userinfo
from tests.devstack.server import CLIENT_ID, CLIENT_SECRET


def revoke(metadata, token, hint=None, auth=(CLIENT_ID, CLIENT_SECRET)):
    data = {"token": token, **({"token_type_hint": hint} if hint else {})}
    return requests.post(metadata["revocation_endpoint"], data=data, auth=auth, timeout=5)


def test_revoking_a_refresh_token_revokes_its_family(browser, metadata, stats):
    login = log_in(browser, metadata, "alice")
    rotated = refresh(metadata, login["refresh_token"]).json()
    before = stats()["revocations"]

    response = revoke(metadata, rotated["refresh_token"], "refresh_token")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert stats()["revocations"] == before + 1
    assert refresh(metadata, rotated["refresh_token"]).json()["error"] == "invalid_grant"
    assert userinfo(metadata, rotated["access_token"]).status_code == 401


def test_revoking_an_access_token(browser, metadata):
    login = log_in(browser, metadata, "bob")
    assert revoke(metadata, login["access_token"], "access_token").status_code == 200
    assert userinfo(metadata, login["access_token"]).status_code == 401
    assert refresh(metadata, login["refresh_token"]).status_code == 200


def test_a_wrong_hint_does_not_matter(browser, metadata):
    login = log_in(browser, metadata, "carol")
    assert revoke(metadata, login["refresh_token"], "access_token").status_code == 200
    assert refresh(metadata, login["refresh_token"]).json()["error"] == "invalid_grant"


def test_unknown_token_is_fine(metadata):
    assert revoke(metadata, "never-issued").status_code == 200


def test_revocation_needs_client_authentication(browser, metadata):
    login = log_in(browser, metadata, "dave")
    response = revoke(metadata, login["refresh_token"], auth=(CLIENT_ID, "wrong"))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert refresh(metadata, login["refresh_token"]).status_code == 200


def test_revocation_by_client_secret_post(browser, metadata):
    login = log_in(browser, metadata, "erin")
    response = requests.post(
        metadata["revocation_endpoint"],
        data={"token": login["refresh_token"], "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
        timeout=5,
    )
    assert response.status_code == 200
    assert refresh(metadata, login["refresh_token"]).json()["error"] == "invalid_grant"


def exchange(metadata, subject):
    return token_request(metadata, {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": subject,
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "resource": metadata["issuer"].rsplit("/_dev/", 1)[0] + "/_dev/api",
    })


def test_an_exchanged_token_is_a_grant_of_its_own_revoked_only_by_itself(browser, metadata, stats):
    """As at a provider that treats each exchange as its own grant: revoking the sign-in's refresh
    token leaves the exchanged token live (what myapp's revoker has to revoke on its own), and
    revoking the exchanged one leaves the sign-in alone. It comes without a refresh token."""
    login = log_in(browser, metadata, "frank")
    answer = exchange(metadata, login["access_token"])
    assert answer.status_code == 200, answer.text
    assert "refresh_token" not in answer.json()
    exchanged = answer.json()["access_token"]
    assert userinfo(metadata, exchanged).status_code == 200
    before = stats()["revocations"]
    assert revoke(metadata, exchanged, "access_token").status_code == 200
    assert stats()["revocations"] == before + 1
    assert userinfo(metadata, exchanged).status_code == 401
    assert refresh(metadata, login["refresh_token"]).status_code == 200

    again = log_in(browser, metadata, "frank")
    second = exchange(metadata, again["access_token"]).json()["access_token"]
    assert revoke(metadata, again["refresh_token"], "refresh_token").status_code == 200
    assert userinfo(metadata, again["access_token"]).status_code == 401  # the sign-in's own went with it
    assert userinfo(metadata, second).status_code == 200
