"""Every rejection rule of the OIDC client, each with a token signed by a real key.

Each test breaks exactly one rule; the same token with that rule intact is accepted (see
``test_a_valid_id_token_is_accepted``), so a removed check makes its test fail.
"""

import threading
import time
from datetime import datetime, timezone
from types import MappingProxyType

import pytest
from joserfc.jwk import ECKey, OctKey, RSAKey

from myapp.services.http import HttpClient, within
from myapp.services.oidc import (
    BACKCHANNEL_LOGOUT_EVENT,
    OIDCClient,
    OIDCError,
    ProviderMisconfigured,
    ProviderResting,
    ProviderUnavailable,
    Revocation,
    TokenRequestRefused,
    TokenResponseInvalid,
)
from myapp.services.oidc.client import TOKEN_ENDPOINT_REST, TokenEndpointRest
from myapp.services.tokenset import TokenSet
from myapp.settings import OIDCSettings
from tests.support.fake_provider import CLIENT_ID, CLIENT_SECRET, s256

NONCE = "n-0S6_WzA2Mj"


class Clock:
    def __init__(self):
        self.wall = time.time()
        self.mono = 1000.0

    def advance(self, seconds):
        self.wall += seconds
        self.mono += seconds


@pytest.fixture
def clock():
    return Clock()


def make_client(provider, clock, **overrides):
    values = dict(
        name="default",
        display_name="Sign in",
        issuer=provider.issuer,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        token_endpoint_auth_method="client_secret_basic",
        scope="openid profile email offline_access",
        redirect_uri="https://app.example.test/auth/callback",
        post_logout_redirect_uri="https://app.example.test/",
        authorize_params=MappingProxyType({}),
        groups_claim="groups",
        fetch_userinfo=True,
        http_timeout=2,
    )
    values.update(overrides)
    http = HttpClient(timeout=values["http_timeout"])
    return OIDCClient(settings=OIDCSettings(**values), http=http, clock=lambda: clock.wall, monotonic=lambda: clock.mono)


@pytest.fixture
def client(provider, clock):
    client = make_client(provider, clock)
    yield client
    client.http.close()


def rejects(client, token, reason, **kw):
    with pytest.raises(OIDCError) as info:
        client.validate_id_token(token, nonce=kw.pop("nonce", NONCE), **kw)
    assert info.value.reason == reason, info.value.message
    return info.value


def test_a_valid_id_token_is_accepted(client, provider):
    claims = client.validate_id_token(provider.sign(provider.claims(nonce=NONCE)), nonce=NONCE)
    assert claims["sub"] == "alice"


def test_wrong_issuer(client, provider):
    rejects(client, provider.sign(provider.claims(nonce=NONCE, iss="https://evil.example")), "bad_issuer")


def test_issuer_must_match_exactly(client, provider):
    rejects(client, provider.sign(provider.claims(nonce=NONCE, iss=provider.issuer + "/")), "bad_issuer")


def test_wrong_audience(client, provider):
    rejects(client, provider.sign(provider.claims(nonce=NONCE, aud="another-app")), "bad_audience")


def test_missing_audience(client, provider):
    rejects(client, provider.sign(provider.claims(nonce=NONCE, aud=None)), "bad_audience")


def test_audience_of_wrong_type(client, provider):
    rejects(client, provider.sign(provider.claims(nonce=NONCE, aud=[CLIENT_ID, 7])), "bad_audience")


def test_extra_untrusted_audience(client, provider):
    rejects(client, provider.sign(provider.claims(nonce=NONCE, aud=[CLIENT_ID, "other"], azp=CLIENT_ID)), "untrusted_audience")


def test_audience_as_one_element_list_is_accepted(client, provider):
    assert client.validate_id_token(provider.sign(provider.claims(nonce=NONCE, aud=[CLIENT_ID])), nonce=NONCE)


def test_azp_naming_another_client(client, provider):
    rejects(client, provider.sign(provider.claims(nonce=NONCE, azp="another-app")), "bad_authorized_party")


def test_missing_sub(client, provider):
    rejects(client, provider.sign(provider.claims(nonce=NONCE, sub=None)), "missing_sub")


@pytest.mark.parametrize("sub", ["", 42, "x" * 256])
def test_malformed_sub(client, provider, sub):
    rejects(client, provider.sign(provider.claims(nonce=NONCE, sub=sub)), "missing_sub")


def test_missing_exp(client, provider):
    rejects(client, provider.sign(provider.claims(nonce=NONCE, exp=None)), "missing_exp")


def test_expired(client, provider):
    rejects(client, provider.sign(provider.claims(nonce=NONCE, exp=int(time.time()) - 120)), "expired")


def test_exp_within_clock_skew_is_accepted(client, provider):
    assert client.validate_id_token(provider.sign(provider.claims(nonce=NONCE, exp=int(time.time()) - 10)), nonce=NONCE)


def test_missing_iat(client, provider):
    rejects(client, provider.sign(provider.claims(nonce=NONCE, iat=None)), "missing_iat")


def test_iat_as_string(client, provider):
    rejects(client, provider.sign(provider.claims(nonce=NONCE, iat=str(int(time.time())))), "missing_iat")


