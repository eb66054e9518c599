import json
import stat

import pytest
from pyramid.config import Configurator

from myapp.devstack import includeme
from myapp.devstack.keys import load_or_create_signing_key
from myapp.devstack.settings import load_devstack_settings
from myapp.settings import SettingsError

ISSUER = "http://127.0.0.1:6543/_dev/idp"


def settings(**overrides):
    raw = {"devstack.idp.issuer": ISSUER, "devstack.idp.redirect_uris": "http://127.0.0.1:6543/auth/callback"}
    raw.update({"devstack." + key.replace("__", "."): value for key, value in overrides.items()})
    return {key: value for key, value in raw.items() if value is not None}


def test_defaults():
    parsed = load_devstack_settings(settings())
    assert parsed.idp.issuer == ISSUER
    assert parsed.idp.client.client_id == "myapp-dev"
    assert parsed.idp.client.redirect_uris == ("http://127.0.0.1:6543/auth/callback",)
    assert parsed.idp.client.post_logout_redirect_uris == ()
    assert parsed.idp.client.backchannel_logout_uri is None
    assert str(parsed.idp.key_file) == "var/devstack-idp-key.json"
    assert (parsed.idp.access_token_lifetime, parsed.idp.id_token_lifetime) == (300, 300)
    assert parsed.idp.refresh_token_lifetime == 30 * 86400
    assert parsed.idp.rotate_refresh_tokens is True
    assert parsed.idp.refresh_token_reuse_interval == 0
    assert parsed.idp.secure_cookies is False
    assert parsed.api.audience == parsed.idp.api_audience == "http://127.0.0.1:6543/_dev/api"
    assert parsed.api.issuer == ISSUER
    assert parsed.api.jwks_uri == ISSUER + "/jwks"
    assert parsed.api.leeway == 30
    assert (parsed.idp.dpop, parsed.idp.dpop_nonce, parsed.idp.dpop_refresh_requires_proof) == ("on", False, False)
    assert parsed.api.dpop_nonce is False


def test_values_and_durations():
    parsed = load_devstack_settings(
        settings(
            idp__redirect_uris="http://a.test:1/cb  http://b.test:2/cb",
            idp__post_logout_redirect_uris="http://a.test:1/",
            idp__access_token_lifetime="2m",
            idp__id_token_lifetime="90",
            idp__refresh_token_lifetime="14d",
            idp__rotate_refresh_tokens="false",
            idp__refresh_token_reuse_interval="30s",
            api__audience="https://api.example.test",
            api__leeway="0",
            idp__dpop="ignore",
            idp__dpop_nonce="true",
            idp__dpop_refresh_requires_proof="yes",
            api__dpop_nonce="true",
        )
    )
    assert parsed.idp.client.redirect_uris == ("http://a.test:1/cb", "http://b.test:2/cb")
    assert parsed.idp.access_token_lifetime == 120
    assert parsed.idp.id_token_lifetime == 90
    assert parsed.idp.refresh_token_lifetime == 14 * 86400
    assert parsed.idp.rotate_refresh_tokens is False
    assert parsed.idp.refresh_token_reuse_interval == 30
    assert parsed.idp.api_audience == parsed.api.audience == "https://api.example.test"
    assert parsed.api.leeway == 0
    assert (parsed.idp.dpop, parsed.idp.dpop_nonce, parsed.idp.dpop_refresh_requires_proof) == ("ignore", True, True)
    assert parsed.api.dpop_nonce is True


def test_secret_from_environment(monkeypatch):
    monkeypatch.setenv("DEVSTACK_TEST_SECRET", "from-the-environment")
    parsed = load_devstack_settings(settings(idp__client_secret="env:DEVSTACK_TEST_SECRET"))
    assert parsed.idp.client.client_secret == "from-the-environment"
    assert "from-the-environment" not in repr(parsed)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"idp__issuer": None}, "devstack.idp.issuer: required setting is missing"),
        ({"idp__issuer": "http://127.0.0.1:6543/idp"}, "devstack.idp.issuer: must be the externally visible URL"),
        ({"idp__issuer": "http://idp.example.test/_dev/idp"}, "plain http is only allowed on a loopback address"),
        ({"idp__issuer": "ftp://127.0.0.1/_dev/idp"}, "is not an absolute http(s) URL"),
        ({"idp__redirect_uris": None}, "devstack.idp.redirect_uris: required setting is missing"),
        ({"idp__redirect_uris": "/auth/callback"}, "devstack.idp.redirect_uris: '/auth/callback' is not"),
        ({"idp__access_token_lifetime": "soon"}, "devstack.idp.access_token_lifetime: 'soon' is not a duration"),
        ({"idp__access_token_lifetime": "0"}, "devstack.idp.access_token_lifetime: must be at least 1s"),
        ({"idp__rotate_refresh_tokens": "maybe"}, "devstack.idp.rotate_refresh_tokens: 'maybe' is not a boolean"),
        ({"api__leeway": "31"}, "devstack.api.leeway: must be between 0s and 30s"),
        ({"idp__rotate_refresh_token": "false"}, "devstack.idp.rotate_refresh_token: unknown development-stack"),
        ({"idp__refresh_token_reuse_interval": "6m"}, "devstack.idp.refresh_token_reuse_interval: must be between 0s and 300s"),
        ({"idp__refresh_token_reuse_intervall": "30"}, "devstack.idp.refresh_token_reuse_intervall: unknown development-stack"),
        ({"idp__dpop": "sometimes"}, "devstack.idp.dpop: 'sometimes' is not one of on, off, ignore"),
        ({"idp__dpop_nonce": "maybe"}, "devstack.idp.dpop_nonce: 'maybe' is not a boolean"),
        ({"idp__dpop_refresh_requires_proof": "2"}, "devstack.idp.dpop_refresh_requires_proof: '2' is not a boolean"),
        ({"api__dpop_nonce": "maybe"}, "devstack.api.dpop_nonce: 'maybe' is not a boolean"),
        ({"api__dpop": "on"}, "devstack.api.dpop: unknown development-stack setting"),
    ],
)
def test_refuses_bad_settings(overrides, message):
    with pytest.raises(SettingsError) as error:
        load_devstack_settings(settings(**overrides))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_https_issuer_on_any_host_means_secure_cookies():
    parsed = load_devstack_settings(settings(idp__issuer="https://idp.example.test/_dev/idp"))
    assert parsed.idp.secure_cookies is True
    assert parsed.api.audience == "https://idp.example.test/_dev/api"


def test_include_is_refused_in_production():
    class ProductionSettings:
        is_development = False

    with pytest.raises(SettingsError, match="refused in production"):
        with Configurator(settings={"myapp": ProductionSettings(), **settings()}) as config:
            config.include(includeme)


def test_key_file_is_created_private_and_reused(tmp_path):
    path = tmp_path / "var" / "key.json"
    key = load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key.is_private and key.kid
    assert load_or_create_signing_key(path).kid == key.kid
    assert list(path.parent.iterdir()) == [path]


def test_key_file_that_is_not_a_key_is_refused(tmp_path):
    path = tmp_path / "key.json"
    path.write_text(json.dumps({"kty": "RSA", "n": "AQAB", "e": "AQAB"}))
    with pytest.raises(SettingsError, match="devstack.idp.key_file"):
        load_or_create_signing_key(path)
