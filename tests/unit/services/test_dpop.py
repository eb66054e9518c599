"""The session's DPoP key and its proofs (RFC 9449), checked by an independent verifier."""

import json

import pytest

from myapp.services.dpop import (
    DPoPKey,
    DPoPKeyUnreadable,
    Nonces,
    access_token_hash,
    challenge_error,
    choose_algorithm,
    target_uri,
)
from myapp.services.stepup import parse_challenge
from myapp.settings import SettingsError, load_settings
from tests.conftest import base_settings
from tests.support.dpop_check import PRIVATE_MEMBERS, ProofRefused, verify_proof


@pytest.mark.parametrize("alg", ["ES256", "ES384", "PS256", "RS256"])
def test_a_proof_names_exactly_its_request_and_carries_only_the_public_key(alg):
    key = DPoPKey.generate(alg)
    proof = key.proof("POST", "https://API.example.test:443/v1/items?x=1#frag", access_token="at-1", nonce="n-1", clock=lambda: 1_700_000_000)
    header, claims, jkt = verify_proof(
        proof, method="POST", url="https://api.example.test/v1/items", access_token="at-1", max_age=10**10
    )
    assert header["typ"] == "dpop+jwt" and header["alg"] == alg
    assert not PRIVATE_MEMBERS & set(header["jwk"])
    assert claims["htu"] == "https://api.example.test/v1/items"
    assert (claims["iat"], claims["nonce"], claims["ath"]) == (1_700_000_000, "n-1", access_token_hash("at-1"))
    assert jkt == key.thumbprint()


def test_every_proof_has_its_own_jti_and_a_token_request_has_no_ath():
    key = DPoPKey.generate()
    claims = [verify_proof(key.proof("POST", "https://idp.test/token"), method="POST", url="https://idp.test/token")[1]
              for _ in range(50)]
    assert len({c["jti"] for c in claims}) == 50
    assert all("ath" not in c and "nonce" not in c for c in claims)


def test_a_proof_for_another_method_url_or_token_is_refused_by_a_strict_server():
    key = DPoPKey.generate()
    proof = key.proof("GET", "https://api.test/a", access_token="at-1")
    for kwargs in ({"method": "POST", "url": "https://api.test/a"}, {"method": "GET", "url": "https://api.test/b"},
                   {"method": "GET", "url": "https://api.test/a", "access_token": "at-2"}):
        with pytest.raises(ProofRefused):
            verify_proof(proof, **kwargs)


def test_htu_is_the_url_as_sent_without_query_or_fragment():
    assert target_uri("HTTPS://Api.Example.TEST:443/a%2Fb/c?q=1#x") == "https://api.example.test/a%2Fb/c"
    assert target_uri("http://127.0.0.1:8080") == "http://127.0.0.1:8080/"
    assert target_uri("http://[::1]:80/x") == "http://[::1]/x"
    assert target_uri("http://h/café a") == "http://h/caf%C3%A9%20a"  # as urllib3 puts it on the wire
    # RFC 9449 section 7.1's example.
    assert access_token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU") == "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"


def test_a_key_round_trips_through_its_stored_form_and_refuses_anything_else():
    key = DPoPKey.generate("ES256")
    stored = key.to_json()
    again = DPoPKey.from_json(stored)
    assert again.thumbprint() == key.thumbprint() and again.alg == "ES256"
    document = json.loads(stored)
    public_only = json.dumps({"alg": "ES256", "jwk": key.public_jwk})
    wrong_curve = json.dumps({"alg": "ES384", "jwk": document["jwk"]})
    for bad in (None, "", "not json", "[]", '{"alg": "HS256", "jwk": {}}', public_only, wrong_curve,
                json.dumps({"alg": "ES256"})):
        with pytest.raises(DPoPKeyUnreadable):
            DPoPKey.from_json(bad)
    with pytest.raises(ValueError):
        DPoPKey.generate("HS256")


def test_the_key_never_shows_in_its_repr():
    key = DPoPKey.generate()
    assert json.loads(key.to_json())["jwk"]["d"] not in repr(key)


def test_the_algorithm_is_es256_unless_the_provider_takes_only_another():
    assert choose_algorithm(["RS256", "ES256"]) == "ES256"
    assert choose_algorithm(["RS256", "PS256"]) == "PS256"
    assert choose_algorithm(["EdDSA", "ES512"]) is None
    assert choose_algorithm([]) is None


def test_nonces_are_kept_per_server_and_junk_is_ignored():
    nonces = Nonces()
    assert nonces.remember("https://api.test:8443/a", "n-1") == "n-1"
    assert nonces.get("https://API.test:8443/other?x") == "n-1"
    assert nonces.get("https://api.test/a") is None
    for junk in (None, "", "has space", 'quo"te', "x" * 600, "tab\there"):
        assert nonces.remember("https://api.test:8443/", junk) is None
    assert nonces.get("https://api.test:8443/") == "n-1"


def test_dpop_challenges_are_read_and_bearer_ones_are_not_mistaken_for_them():
    assert challenge_error('DPoP error="use_dpop_nonce", error_description="x", algs="ES256"') == "use_dpop_nonce"
    assert challenge_error('Bearer realm="x", DPoP algs="ES256" error="invalid_dpop_proof"') == "invalid_dpop_proof"
    assert challenge_error('Bearer error="invalid_token"') is None
    assert challenge_error(None) is None
    # It is logged: what is not a code is "invalid" (helper-46), as a provider's error codes are.
    assert challenge_error('DPoP error="<b>forged\\r line</b>"') == "invalid"
    assert challenge_error('DPoP error="' + "e" * 65 + '"') == "invalid"
    # A step-up challenge to a DPoP-bound token comes in the DPoP scheme.
    step_up = parse_challenge('DPoP error="insufficient_user_authentication", acr_values="urn:mfa", max_age="60"')
    assert step_up.acr_values == ("urn:mfa",) and step_up.max_age == 60


def test_dpop_settings_are_checked():
    settings = load_settings(base_settings("sqlite://", **{"myapp.oidc.dpop": "required"}))
    assert settings.providers["default"].dpop == "required"
    assert load_settings(base_settings("sqlite://")).providers["default"].dpop == "off"
    with pytest.raises(SettingsError, match="myapp.oidc.dpop: 'sometimes' is not one of off, auto, required"):
        load_settings(base_settings("sqlite://", **{"myapp.oidc.dpop": "sometimes"}))
    upstreams = {"myapp.upstreams": "api = https://api.example.test/", "myapp.upstream.api.dpop": "false"}
    assert load_settings(base_settings("sqlite://", **upstreams)).upstreams["api"].dpop is False
    with pytest.raises(SettingsError, match="dpop = false needs a token of its own"):
        load_settings(base_settings("sqlite://", **upstreams, **{"myapp.oidc.dpop": "auto"}))
    own = {**upstreams, "myapp.upstream.api.scope": "api:read", "myapp.oidc.dpop": "required"}
    assert load_settings(base_settings("sqlite://", **own)).upstreams["api"].dpop is False


@pytest.mark.parametrize("key, meant", [("myapp.oidc.dpopp", "myapp.oidc.dpop"), ("myapp.upstream.api.dpo", "myapp.upstream.api.dpop")])
def test_a_misspelt_dpop_setting_is_refused_naming_the_right_one(key, meant):
    with pytest.raises(SettingsError, match=f"{key}: unknown setting; did you mean {meant}"):
        load_settings(base_settings("sqlite://", **{"myapp.upstreams": "api = https://api.example.test/", key: "auto"}))