@pytest.mark.parametrize("claim, reason", [("iat", "missing_iat"), ("exp", "missing_exp"), ("nbf", "not_yet_valid")])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_time_that_is_not_finite_is_no_time(client, provider, claim, value, reason):
    """JSON parsers in Python read NaN and Infinity; no comparison with NaN is true, so a NaN
    iat or exp passed every check (and a NaN iat broke the logout token's replay record: a 500)."""
    rejects(client, provider.sign(provider.claims(nonce=NONCE, **{claim: value})), reason)


def test_a_time_too_large_for_a_float_is_refused_not_a_crash(client, provider):
    rejects(client, provider.sign(provider.claims(nonce=NONCE, iat=10**400)), "bad_iat")


def test_iat_in_the_future(client, provider):
    rejects(client, provider.sign(provider.claims(nonce=NONCE, iat=int(time.time()) + 600)), "bad_iat")


def test_iat_long_ago(client, provider):
    rejects(client, provider.sign(provider.claims(nonce=NONCE, iat=int(time.time()) - 3 * 86400)), "bad_iat")


def test_not_yet_valid(client, provider):
    rejects(client, provider.sign(provider.claims(nonce=NONCE, nbf=int(time.time()) + 600)), "not_yet_valid")


def test_wrong_nonce(client, provider):
    rejects(client, provider.sign(provider.claims(nonce="another")), "bad_nonce")


def test_missing_nonce(client, provider):
    rejects(client, provider.sign(provider.claims()), "bad_nonce")


def test_at_hash_must_match_the_access_token(client, provider):
    token = provider.sign(provider.claims(nonce=NONCE, at_hash="wrong"))
    rejects(client, token, "bad_at_hash", access_token="at-123")


def test_at_hash_matching_is_accepted(client, provider):
    from myapp.services.oidc import at_hash

    token = provider.sign(provider.claims(nonce=NONCE, at_hash=at_hash("at-123", "RS256")))
    assert client.validate_id_token(token, nonce=NONCE, access_token="at-123")


def test_logout_token_is_not_an_id_token(client, provider):
    rejects(client, provider.sign(provider.claims(nonce=NONCE), header={"typ": "logout+jwt"}), "bad_type")


def test_bad_signature(client, provider):
    impostor = RSAKey.generate_key(2048, parameters={"kid": "key-1"})
    rejects(client, provider.sign(provider.claims(nonce=NONCE), key=impostor), "bad_signature")


def test_tampered_payload(client, provider):
    header, payload, signature = provider.sign(provider.claims(nonce=NONCE)).split(".")
    other = provider.sign(provider.claims(nonce=NONCE, sub="mallory")).split(".")[1]
    rejects(client, f"{header}.{other}.{signature}", "bad_signature")


def test_alg_none(client, provider):
    rejects(client, provider.sign(provider.claims(nonce=NONCE), alg="none", key=None), "bad_algorithm")


def test_alg_none_even_when_advertised(client, provider):
    provider.metadata_overrides["id_token_signing_alg_values_supported"] = ["RS256", "none"]
    rejects(client, provider.sign(provider.claims(nonce=NONCE), alg="none", key=None), "bad_algorithm")


@pytest.mark.parametrize("advertised, reason", [(["RS256"], "bad_algorithm"), (["RS256", "HS256"], "bad_signature")])
def test_hs256_keyed_with_the_public_key(provider, clock, advertised, reason):
    """The classic confusion attack: HMAC with the provider's public key as the secret."""
    provider.metadata_overrides["id_token_signing_alg_values_supported"] = advertised
    public_pem = provider.key.as_pem(private=False)
    token = provider.sign(provider.claims(nonce=NONCE), key=public_pem, alg="HS256", header={"kid": "key-1"})
    rejects(make_client(provider, clock), token, reason)


def test_hs256_with_the_client_secret_when_advertised(client, provider):
    provider.metadata_overrides["id_token_signing_alg_values_supported"] = ["HS256"]
    token = provider.sign(provider.claims(nonce=NONCE), key=OctKey.import_key(CLIENT_SECRET.encode()), alg="HS256")
    assert client.validate_id_token(token, nonce=NONCE)


def test_hs256_without_a_client_secret(provider, clock):
    """A client that authenticates with keys has no secret to check HMAC with: a refusal, not a
    500 (joserfc refuses an empty key; helper-38)."""
    provider.metadata_overrides["id_token_signing_alg_values_supported"] = ["RS256", "HS256"]
    client = make_client(provider, clock, client_secret="")
    token = provider.sign(provider.claims(nonce=NONCE), key=OctKey.import_key(b"guessed-by-anyone-who-posts-one"), alg="HS256")
    rejects(client, token, "bad_algorithm")
    with pytest.raises(OIDCError) as info:
        client.validate_logout_token(provider.sign(provider.logout_claims(), key=OctKey.import_key(b"guessed-by-anyone-who-posts-one"), alg="HS256"))
    assert info.value.reason == "bad_algorithm"


def test_algorithm_not_advertised(client, provider):
    ec = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
    provider.published_keys = [provider.key, ec]
    rejects(client, provider.sign(provider.claims(nonce=NONCE), key=ec, alg="ES256"), "bad_algorithm")


