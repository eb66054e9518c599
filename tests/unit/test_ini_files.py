"""The shipped ini files parse, and production.ini refuses what it must."""

import re

import pytest
from cryptography.fernet import Fernet
from paste.deploy.loadwsgi import SERVER, loadcontext
from pyramid.paster import get_appsettings

from myapp.settings import DEVELOPMENT_CLIENT_SECRETS, DEVELOPMENT_ENCRYPTION_KEYS, SettingsError, load_settings
from tests.conftest import ROOT

PRODUCTION_ENV = {
    "MYAPP_DATABASE_URL": "postgresql+psycopg://myapp@db.internal/myapp",
    "MYAPP_PUBLIC_URL": "https://app.example.com",
    "MYAPP_OIDC_ISSUER": "https://login.example.com/realms/main",
    "MYAPP_OIDC_CLIENT_ID": "myapp",
    "MYAPP_OIDC_CLIENT_SECRET": "a-real-secret",
    "MYAPP_TOKEN_KEYS": Fernet.generate_key().decode(),
}


def ini(name):
    return dict(get_appsettings(str(ROOT / name), name="main"))


def test_development_ini_parses():
    settings = load_settings(ini("development.ini"), environ={})
    assert settings.is_development
    assert settings.session.cookie_secure is False
    assert not settings.session.cookie_name.startswith("__Host-")
    assert "demo" in settings.upstreams


def test_production_ini_parses_with_its_environment():
    settings = load_settings(ini("production.ini"), environ=PRODUCTION_ENV)
    assert settings.environment == "production"
    assert settings.session.cookie_name == "__Host-session" and settings.session.cookie_secure
    assert settings.providers["default"].client_secret == "a-real-secret"


@pytest.mark.parametrize("variable", sorted(PRODUCTION_ENV))
def test_production_ini_names_a_missing_secret(variable):
    environ = {k: v for k, v in PRODUCTION_ENV.items() if k != variable}
    with pytest.raises(SettingsError, match=f"environment variable {variable} is not set"):
        load_settings(ini("production.ini"), environ=environ)


def test_production_ini_refuses_development_secrets():
    with pytest.raises(SettingsError, match="development key"):
        load_settings(ini("production.ini"), environ={**PRODUCTION_ENV, "MYAPP_TOKEN_KEYS": next(iter(DEVELOPMENT_ENCRYPTION_KEYS))})
    with pytest.raises(SettingsError, match="development client secret"):
        load_settings(
            ini("production.ini"),
            environ={**PRODUCTION_ENV, "MYAPP_OIDC_CLIENT_SECRET": next(iter(DEVELOPMENT_CLIENT_SECRETS))},
        )


def test_production_ini_refuses_the_development_stack():
    settings = ini("production.ini")
    settings["pyramid.includes"] = "myapp.devstack"
    with pytest.raises(SettingsError, match="development stack"):
        load_settings(settings, environ=PRODUCTION_ENV)


def test_production_ini_has_no_secret_in_it():
    text = (ROOT / "production.ini").read_text()
    for line in text.splitlines():
        if line.strip().startswith(("myapp.oidc.client_secret", "myapp.tokens.encryption_keys", "sqlalchemy.url")):
            assert "= env:" in line or "= file:" in line


def test_every_spec_setting_is_in_both_ini_files():
    names = [
        "sqlalchemy.url", "myapp.public_url", "myapp.oidc.issuer", "myapp.oidc.client_id",
        "myapp.oidc.client_secret", "myapp.oidc.token_endpoint_auth_method", "myapp.oidc.scope",
        "myapp.oidc.redirect_uri", "myapp.oidc.post_logout_redirect_uri", "myapp.oidc.authorize_params",
        "myapp.oidc.groups_claim", "myapp.oidc.fetch_userinfo", "myapp.oidc.http_timeout",
        "myapp.authz.admin_group", "myapp.session.cookie_name", "myapp.session.cookie_secure",
        "myapp.session.cookie_samesite", "myapp.session.idle_timeout", "myapp.session.absolute_timeout",
        "myapp.tokens.encryption_keys", "myapp.tokens.refresh_leeway", "myapp.upstreams",
        "myapp.upstream.", "myapp.proxy.max_body_bytes", "myapp.lock.backend", "myapp.redis.url",
    ]
    for name in ["development.ini", "production.ini"]:
        text = (ROOT / name).read_text()
        assert [n for n in names if n not in text] == [], name


