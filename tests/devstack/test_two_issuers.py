"""The development stack's second issuer, RFC 8707 resource indicators and RFC 8693 token
exchange, and the demo API's second audience, over real HTTP."""


import pytest
import requests

from tests.devstack.flows import log_in, refresh, token_request
from tests.devstack.server import CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, running_devstack
from tests.e2e.product import jwt_claims

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    key2 = tmp_path_factory.mktemp("idp2") / "idp2-key.json"
    with running_devstack(
        **{
            "devstack.idp2.issuer": "{base}/_dev/idp2",
            "devstack.idp2.client_id": CLIENT_ID,
            "devstack.idp2.client_secret": CLIENT_SECRET,
            "devstack.idp2.redirect_uris": REDIRECT_URI,
            "devstack.idp2.key_file": str(key2),
            "devstack.api2.audience": "{base}/_dev/api2",
        }
    ) as base:
        yield base


def metadata(base, idp="idp"):
    return requests.get(f"{base}/_dev/{idp}/.well-known/openid-configuration", timeout=5).json()


def test_two_issuers_with_their_own_keys(stack):
    first, second = metadata(stack), metadata(stack, "idp2")
    assert (first["issuer"], second["issuer"]) == (stack + "/_dev/idp", stack + "/_dev/idp2")
    keys = [requests.get(m["jwks_uri"], timeout=5).json()["keys"][0]["kid"] for m in (first, second)]
    assert keys[0] != keys[1]
    for m in (first, second):
        token = log_in(requests.Session(), m, "alice")
        claims = jwt_claims(token["id_token"])
        assert claims["iss"] == m["issuer"]


def test_no_second_issuer_unless_configured():
    with running_devstack() as base:
        assert requests.get(base + "/_dev/idp2/.well-known/openid-configuration", timeout=5).status_code == 404


def test_resource_and_audience_name_the_access_tokens_audience(stack):
    m = metadata(stack)
    token = log_in(requests.Session(), m, "alice")
    assert jwt_claims(token["access_token"])["aud"] == stack + "/_dev/api"
    for param in ("resource", "audience"):
        answer = token_request(m, {"grant_type": "refresh_token", "refresh_token": token["refresh_token"], param: stack + "/_dev/api2"})
        assert answer.status_code == 200, answer.text
        token = {**token, **answer.json()}
        assert jwt_claims(token["access_token"])["aud"] == stack + "/_dev/api2"


def test_an_unknown_target_is_invalid_target(stack):
    m = metadata(stack)
    token = log_in(requests.Session(), m, "alice")
    answer = token_request(m, {"grant_type": "refresh_token", "refresh_token": token["refresh_token"], "resource": "https://elsewhere.example/"})
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_target"
    assert refresh(m, token["refresh_token"]).status_code == 200, "a refused target spends nothing"


def test_token_exchange(stack):
    m = metadata(stack)
    token = log_in(requests.Session(), m, "alice")
    form = {"grant_type": EXCHANGE, "subject_token": token["access_token"], "subject_token_type": ACCESS_TOKEN_TYPE,
            "resource": stack + "/_dev/api2"}
    answer = token_request(m, form)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE and body["token_type"] == "Bearer"
    claims = jwt_claims(body["access_token"])
    assert (claims["sub"], claims["aud"], claims["iss"]) == ("alice", stack + "/_dev/api2", m["issuer"])
    assert requests.get(stack + "/_dev/api2/me", headers={"Authorization": "Bearer " + body["access_token"]}, timeout=5).status_code == 200


@pytest.mark.parametrize(
    "change, status, error",
    [
        ({"subject_token": "not-a-token"}, 400, "invalid_grant"),
        ({"subject_token_type": "urn:ietf:params:oauth:token-type:id_token"}, 400, "invalid_request"),
        ({"resource": None}, 400, "invalid_target"),
        ({"resource": "https://elsewhere.example/"}, 400, "invalid_target"),
        ({"auth": None}, 401, "invalid_client"),
    ],
)
def test_token_exchange_refusals(stack, change, status, error):
    m = metadata(stack)
    token = log_in(requests.Session(), m, "alice")
    form = {"grant_type": EXCHANGE, "subject_token": token["access_token"], "subject_token_type": ACCESS_TOKEN_TYPE,
            "resource": stack + "/_dev/api2"}
    auth = (CLIENT_ID, CLIENT_SECRET)
    for key, value in change.items():
        if key == "auth":
            auth = value
        elif value is None:
            form.pop(key)
        else:
            form[key] = value
    answer = token_request(m, form, auth=auth)
    assert (answer.status_code, answer.json()["error"]) == (status, error)


def test_a_token_from_the_other_issuer_cannot_be_exchanged(stack):
    other = log_in(requests.Session(), metadata(stack, "idp2"), "alice")
    form = {"grant_type": EXCHANGE, "subject_token": other["access_token"], "subject_token_type": ACCESS_TOKEN_TYPE,
            "resource": stack + "/_dev/api2"}
    assert token_request(metadata(stack), form).json()["error"] == "invalid_grant"


def test_each_api_refuses_the_other_ones_tokens(stack):
    m = metadata(stack)
    token = log_in(requests.Session(), m, "alice")
    for_api = token["access_token"]
    for_api2 = token_request(m, {"grant_type": "refresh_token", "refresh_token": token["refresh_token"], "resource": stack + "/_dev/api2"}).json()["access_token"]

    def me(api, access_token):
        return requests.get(f"{stack}/_dev/{api}/me", headers={"Authorization": "Bearer " + access_token}, timeout=5)

    assert me("api", for_api).status_code == 200 and me("api2", for_api2).status_code == 200
    for api, token_for_other in (("api", for_api2), ("api2", for_api)):
        refused = me(api, token_for_other)
        assert refused.status_code == 401 and "invalid_token" in refused.headers["WWW-Authenticate"]


def test_both_apis_accept_both_issuers(stack):
    second = log_in(requests.Session(), metadata(stack, "idp2"), "partner-pat")
    response = requests.get(stack + "/_dev/api/me", headers={"Authorization": "Bearer " + second["access_token"]}, timeout=5)
    assert response.status_code == 200, response.text


def test_the_issuers_keep_separate_browser_sessions(stack):
    browser = requests.Session()
    log_in(browser, metadata(stack), "alice")
    paths = {cookie.path for cookie in browser.cookies}
    assert paths == {"/_dev/idp"}