def test_ec_key_when_advertised(client, provider):
    ec = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
    provider.published_keys = [provider.key, ec]
    provider.metadata_overrides["id_token_signing_alg_values_supported"] = ["RS256", "ES256"]
    assert client.validate_id_token(provider.sign(provider.claims(nonce=NONCE), key=ec, alg="ES256"), nonce=NONCE)


@pytest.fixture(scope="module")
def key_host():
    """Where a hostile token says its key lives; it records every request it gets."""
    hits = []

    def app(environ, start_response):
        hits.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"keys": []}']

    from tests.support.servers import serve

    with serve(app) as url:
        yield url, hits


@pytest.mark.parametrize("header", ["jwk", "jku", "x5u"])
def test_key_headers_are_ignored(client, provider, header, key_host):
    """A token pointing at its own key is verified with the provider's published keys only."""
    url, hits = key_host
    attacker = RSAKey.generate_key(2048, parameters={"kid": "attacker"})
    values = {"jwk": attacker.as_dict(private=False), "jku": url + "/jwks", "x5u": url + "/cert.pem"}
    token = provider.sign(provider.claims(nonce=NONCE), key=attacker, header={header: values[header]})
    with pytest.raises(OIDCError) as info:
        client.validate_id_token(token, nonce=NONCE)
    assert info.value.reason in ("unknown_key", "malformed_token")
    same_kid = provider.sign(provider.claims(nonce=NONCE), key=attacker, header={header: values[header], "kid": "key-1"})
    with pytest.raises(OIDCError) as info:
        client.validate_id_token(same_kid, nonce=NONCE)
    assert info.value.reason in ("bad_signature", "malformed_token")
    assert hits == []


def test_unknown_kid_then_rotation_is_accepted_after_one_refetch(client, provider, clock):
    assert client.validate_id_token(provider.sign(provider.claims(nonce=NONCE)), nonce=NONCE)
    assert provider.jwks_fetches == 1
    rotated = RSAKey.generate_key(2048, parameters={"kid": "key-2"})
    provider.published_keys = [rotated]
    assert client.validate_id_token(provider.sign(provider.claims(nonce=NONCE), key=rotated), nonce=NONCE)
    assert provider.jwks_fetches == 2


def test_unknown_kid_refetches_at_most_once_a_minute(client, provider, clock):
    client.validate_id_token(provider.sign(provider.claims(nonce=NONCE)), nonce=NONCE)
    stranger = RSAKey.generate_key(2048, parameters={"kid": "stranger"})
    for _ in range(5):
        rejects(client, provider.sign(provider.claims(nonce=NONCE), key=stranger), "unknown_key")
    assert provider.jwks_fetches == 2
    clock.advance(61)
    rejects(client, provider.sign(provider.claims(nonce=NONCE), key=stranger), "unknown_key")
    assert provider.jwks_fetches == 3


def test_first_fetch_does_not_count_against_the_rate_limit(client, provider):
    rotated = RSAKey.generate_key(2048, parameters={"kid": "key-2"})
    provider.published_keys = [provider.key]
    client.validate_id_token(provider.sign(provider.claims(nonce=NONCE)), nonce=NONCE)
    provider.published_keys = [provider.key, rotated]
    assert client.validate_id_token(provider.sign(provider.claims(nonce=NONCE), key=rotated), nonce=NONCE)


def test_no_kid_with_one_key_is_accepted(client, provider):
    token = provider.sign(provider.claims(nonce=NONCE), header={"kid": None})
    assert client.validate_id_token(token, nonce=NONCE)


def test_no_kid_with_several_keys_is_refused(client, provider):
    provider.published_keys = [provider.key, RSAKey.generate_key(2048, parameters={"kid": "key-2"})]
    rejects(client, provider.sign(provider.claims(nonce=NONCE), header={"kid": None}), "ambiguous_key")


def test_encryption_keys_are_not_used_to_verify(client, provider):
    enc = RSAKey.generate_key(2048, parameters={"kid": "enc", "use": "enc"})
    provider.published_keys = [provider.key, enc]
    same_material = RSAKey.import_key({k: v for k, v in enc.as_dict(private=True).items() if k != "use"})
    rejects(client, provider.sign(provider.claims(nonce=NONCE), key=same_material, header={"kid": "enc"}), "unknown_key")