@pytest.mark.parametrize("name", ["development.ini", "production.ini"])
def test_the_server_refuses_bodies_larger_than_the_proxy_takes_and_no_others(name):
    """Larger ones: otherwise waitress spools an oversized body to disk before the app can refuse
    it. No others: waitress refuses a body of max_request_body_size bytes or more, so set equal to
    max_body_bytes it refused a body of exactly that size, which the proxy takes (SPEC.md: bodies
    *over* it get 413; found by a black-box review, h61). The ini files leave it to the server,
    which takes one more than the largest body the app takes (the app's registry says it)."""
    import socket
    from configparser import ConfigParser

    from myapp.request import LARGEST_BODY, MAX_FORM_BYTES
    from myapp.server import create_server
    from tests.support.servers import serve

    parser = ConfigParser(interpolation=None)
    parser.read(ROOT / name)
    environ = PRODUCTION_ENV if name == "production.ini" else {}
    limit = load_settings(ini(name), environ=environ).proxy.max_body_bytes
    assert limit > MAX_FORM_BYTES

    def app(environ, start_response):
        size = len(environ["wsgi.input"].read())
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(str(size))))])
        return [str(size).encode()]

    app.registry = {LARGEST_BODY: limit}  # what myapp.request.includeme registers for these settings

    def status_for(size: int) -> bytes:
        with socket.create_connection((host, int(port)), timeout=10) as connection:
            connection.sendall(b"POST /api/demo/x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
            try:
                connection.sendall(b"a" * size)
            except OSError:
                pass  # refused before the body: the answer is waiting
            return connection.makefile("rb").readline()

    body_size = {k: v for k, v in parser["server:main"].items() if k == "max_request_body_size"}
    assert body_size == {}, "left to the server, which follows myapp.proxy.max_body_bytes"
    with serve(app, create_server=create_server) as url:
        host, port = url.removeprefix("http://").split(":")
        assert status_for(limit) == b"HTTP/1.1 200 OK\r\n"
        assert status_for(limit + 1) == b"HTTP/1.1 413 Request Entity Too Large\r\n"


@pytest.mark.parametrize("name", ["development.ini", "production.ini"])
def test_the_ini_files_serve_with_the_strict_server(name):
    from configparser import ConfigParser

    parser = ConfigParser(interpolation=None)
    parser.read(ROOT / name)
    assert parser["server:main"]["use"] == "egg:myapp#waitress"


def server_settings(path, **pserve_variables):
    """[server:main] as pserve hands it to waitress, given pserve's ``name=value`` arguments."""
    return loadcontext(SERVER, f"config:{path}", global_conf=pserve_variables or None).local_conf


def test_production_ini_serves_each_process_on_the_port_pserve_names():
    """docs/deployment.md: one process per port, `pserve production.ini http_port=8081`, no edit."""
    assert server_settings(ROOT / "production.ini", http_port="8081")["port"] == "8081"
    assert server_settings(ROOT / "production.ini", http_port="8082")["port"] == "8082"
    default = server_settings(ROOT / "production.ini")
    assert (default["host"], default["port"]) == ("127.0.0.1", "8080")
    assert "listen" not in default, "waitress would prefer listen over host and port"


def test_production_ini_metrics_block_works_once_uncommented(tmp_path):
    text = (ROOT / "production.ini").read_text()
    uncommented = re.sub(r"^# (myapp\.metrics\.\w+ = )", r"\1", text, flags=re.MULTILINE)
    assert uncommented.count("\nmyapp.metrics.") == 2
    path = tmp_path / "production.ini"
    path.write_text(uncommented)
    settings = load_settings(dict(get_appsettings(str(path), name="main")), environ=PRODUCTION_ENV)
    assert settings.metrics.enabled and settings.metrics.allow == ("127.0.0.1", "::1")


@pytest.mark.parametrize("name", ["development.ini", "production.ini"])
def test_alembic_reaches_the_migrations_from_each_ini(name):
    """development.ini: the checkout's folder (autogenerate writes there); production.ini: the
    installed package's (tests/functional/test_installed_package.py installs one)."""
    from alembic.config import Config

    location = Config(str(ROOT / name)).get_main_option("script_location")
    assert location == {"development.ini": str(ROOT / "alembic"), "production.ini": "myapp:migrations"}[name]