def test_unreadable_published_key_is_skipped(client, provider):
    class Broken:
        kid = "broken"

        def as_dict(self, private=False):
            return {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"}

    provider.published_keys = [Broken(), provider.key]
    assert client.validate_id_token(provider.sign(provider.claims(nonce=NONCE)), nonce=NONCE)


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c.d", "é.b.c", "eyJhbGciOiJSUzI1NiJ9.!!.x", None, "x" * 70000])
def test_malformed_tokens(client, provider, token):
    rejects(client, token, "malformed_token")


def test_claims_that_are_not_an_object(client, provider):
    from joserfc import jws

    token = jws.serialize_compact({"alg": "RS256", "kid": "key-1"}, b"[1, 2]", provider.key, algorithms=["RS256"])
    rejects(client, token, "malformed_token")


def test_discovery_issuer_mismatch(client, provider):
    provider.metadata_overrides["issuer"] = "https://evil.example"
    with pytest.raises(ProviderMisconfigured, match="must be identical"):
        client.metadata()


def test_a_discovery_issuer_mismatch_names_the_providers_own_setting(provider):
    from myapp.services.oidc.metadata import ProviderDocuments

    provider.metadata_overrides["issuer"] = "https://evil.example"
    http = HttpClient(timeout=2)
    documents = ProviderDocuments(issuer=provider.issuer, http=http, issuer_setting="myapp.oidc.partners.issuer")
    with pytest.raises(ProviderMisconfigured) as info:
        documents.metadata()
    http.close()
    assert info.value.message == (
        "The provider's discovery document names the issuer 'https://evil.example', "
        f"but myapp.oidc.partners.issuer is {provider.issuer!r}; they must be identical."
    )


def test_a_listed_providers_client_names_its_own_issuer_setting(provider, clock):
    provider.metadata_overrides["issuer"] = "https://evil.example"
    client = make_client(provider, clock, name="partners", settings_prefix="myapp.oidc.partners.")
    with pytest.raises(ProviderMisconfigured, match=r"but myapp\.oidc\.partners\.issuer is "):
        client.metadata()
    client.http.close()


def test_discovery_missing_endpoint(client, provider):
    provider.metadata_overrides["token_endpoint"] = None
    with pytest.raises(ProviderMisconfigured, match="token_endpoint"):
        client.metadata()


@pytest.mark.parametrize(
    "overrides, outcome",
    [
        ({}, Revocation.REVOKED),
        ({"revocation_endpoint": None}, Revocation.NOT_OFFERED),
        # Unusable for now is not "offers none": the revoker tries again rather than drop it.
        ({"issuer": "https://evil.example"}, Revocation.FAILED),
        ({"token_endpoint": None}, Revocation.FAILED),
    ],
)
def test_a_revocation_is_dropped_only_when_the_provider_offers_none(client, provider, overrides, outcome, caplog):
    provider.metadata_overrides.update(overrides)
    assert client.revoke("rt-1", "refresh_token") is outcome
    assert provider.revoked == (["rt-1"] if outcome is Revocation.REVOKED else [])
    assert "rt-1" not in caplog.text


def test_a_token_endpoint_that_held_a_call_until_it_timed_out_rests(provider, clock):
    """helper-140: each request due for a refresh waited out a hung provider's timeout on a thread
    of its own, until it held every thread. One that held a call until it timed out is left alone
    for TOKEN_ENDPOINT_REST seconds, then asked by one request at a time; a code exchange is not
    held back (a person who just signed in would start again), but counts."""
    client = make_client(provider, clock, http_timeout=1)
    provider.token_delay = 3
    with pytest.raises(ProviderUnavailable, match="timed out"):
        client.refresh("rt-1")
    asked = len(provider.token_forms)
    for call in (lambda: client.refresh("rt-2"), lambda: client.exchange_token("at", scope="x")):
        with pytest.raises(ProviderResting, match="did not answer moments ago"):
            call()
    assert len(provider.token_forms) == asked and client.token_endpoint_rest.resting()
    clock.advance(TOKEN_ENDPOINT_REST)
    assert not client.token_endpoint_rest.resting()
    provider.token_delay = 0
    provider.token_response = lambda form: (400, {"error": "invalid_grant"})
    with pytest.raises(TokenRequestRefused):
        client.refresh("rt-3")  # the probe: it answers, so everyone asks again
    with pytest.raises(TokenRequestRefused):
        client.refresh("rt-4")
    # A code exchange during a rest is made, and its timeout starts another.
    provider.token_delay, provider.token_response = 3, None
    with pytest.raises(ProviderUnavailable, match="timed out"):
        client.exchange_code("code", "verifier")
    assert client.token_endpoint_rest.resting()
    provider.token_delay = 0
    provider.token_response = lambda form: (400, {"error": "invalid_grant"})
    with pytest.raises(TokenRequestRefused):
        client.exchange_code("code", "verifier")  # not held back, and it answered: the rest ends
    assert not client.token_endpoint_rest.resting()
    client.http.close()


@pytest.mark.parametrize(
    "answer",
    [
        (503, "<html>down</html>"),  # at once: asking again costs nothing, and sees a recovery first
        (503, {"error": "temporarily_unavailable"}),
        (400, {"error": "invalid_grant"}),  # a refusal is an answer
        (200, {"token_type": "Bearer"}),  # one it could not use
    ],
)
def test_a_token_endpoint_that_answers_or_fails_at_once_is_asked_every_time(client, provider, answer):
    asked = []

    def answering(form):
        asked.append(form["refresh_token"])
        return answer

    provider.token_response = answering
    for token in ("rt-1", "rt-2", "rt-3"):
        with pytest.raises(OIDCError) as info:
            client.refresh(token)
        assert not isinstance(info.value, ProviderResting)
    assert asked == ["rt-1", "rt-2", "rt-3"]


def test_a_call_not_made_or_cut_short_by_the_lock_neither_starts_nor_ends_a_rest(client, provider, clock):
    """No time left under the refresh lock, a call the lock's time cut before its own timeout, or
    discovery that cannot be had: what the token endpoint would do is not known (helper-143,
    helper-144: each started or ended a rest)."""
    rest = client.token_endpoint_rest
    client.metadata()  # discovery read: what follows reaches the token endpoint's call
    with within(0):  # the lock's time ran out before the call
        with pytest.raises(ProviderUnavailable, match="timed out"):
            client.refresh("rt-1")
    assert not rest.resting() and provider.token_forms == []
    provider.token_delay = 1.0
    with within(0.3):  # the lock's time, shorter than the call's own (2 s): cut at 0.3 s
        with pytest.raises(ProviderUnavailable, match="timed out"):
            client.refresh("rt-2")
    assert not rest.resting()
    provider.token_delay = 0
    rest.ended(rest.ask(), True)  # resting
    clock.advance(TOKEN_ENDPOINT_REST)
    with within(0):
        with pytest.raises(ProviderUnavailable, match="timed out"):
            client.refresh("rt-3")  # the probe, not made
    assert rest.ask() is True  # still to be probed, by the next caller


def test_a_call_with_no_thread_for_its_timer_neither_starts_nor_ends_a_rest(client, provider, clock, monkeypatch):
    """A process that can start no more threads made no call (http.NoTimer): the provider said nothing."""
    import threading

    client.metadata()
    rest = client.token_endpoint_rest
    rest.ended(rest.ask(), True)
    clock.advance(TOKEN_ENDPOINT_REST)

    def no_thread(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Timer, "start", no_thread)
    with pytest.raises(ProviderUnavailable, match="connection failed"):
        client.refresh("rt-1")
    monkeypatch.undo()
    assert provider.token_forms == [] and rest.ask() is True  # still to be probed, as before the call


def test_after_its_rest_one_request_at_a_time_asks_the_token_endpoint(clock):
    rest = TokenEndpointRest(lambda: clock.mono)
    assert rest.ask() is False and not rest.resting()  # not resting: everyone asks, none is the probe
    rest.ended(False, True)
    assert rest.ask() is None and rest.resting()
    clock.advance(TOKEN_ENDPOINT_REST - 0.01)
    assert rest.ask() is None
    clock.advance(0.01)
    assert rest.ask() is True  # the first after the rest is the probe...
    assert rest.ask() is None and rest.resting()  # ...alone
    # A call let in before the rest, ending now, does not let a second probe in (helper-143).
    rest.ended(False, None)
    assert rest.ask() is None
    rest.ended(False, True)
    assert rest.ask() is None
    rest.ended(True, None)  # the probe was not made (no time left): the next caller probes
    assert rest.ask() is None  # the rest a late call just started runs first
    clock.advance(TOKEN_ENDPOINT_REST)
    assert rest.ask() is True
    rest.ended(True, False)
    assert rest.ask() is False and not rest.resting()


def test_discovery_unreachable(provider, clock):
    client = make_client(provider, clock, issuer="http://127.0.0.1:9/nothing")
    with pytest.raises(ProviderUnavailable):
        client.metadata()


def test_discovery_is_read_ahead_on_a_thread_at_most_every_interval(client, provider, clock, caplog):
    """What a page's form-action needs, without waiting for the provider: read on a thread,
    tried again after READ_AHEAD_INTERVAL when the provider did not answer, never once read."""
    from myapp.services.oidc.metadata import READ_AHEAD_INTERVAL

    def reads():
        return len([p for p, _, _ in provider.requests if p.endswith("/openid-configuration")])

    def settled():
        for thread in [t for t in threading.enumerate() if t.name == "myapp-discovery"]:
            thread.join(5)

    def no_thread(*args, **kwargs):
        raise RuntimeError("can't start new thread")

    with pytest.MonkeyPatch.context() as patch:  # a page goes out all the same, and nothing is lost
        patch.setattr(threading.Thread, "start", no_thread)
        assert client.form_action_origins() == {provider.issuer}
    assert "can't start new thread" in caplog.text
    clock.advance(READ_AHEAD_INTERVAL)
    provider.discovery_status = 500
    assert client.form_action_origins() == {provider.issuer}  # the issuer (an origin here): not waiting
    settled()
    client.form_action_origins()  # within the interval: not again
    settled()
    assert reads() == 1 and "discovery not read ahead" in caplog.text
    provider.discovery_status = 200
    clock.advance(READ_AHEAD_INTERVAL)
    client.form_action_origins()
    settled()
    assert reads() == 2 and client.documents.cached_metadata is not None
    clock.advance(READ_AHEAD_INTERVAL)
    client.form_action_origins()  # read: nothing more
    settled()
    assert reads() == 2


def test_discovery_error_status(client, provider):
    provider.discovery_status = 500
    with pytest.raises(ProviderUnavailable):
        client.metadata()
    provider.discovery_status = 404
    with pytest.raises(ProviderMisconfigured):
        client.metadata()


def test_discovery_is_cached_and_refreshed_hourly(client, provider, clock):
    client.metadata()
    client.metadata()
    assert provider.discovery_fetches == 1
    clock.advance(3601)
    client.metadata()
    assert provider.discovery_fetches == 2


def test_stale_discovery_is_kept_while_the_provider_is_down(client, provider, clock):
    client.metadata()
    clock.advance(3601)
    provider.discovery_status = 503
    assert client.metadata().issuer == provider.issuer


def test_signing_algorithms_we_cannot_use(client, provider):
    provider.metadata_overrides["id_token_signing_alg_values_supported"] = ["none"]
    with pytest.raises(ProviderMisconfigured):
        client.metadata()


def test_token_endpoint_500(client, provider):
    provider.token_response = lambda form: (500, {"error": "server_error"})
    with pytest.raises(ProviderUnavailable):
        client.exchange_code("code", "verifier")


def test_token_endpoint_bad_json(client, provider):
    provider.token_response = lambda form: (200, "<html>oops</html>")
    with pytest.raises(OIDCError) as info:
        client.exchange_code("code", "verifier")
    assert info.value.reason == "token_endpoint_error"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 302])
def test_tokens_that_come_without_a_success_status_are_not_taken(client, provider, status):
    """RFC 6749 section 5.1: a token response is 200 OK. What a client error (or an unfollowed
    redirect) holds is no answer to the request, even without an OAuth error in it."""
    provider.token_response = lambda form: (
        status, {"access_token": "at", "token_type": "Bearer", "id_token": "idt", "refresh_token": "rt"}
    )
    with pytest.raises(OIDCError) as info:
        client.exchange_code("code", "verifier")
    assert info.value.reason == "token_endpoint_error" and f"answered HTTP {status}" in info.value.message


def test_token_endpoint_invalid_grant(client, provider):
    provider.token_response = lambda form: (400, {"error": "invalid_grant"})
    with pytest.raises(TokenRequestRefused) as info:
        client.exchange_code("code", "verifier")
    assert info.value.error == "invalid_grant"


def test_token_endpoint_hang(provider, clock):
    client = make_client(provider, clock, http_timeout=1)
    client.metadata()
    provider.token_delay = 5
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="timed out"):
        client.exchange_code("code", "verifier")
    assert time.monotonic() - started < 4


@pytest.mark.parametrize(
    "body, issued",
    [
        ({"token_type": "Bearer"}, TokenSet()),
        ({"access_token": "", "token_type": "Bearer", "refresh_token": "rt"}, TokenSet(refresh_token="rt")),
        ({"access_token": "x", "token_type": "mac"}, TokenSet(access_token="x")),
        ({"access_token": "x", "token_type": "mac", "refresh_token": "rt"}, TokenSet(access_token="x", refresh_token="rt")),
        ({"access_token": "x"}, TokenSet(access_token="x")),
        # helper-38: a refresh token that is not a string failed later, as a 500
        ({"access_token": "x", "token_type": "Bearer", "refresh_token": 5}, TokenSet(access_token="x")),
        ({"access_token": "x", "token_type": "Bearer", "refresh_token": ["rt"]}, TokenSet(access_token="x")),
        # Not a token any header could carry, so not one to send to the revocation endpoint either.
        ({"access_token": "x y", "token_type": "Bearer", "refresh_token": "rt"}, TokenSet(refresh_token="rt")),
    ],
)
def test_token_response_without_a_bearer_access_token(client, provider, body, issued):
    """Refused, with what it issued all the same that the provider would take: the caller keeps a
    rotated refresh token (a refresh) or has it revoked (a sign-in), and revokes a usable access token."""
    provider.token_response = lambda form: (200, body)
    with pytest.raises(TokenResponseInvalid) as info:
        client.exchange_code("code", "verifier")
    assert info.value.reason == "token_response_invalid"
    assert info.value.issued() == issued and info.value.refresh_token == issued.refresh_token


@pytest.mark.parametrize("grant", ["exchange_code", "refresh"])
def test_an_empty_refresh_token_is_an_answer_without_one(client, provider, grant):
    """"refresh_token": "" is no refresh token, not one that "is not a string": the answer is taken
    (a refresh keeps the stored refresh token, SPEC.md), as before TokenSet.issued_in skipped empty
    strings."""
    provider.token_response = lambda form: (200, {"access_token": "at-2", "token_type": "Bearer", "refresh_token": ""})
    answer = client.exchange_code("code", "verifier") if grant == "exchange_code" else client.refresh("rt-1")
    assert answer["access_token"] == "at-2"
    assert TokenSet.from_response(answer, datetime.now(timezone.utc), previous=TokenSet(refresh_token="rt-1")).refresh_token == "rt-1"


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_client_authentication_methods(provider, clock, method):
    client = make_client(provider, clock, token_endpoint_auth_method=method)
    code = provider.grant(challenge=s256("verifier"), nonce=NONCE)
    token = client.exchange_code(code, "verifier")
    assert token["token_type"] == "Bearer"
    path, form, headers = [r for r in provider.requests if r[0] == "/token"][-1]
    if method == "client_secret_basic":
        assert headers["HTTP_AUTHORIZATION"].startswith("Basic ") and "client_secret" not in form
    else:
        assert form["client_secret"] == CLIENT_SECRET and "HTTP_AUTHORIZATION" not in headers


def test_authorization_url(client, provider):
    url = client.authorization_url(state="st", nonce="no", code_verifier="v" * 43, prompt="login")
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert url.startswith(provider.issuer + "/authorize?")
    assert query["response_type"] == "code"
    assert query["client_id"] == CLIENT_ID
    assert query["state"] == "st" and query["nonce"] == "no" and query["prompt"] == "login"
    assert query["code_challenge_method"] == "S256"
    assert query["code_challenge"] == s256("v" * 43)
    assert "code_verifier" not in query
    assert query["redirect_uri"] == "https://app.example.test/auth/callback"
    assert query["scope"] == "openid profile email offline_access"


API = "https://api.example.test/"
OTHER_API = "https://other.example.test/"


def test_a_configured_resource_that_an_upstream_also_names_is_asked_for_once(provider, clock):
    from urllib.parse import parse_qsl, urlsplit

    client = make_client(provider, clock, authorize_params=MappingProxyType({"resource": API}))
    url = client.authorization_url(state="st", nonce="no", code_verifier="v" * 43, resources=(OTHER_API, API, OTHER_API))
    sent = [value for name, value in parse_qsl(urlsplit(url).query) if name == "resource"]
    assert sent == [API, OTHER_API]
    client.http.close()


def test_a_pushed_authorization_request_asks_for_each_resource_once(provider, clock):
    from urllib.parse import parse_qs, urlsplit

    provider.offers_par = True
    client = make_client(provider, clock, authorize_params=MappingProxyType({"resource": API}))
    url = client.authorization_url(state="st", nonce="no", code_verifier="v" * 43, resources=(OTHER_API, API))
    (request_uri,) = parse_qs(urlsplit(url).query)["request_uri"]
    assert [value for name, value in provider.pushed[request_uri] if name == "resource"] == [API, OTHER_API]
    client.http.close()


def test_userinfo_with_the_same_subject(client, provider):
    assert client.userinfo("at", subject="alice")["name"] == "Alice From Userinfo"


def test_userinfo_naming_another_subject_is_discarded(client, provider):
    provider.userinfo_response = lambda token: (200, {"sub": "mallory", "name": "Mallory"})
    assert client.userinfo("at", subject="alice") is None


def test_userinfo_refused_keeps_going(client, provider):
    provider.userinfo_response = lambda token: (401, {"error": "invalid_token"})
    assert client.userinfo("at", subject="alice") is None


def rejects_logout(client, token, reason):
    with pytest.raises(OIDCError) as info:
        client.validate_logout_token(token)
    assert info.value.reason == reason, info.value.message


def test_a_valid_logout_token_is_accepted(client, provider):
    assert client.validate_logout_token(provider.logout_token())["sid"] == provider.sid
    assert client.validate_logout_token(provider.logout_token(header={"typ": "JWT"}))
    assert client.validate_logout_token(provider.logout_token(header={"typ": None}))
    assert client.validate_logout_token(provider.logout_token(sid=None))
    assert client.validate_logout_token(provider.logout_token(sub=None))
    assert client.validate_logout_token(provider.logout_token(exp=None))


def test_logout_token_bad_signature(client, provider):
    impostor = RSAKey.generate_key(2048, parameters={"kid": "key-1"})
    rejects_logout(client, provider.sign(provider.logout_claims(), key=impostor), "bad_signature")


def test_logout_token_alg_none(client, provider):
    rejects_logout(client, provider.sign(provider.logout_claims(), key=None, alg="none"), "bad_algorithm")


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({"iss": "https://evil.example"}, "bad_issuer"),
        ({"aud": "another-app"}, "bad_audience"),
        ({"iat": None}, "missing_iat"),
        ({"exp": int(time.time()) - 600}, "expired"),
        ({"events": None}, "bad_events"),
        ({"events": {"http://schemas.openid.net/event/other": {}}}, "bad_events"),
        ({"events": {BACKCHANNEL_LOGOUT_EVENT: "yes"}}, "bad_events"),
        ({"sub": None, "sid": None}, "missing_sub_and_sid"),
        ({"sid": 5}, "bad_sub_or_sid"),
        ({"nonce": "abc"}, "nonce_present"),
        ({"jti": None}, "missing_jti"),
    ],
)
def test_logout_token_rules(client, provider, overrides, reason):
    rejects_logout(client, provider.logout_token(**overrides), reason)


def test_logout_token_typ(client, provider):
    rejects_logout(client, provider.logout_token(header={"typ": "at+jwt"}), "bad_type")


def test_an_id_token_is_not_a_logout_token(client, provider):
    rejects_logout(client, provider.sign(provider.claims(nonce=NONCE)), "bad_events")


def test_https_issuer_needs_https_endpoints(client, provider):
    from myapp.services.oidc import ProviderMetadata

    document = {**provider.metadata(), "issuer": "https://idp.example.test"}
    document.update({k: v.replace(provider.issuer, "https://idp.example.test") for k, v in document.items() if k.endswith("endpoint") or k == "jwks_uri"})
    assert ProviderMetadata.from_document(document, "https://idp.example.test").token_endpoint.startswith("https://")
    document["token_endpoint"] = "http://idp.example.test/token"
    with pytest.raises(ProviderMisconfigured, match="token_endpoint"):
        ProviderMetadata.from_document(document, "https://idp.example.test")


def test_a_key_of_the_wrong_curve_is_not_a_candidate(client, provider):
    p256 = ECKey.generate_key("P-256", parameters={"kid": "ec"})
    p384_same_kid = ECKey.generate_key("P-384", parameters={"kid": "ec"})
    provider.published_keys = [provider.key, p384_same_kid]
    provider.metadata_overrides["id_token_signing_alg_values_supported"] = ["RS256", "ES256"]
    rejects(client, provider.sign(provider.claims(nonce=NONCE), key=p256, alg="ES256"), "unknown_key")


def test_an_oversized_discovery_document_is_refused(client, provider):
    provider.metadata_overrides["padding"] = "x" * (1024 * 1024 + 1)
    with pytest.raises(ProviderMisconfigured, match="over 1 MiB"):
        client.metadata()


def test_a_redirecting_token_endpoint_is_not_followed(client, provider):
    from tests.support.servers import canned_http_server

    moved = f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {provider.issuer}/token\r\nContent-Length: 0\r\n\r\n"
    with canned_http_server(moved.encode()) as elsewhere:
        provider.metadata_overrides["token_endpoint"] = elsewhere + "/token"
        with pytest.raises(OIDCError) as info:
            client.exchange_code("code", "verifier")
    assert info.value.reason == "token_endpoint_error" and "redirect" in info.value.message
    assert [p for p, _, _ in provider.requests if p == "/token"] == []


def test_a_discovery_document_that_is_not_an_object_is_refused(provider, clock):
    from tests.support.servers import serve

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'["not", "an", "object"]']

    with serve(app) as url:
        with pytest.raises(ProviderMisconfigured, match="not an object"):
            make_client(provider, clock, issuer=url).metadata()


# What a provider sends that no Python str method may be trusted with (helper-125, each a 500).


def test_an_algorithm_list_holding_what_is_no_string_names_none_of_those(client, provider):
    """A list in id_token_signing_alg_values_supported raised TypeError (unhashable), a 500 at
    /login and, anonymously, at the back-channel logout endpoint, which reads discovery."""
    provider.metadata_overrides["id_token_signing_alg_values_supported"] = [["RS256"], {"a": 1}, "RS256"]
    assert client.metadata().signing_algorithms == frozenset({"RS256"})
    provider.metadata_overrides["id_token_signing_alg_values_supported"] = [["RS256"]]
    client.documents._metadata = None
    with pytest.raises(ProviderMisconfigured, match="none of the algorithms"):
        client.metadata()


@pytest.mark.parametrize("path", ["/authorize/\u20ac", "/authorize/\u00e9", "/authorize x", "/authorize\t", "/auth\ud800", "/authorize#f"])
@pytest.mark.parametrize("name", ["authorization_endpoint", "end_session_endpoint"])
def test_an_endpoint_that_is_no_ascii_url_is_no_usable_endpoint(client, provider, name, path):
    """A URL is ASCII, without spaces or controls: the euro sign could not go into a Location
    header (a 500 from the server at /login)."""
    provider.metadata_overrides[name] = provider.issuer + path
    with pytest.raises(ProviderMisconfigured, match=f"no usable {name}"):
        client.metadata()


@pytest.mark.parametrize("claim", ["nonce", "at_hash"])
def test_a_nonce_or_at_hash_holding_a_lone_surrogate_is_refused(client, provider, claim):
    value = "\ud800"
    reason = "bad_nonce" if claim == "nonce" else "bad_at_hash"
    claims = provider.claims(nonce=NONCE) if claim == "at_hash" else provider.claims()
    token = provider.sign({**claims, claim: value})
    rejects(client, token, reason, access_token="at-123")


@pytest.mark.parametrize("refresh_token", ["\ud800", "rt\u00e9", "rt\n", "rt\x7f"])
@pytest.mark.parametrize("grant", ["exchange_code", "refresh"])
def test_a_refresh_token_that_is_not_printable_ascii_is_refused_and_not_kept(client, provider, grant, refresh_token):
    """RFC 6749 appendix A.17: a refresh token is printable ASCII. A lone surrogate could be neither
    stored (encrypted as UTF-8) nor sent back: a 500 at the callback and at every refresh, the
    spent refresh token lost. Refused; its access token is revoked, the refresh token is not kept."""
    provider.token_response = lambda form: (200, {"access_token": "at-2", "token_type": "Bearer", "refresh_token": refresh_token})
    with pytest.raises(TokenResponseInvalid) as info:
        client.exchange_code("code", "verifier") if grant == "exchange_code" else client.refresh("rt-1")
    assert info.value.issued() == TokenSet(access_token="at-2") and info.value.refresh_token is None


@pytest.mark.parametrize("request_uri", ["\ud800", "urn:x:\u00e9", "urn:x y", ""])
def test_a_pushed_authorization_response_whose_request_uri_is_no_uri_is_refused(provider, clock, request_uri):
    provider.offers_par = True
    provider.par_response = lambda form: (201, {"request_uri": request_uri, "expires_in": 60})
    client = make_client(provider, clock)
    with pytest.raises(OIDCError) as info:
        client.authorization_url(state="st", nonce="no", code_verifier="v" * 43)
    assert info.value.reason == "par_failed"
    client.http.close()


def test_an_error_message_is_one_line_of_encodable_text_whatever_the_provider_wrote():
    """Shown on a page and logged: a lone surrogate the page could not encode (a 500), a line
    feed a forged log line (helper-127)."""
    error = ProviderMisconfigured("The provider takes DPoP proofs only in \ud800\nmyapp WARNING forged, none")
    assert error.message == str(error) == "The provider takes DPoP proofs only in \ufffdmyapp WARNING forged, none"
