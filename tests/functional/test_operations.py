"""The operator's side: metrics, readiness, and the console scripts."""

import contextlib
import math
import os
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from myapp.models import (
    SCHEMA_REVISION,
    AuditEvent,
    LoginTransaction,
    SeenLogoutToken,
    TokenRevocation,
    User,
    UserSession,
)
from myapp.models.meta import utcnow
from myapp.scripts import end_sessions, generate_key, migrate, purge, read_ini, show_config
from myapp.services import Services
from myapp.services.sessions import SessionStore
from myapp.services.tokenset import TokenCipher
from myapp.settings import load_settings
from tests.conftest import TEST_KEY, base_settings, private_schema
from tests.functional.auth.flows import sign_in as sign_in_with_provider
from tests.functional.conftest import Browser


def test_metrics_are_off_by_default(browser):
    browser.get("/metrics", status=404)


@pytest.fixture
def metrics_app(make_app):
    # The browser's address, 203.0.113.7, is allowed by its network.
    return make_app(**{"myapp.metrics.enabled": "true", "myapp.metrics.allow": "127.0.0.1 203.0.113.0/29"})


def metric(text, name, **labels):
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return None


def test_metrics_count_logins_and_failures(metrics_app, provider):
    browser = Browser(metrics_app)
    sign_in_with_provider(browser, provider)
    Browser(metrics_app).get("/auth/callback", params={"state": "forged", "code": "x"}, status=400)
    text = browser.get("/metrics").text
    assert metric(text, "myapp_logins_total") == 1
    assert metric(text, "myapp_login_failures_total", reason="unknown_state") == 1
    assert "myapp_active_sessions" in text and "myapp_proxy_latency_seconds_bucket" in text or "# HELP myapp_proxy_latency_seconds" in text


def test_metrics_are_served_while_the_database_is_down(metrics_app, provider, monkeypatch, caplog):
    """The process's counters are what an operator needs in an outage: the answer was a 503 page,
    every counter lost for the outage's length (helper-136). The live sessions, the one figure the
    database gives, are NaN (unknown), and the log says why."""
    browser = Browser(metrics_app)
    sign_in_with_provider(browser, provider)

    def down(self):
        raise OperationalError("SELECT count(*)", {}, Exception("connection refused"))

    monkeypatch.setattr(SessionStore, "count_live", down)
    response = Browser(metrics_app).get("/metrics", status=200)
    assert response.content_type == "text/plain"
    assert metric(response.text, "myapp_logins_total") == 1
    assert math.isnan(metric(response.text, "myapp_active_sessions"))
    assert "metrics served without the live sessions: " in caplog.text


def test_metrics_only_for_allowed_addresses(metrics_app):
    Browser(metrics_app).get("/metrics", status=200)
    for address in ("198.51.100.9", "203.0.113.8"):
        other = Browser(metrics_app)
        other.extra_environ = {**other.extra_environ, "REMOTE_ADDR": address}
        other.get("/metrics", status=403)
    spoofed = Browser(metrics_app)
    spoofed.extra_environ = {**spoofed.extra_environ, "REMOTE_ADDR": "198.51.100.9"}
    spoofed.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"}, status=403)


def test_readyz_with_redis_down_is_503_quickly(make_app):
    app = make_app(**{"myapp.redis.url": "redis://127.0.0.1:9/0"})
    started = time.monotonic()
    response = Browser(app).get("/readyz", status=503)
    assert time.monotonic() - started < 5
    assert response.json["checks"]["redis"].startswith("unavailable")
    assert response.json["checks"]["database"] == "ok"


@pytest.fixture
def silent_redis():
    """A Redis that takes connections and then answers nothing (a hung server, packets dropped)."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept():
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0", accepted
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    thread.join()
    for connection in accepted:
        connection.close()
    for check in threading.enumerate():  # the checks still waiting end on the closed connection
        if check.name == "myapp readyz":
            check.join(timeout=10)


def test_probes_during_a_redis_hang_answer_in_time_and_start_a_few_checks(make_app, silent_redis, monkeypatch):
    """/readyz is public: each probe used to ping a silent Redis itself and hold its thread for the
    client's socket timeout (5 s), so that a burst of probes took every thread of the process and
    /healthz went unanswered too. Redis is checked as the database is: within READY_WITHIN, and by at
    most CHECKS_AT_ONCE checks still waiting."""
    from myapp.views import health

    url, accepted = silent_redis
    app = make_app(**{"myapp.redis.url": url})
    monkeypatch.setattr(health, "READY_WITHIN", 0.2)
    for _ in range(5):
        started = time.monotonic()
        response = Browser(app).get("/readyz", status=503)
        assert time.monotonic() - started < 2
        assert response.json["checks"]["redis"] == "unavailable: no answer within 0.2 s"
    assert len(accepted) <= health.CHECKS_AT_ONCE


@pytest.mark.redis
def test_readyz_with_redis_up(make_app):
    from tests.conftest import redis_url

    response = Browser(make_app(**{"myapp.redis.url": redis_url()})).get("/readyz", status=200)
    assert response.json["checks"] == {"database": "ok", "redis": "ok"}


@pytest.fixture
def ini(tmp_path, committed_database_url):
    settings = base_settings(committed_database_url, **{"myapp.oidc.client_secret": "s3cret-value"})
    lines = ["[app:main]", "use = egg:myapp"] + [f"{k} = {v}".replace("%", "%%") for k, v in settings.items()]
    path = tmp_path / "app.ini"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(main, *args, capsys):
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


SCRIPTS = [migrate, purge, end_sessions, generate_key, show_config]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_help(script, capsys):
    code, out, _ = run(script.main, "--help", capsys=capsys)
    assert code == 0 and "usage:" in out


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_is_plain_text_as_written(script, capsys):
    _, out, _ = run(script.main, "--help", capsys=capsys)
    assert script.__doc__.strip() in out, "paragraphs and examples kept, not re-wrapped"
    assert "``" not in out and "Example" in out


@pytest.mark.parametrize(
    "script, args, message",
    [
        (end_sessions, ["app.ini"], "one of the arguments --email --subject is required (see --help)"),
        (end_sessions, ["app.ini", "--email", "a@example.com", "--subject", "a"], "argument --subject: not allowed with argument --email (see --help)"),
        (purge, [], "the following arguments are required: INI (see --help)"),
        (migrate, ["app.ini", "--bogus"], "unrecognized arguments: --bogus (see --help)"),
    ],
)
def test_a_command_line_mistake_is_one_line(script, args, message, capsys):
    code, out, err = run(script.main, *args, capsys=capsys)
    assert code == 2 and out == ""
    assert err == f"{script.PROG}: {message}\n"


@pytest.mark.parametrize("script", [migrate, purge, end_sessions, show_config])
def test_a_missing_ini_is_one_line(script, capsys, tmp_path):
    extra = ["--subject", "x"] if script is end_sessions else []
    code, _, err = run(script.main, tmp_path / "nope.ini", *extra, capsys=capsys)
    assert code == 2
    assert err.count("\n") == 1 and "cannot read" in err


@pytest.mark.parametrize("script", [purge, end_sessions, show_config])
def test_a_bad_setting_is_one_line(script, capsys, tmp_path):
    path = tmp_path / "bad.ini"
    path.write_text("[app:main]\nuse = egg:myapp\nsqlalchemy.url = sqlite://\nmyapp.public_url = nope\n")
    extra = ["--subject", "x"] if script is end_sessions else []
    code, _, err = run(script.main, path, *extra, capsys=capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0] == f"{script.PROG}: myapp.public_url: 'nope' is not an absolute http(s) URL"
    # Every other problem of the same file in the same run, one line each.
    assert f"{script.PROG}: myapp.oidc.issuer: required setting is missing" in lines
    assert all(line.startswith(f"{script.PROG}: myapp.") for line in lines)


@pytest.mark.parametrize("script", [migrate, purge, end_sessions])
def test_a_broken_logging_section_is_one_line(script, ini, capsys):
    ini.write_text(ini.read_text() + "\n[loggers]\nkeys = root\n")
    extra = ["--subject", "x"] if script is end_sessions else []
    code, out, err = run(script.main, ini, *extra, capsys=capsys)
    assert (code, out) == (2, "")
    assert err == f"{script.PROG}: cannot set up logging from {ini}: KeyError: 'formatters'\n"


def test_generate_key(capsys):
    code, out, _ = run(generate_key.main, capsys=capsys)
    assert code == 0
    Fernet(out.strip())


@pytest.mark.parametrize("ec", [False, True])
def test_generate_client_key(tmp_path, capsys, ec):
    import stat

    from myapp.settings import load_settings

    code, out, err = run(generate_key.main, "--client-key", tmp_path, *(["--ec"] if ec else []), capsys=capsys)
    assert (code, err) == (0, "")
    (key,) = tmp_path.glob("client-key-*.pem")
    (certificate,) = tmp_path.glob("client-key-*.crt")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert f"myapp.oidc.client_keys = file:{key}" in out
    # What it wrote is exactly what the settings accept, the certificate matching the key.
    settings = base_settings(
        "sqlite://",
        **{"myapp.oidc.token_endpoint_auth_method": "private_key_jwt", "myapp.oidc.client_keys": f"file:{key}",
           "myapp.oidc.client_certificate": f"file:{certificate}"},
    )
    provider = load_settings(settings, environ={}).providers["default"]
    assert provider.client_keys and provider.client_certificate
    ini = tmp_path / "keys.ini"
    ini.write_text("\n".join(["[app:main]", "use = egg:myapp", *(f"{k} = {v}" for k, v in settings.items())]) + "\n")
    code, out, _ = run(show_config.main, ini, capsys=capsys)
    assert "providers.default.client_keys = *** (1 key(s))" in out and "PRIVATE KEY" not in out


def test_generate_client_key_prints_absolute_paths(tmp_path, capsys, monkeypatch):
    """A relative path is read from the server's working directory, / under systemd (helper-45)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keys").mkdir()
    code, out, _ = run(generate_key.main, "--client-key", "keys", capsys=capsys)
    (key,) = (tmp_path / "keys").glob("client-key-*.pem")
    assert code == 0 and f"myapp.oidc.client_keys = file:{key.resolve()}\n" in out
    assert "myapp.oidc.client_certificate = file:/" in out


def test_generate_client_key_refuses_what_it_cannot_do(tmp_path, capsys):
    code, _, err = run(generate_key.main, "--client-key", tmp_path / "nope", capsys=capsys)
    assert code == 2 and err == f"myapp-generate-key: {tmp_path / 'nope'} is not a directory\n"
    code, _, err = run(generate_key.main, "--ec", capsys=capsys)
    assert code == 2 and "--ec goes with --client-key" in err
    code, out, err = run(generate_key.main, "--subject", "app.example.com", capsys=capsys)  # helper-147: ignored
    assert code == 2 and out == "" and "--subject goes with --client-key" in err


@pytest.mark.parametrize("script", [migrate, purge, show_config])
@pytest.mark.parametrize(
    "value", ["postgresql+psycopg://myapp:Sup3rS3cret%40Pass@db.internal/myapp", "sqlite:///K9%(x)sTopSecretValue"]
)
def test_a_percent_not_written_twice_is_one_line_without_the_value(script, value, capsys, tmp_path):
    """helper-147: configparser's words repeated the value, or its tail (a password written %40)."""
    ini = tmp_path / "app.ini"
    ini.write_text(f"[app:main]\nuse = egg:myapp\nsqlalchemy.url = {value}\n")
    code, out, err = run(script.main, ini, capsys=capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err == (
        f"{script.PROG}: cannot read {ini}: the value of sqlalchemy.url in [app:main] holds a % that is not "
        "written %% (the value is not repeated here: it may be a secret)\n"
    )
    assert "Pass" not in err and "TopSecret" not in err


@pytest.mark.parametrize("script", [migrate])  # the others read the app's settings first, which this ini lacks
def test_a_percent_not_written_twice_in_a_logging_section_is_one_line_without_the_value(script, capsys, tmp_path):
    """helper-148: a handler's arguments (a mail password) repeated by the logging set-up's line."""
    ini = tmp_path / "app.ini"
    ini.write_text(
        f"[app:main]\nuse = egg:myapp\nsqlalchemy.url = sqlite:///{tmp_path}/x.sqlite\n"
        "[loggers]\nkeys = root\n[handlers]\nkeys = mail\n[formatters]\nkeys = plain\n"
        "[logger_root]\nlevel = WARNING\nhandlers = mail\n"
        "[handler_mail]\nclass = StreamHandler\nargs = ('Mail%Passw0rdSecret',)\nformatter = plain\n"
        "[formatter_plain]\nformat = %%(message)s\n"
    )
    code, out, err = run(script.main, ini, capsys=capsys)
    assert code == 2 and "Passw0rdSecret" not in err + out
    assert err == (
        f"{script.PROG}: cannot read {ini}: the value of args in [handler_mail] holds a % that is not written %% "
        "(the value is not repeated here: it may be a secret)\n"
    )


def test_what_is_no_ini_file_is_said_so(capsys, tmp_path):
    (tmp_path / "adir").mkdir()
    for given in (tmp_path / "adir", "dummy:///etc/hostname"):
        code, _, err = run(show_config.main, given, capsys=capsys)
        assert code == 2 and err.endswith(": give the path of an ini file (such as production.ini)\n"), err


def test_show_config_masks_secrets(ini, capsys, tmp_path):
    code, out, _ = run(show_config.main, ini, capsys=capsys)
    assert code == 0
    assert "providers.default.client_secret = ***" in out and "s3cret-value" not in out
    assert TEST_KEY not in out and "tokens.encryption_keys = *** (1 key(s))" in out
    assert "public_url = https://app.example.test" in out
    path = tmp_path / "pg.ini"
    path.write_text(ini.read_text().replace("sqlalchemy.url = ", "sqlalchemy.url = postgresql+psycopg://app:hunter2@db/app\n#"))
    _, out, _ = run(show_config.main, path, capsys=capsys)
    assert "hunter2" not in out and "app:***@db" in out
    # helper-45: a password in the query, as libpq and redis-py take it too; an IPv6 host kept bracketed
    path.write_text(ini.read_text().replace(
        "sqlalchemy.url = ", "sqlalchemy.url = postgresql+psycopg://app:pw1@[::1]:5432/app?password=hunter3&sslmode=require\n#"
    ))
    _, out, _ = run(show_config.main, path, capsys=capsys)
    assert "hunter3" not in out and "pw1" not in out
    assert "database_url = postgresql+psycopg://app:***@[::1]:5432/app?password=***&sslmode=require" in out


def test_show_config_masks_a_key_in_any_urls_query(ini, capsys, tmp_path):
    """An OTLP collector's key in its endpoint's query (helper-84) was shown as written."""
    path = tmp_path / "otel.ini"
    path.write_text(ini.read_text() + (
        "myapp.otel.enabled = true\n"
        "myapp.otel.endpoint = https://otlp.example.test/v1/traces?api_key=hunter5&region=eu\n"
    ))
    code, out, _ = run(show_config.main, path, capsys=capsys)
    assert code == 0 and "hunter5" not in out
    assert "otel.endpoint = https://otlp.example.test/v1/traces?api_key=***&region=eu\n" in out


@pytest.mark.parametrize(
    "url, shown",
    [
        # A password as SQLAlchemy reads it, to the "@": urlsplit took "/" for the path and found
        # none, and the URL was shown whole (helper-117; openssl rand -base64 writes "/" and "+").
        ("postgresql+psycopg://myapp:Zx9/kQ2+vB7=@db.internal:5432/myapp",
         "postgresql+psycopg://myapp:***@db.internal:5432/myapp"),
        ("postgresql+psycopg://myapp:a?b#c@db/myapp", "postgresql+psycopg://myapp:***@db/myapp"),
        # "[" in it was a traceback (urlsplit's "Invalid IPv6 URL").
        ("postgresql+psycopg://myapp:p[w]d@db/myapp", "postgresql+psycopg://myapp:***@db/myapp"),
        ("postgresql+psycopg://myapp@db/myapp?sslmode=require", "postgresql+psycopg://myapp@db/myapp?sslmode=require"),
    ],
)
def test_show_config_masks_a_database_password_as_sqlalchemy_reads_it(ini, capsys, tmp_path, url, shown):
    from sqlalchemy.engine import make_url

    if make_url(url).password:
        assert make_url(url).password not in shown
    path = tmp_path / "pg.ini"
    path.write_text(ini.read_text().replace("sqlalchemy.url = ", f"sqlalchemy.url = {url.replace('%', '%%')}\n#"))
    code, out, err = run(show_config.main, path, capsys=capsys)
    assert code == 0 and err == ""
    assert f"database_url = {shown}\n" in out


@pytest.mark.parametrize(
    "url, database, shown",
    [
        # Azure's user@server: SQLAlchemy and redis-py read the password after it, which a user name
        # without "@" missed, and the URL was shown whole (helper-119).
        ("postgresql+psycopg://myadmin@myserver:S3cretPassw0rd@myserver.postgres.database.azure.com:5432/app", True,
         "postgresql+psycopg://myadmin@myserver:***@myserver.postgres.database.azure.com:5432/app"),
        ("redis://default@acct:S3cretPassw0rd@redis.example.com:6379/0", False, "redis://default@acct:***@redis.example.com:6379/0"),
        # redis-py reads a password to the authority's last "@".
        ("redis://:s3cr@t-P4ssw0rd@redis.example.com:6379/0", False, "redis://:***@redis.example.com:6379/0"),
        ("rediss://app:a@b@c-S3cret@redis.example.com:6380/0", False, "rediss://app:***@redis.example.com:6380/0"),
        ("unix://:s3cret@/run/redis.sock?db=1", False, "unix://:***@/run/redis.sock?db=1"),
        # Nothing to hide: as written, an "@" after the host included.
        ("https://api.internal.example:8443/@me", False, "https://api.internal.example:8443/@me"),
        ("http://collector.internal:4318/v1/traces?team=ops@example.com", False,
         "http://collector.internal:4318/v1/traces?team=ops@example.com"),
        # ... but a Redis URL's "@" may end a password that reads as a port and a path (below):
        # with no password found, nothing of it is said.
        ("redis://redis.internal:6379/0?client_name=app@web1", False, "***"),
        # SQLAlchemy's query is all after the "?", "#" included; x-api-key is a key.
        ("postgresql+psycopg://app@db.internal/app?password=abc#defghij", True, "postgresql+psycopg://app@db.internal/app?password=***"),
        ("https://otlp.example.test/v1/traces?x-api-key=hunter10", False, "https://otlp.example.test/v1/traces?x-api-key=***"),
        # An unencoded "@" in the password: SQLAlchemy reads the rest as the host, which named half
        # of the password (helper-120); nothing is said of such a URL.
        ("postgresql+psycopg://app:p@ssw0rd-secret@db.example/app", True, "***"),
        # A "#", "/" or "?" unencoded in another URL's password ends its authority early: its port
        # cannot be read, and the URL was shown whole (helper-121).
        ("redis://:pa#S3CRETxyz@cache:6379/0", False, "***"),
        ("rediss://default:pa/S3CRETxyz@cache:6380/0", False, "***"),
        ("https://user:pa?S3CRETxyz@otlp.example/v1/traces", False, "***"),
        # Digits before the "#", "/" or "?" read as a port, and no password was found (helper-122).
        ("redis://:6379#topsecret@cache:6379/0", False, "***"),
        ("redis://:6379/topsecret@cache:6379/0", False, "***"),
        ("redis://user:12345#secret@cache:6379/0", False, "***"),
        ("redis://:6379?topsecret@cache:6379/0", False, "***"),
    ],
)
def test_show_config_masks_a_password_where_its_reader_finds_it(url, database, shown):
    assert show_config.mask_url(url, database=database) == shown


def test_show_config_masks_signatures_and_tokens_in_a_query(ini, capsys, tmp_path):
    """A presigned or token-bearing endpoint (X-Amz-Signature, X-Amz-Security-Token, auth_token)
    was shown as written (helper-117); a URL it cannot read is not shown at all."""
    path = tmp_path / "otel.ini"
    endpoint = "https://otlp.example.test/v1/traces?X-Amz-Signature=hunter6&X-Amz-Security-Token=hunter7&auth_token=hunter8&region=eu"
    path.write_text(ini.read_text() + f"myapp.otel.enabled = true\nmyapp.otel.endpoint = {endpoint}\n")
    code, out, _ = run(show_config.main, path, capsys=capsys)
    assert code == 0 and not {"hunter6", "hunter7", "hunter8"} & set(out.replace("=", " ").replace("&", " ").split())
    assert "region=eu" in out
    assert show_config.mask_url("https://[broken/x?token=hunter9") == "***"


def test_show_config_prints_the_public_url_as_the_app_uses_it(ini, capsys, tmp_path):
    path = tmp_path / "port.ini"
    path.write_text(ini.read_text().replace("myapp.public_url = ", "myapp.public_url = HTTPS://App.Example.test:443/\n#"))
    code, out, _ = run(show_config.main, path, capsys=capsys)
    assert code == 0
    assert "\npublic_url = https://app.example.test\n" in out
    # As written: what a provider has registered since before the public URL was read as an origin.
    assert "providers.default.redirect_uri = HTTPS://App.Example.test:443/auth/callback\n" in out


def test_show_config_shows_a_sqlite_url_as_written(ini, capsys, tmp_path):
    """development.ini's sqlite:///%(here)s/var/myapp.sqlite was shown as sqlite://var/...: another file."""
    path = tmp_path / "sqlite.ini"
    for url, shown in [
        ("sqlite:////srv/myapp/var/myapp.sqlite", "sqlite:////srv/myapp/var/myapp.sqlite"),
        ("sqlite:///var/myapp.sqlite", "sqlite:///var/myapp.sqlite"),
        ("sqlite:////srv/app.sqlite?password=hunter4", "sqlite:////srv/app.sqlite?password=***"),
    ]:
        path.write_text(ini.read_text().replace("sqlalchemy.url = ", f"sqlalchemy.url = {url}\n#"))
        code, out, _ = run(show_config.main, path, capsys=capsys)
        assert code == 0 and f"database_url = {shown}\n" in out


def test_show_config_ends_with_the_cautions_the_server_logs(ini, capsys, tmp_path):
    path = tmp_path / "http.ini"
    path.write_text(ini.read_text().replace("myapp.oidc.issuer = ", "myapp.oidc.issuer = http://idp.internal\n#"))
    code, out, _ = run(show_config.main, path, capsys=capsys)
    assert code == 0 and out.splitlines()[-1].startswith(
        "# caution: myapp.oidc.issuer: 'http://idp.internal' is plain http off this machine"
    )


def test_show_config_shows_step_up_rules(ini, capsys, tmp_path):
    """It ended in a traceback for any ini with rules, development.ini among them (helper-45)."""
    path = tmp_path / "rules.ini"
    path.write_text(ini.read_text() + "myapp.stepup.rules =\n    /admin = acr=urn:x:mfa max_age=15m\n    /reports = acr=a,b\n")
    code, out, err = run(show_config.main, path, capsys=capsys)
    assert (code, err) == (0, "")
    # Longest prefix first, as they are matched.
    assert "stepup_rules[0].prefix = /reports\nstepup_rules[0].acr_values = a b\nstepup_rules[0].max_age = None\n" in out
    assert "stepup_rules[1].prefix = /admin\nstepup_rules[1].acr_values = urn:x:mfa\nstepup_rules[1].max_age = 900s\n" in out


def test_show_config_cut_short_by_its_reader_ends_quietly(ini):
    """``myapp-show-config app.ini | head``: the reader leaves before the output is written."""
    code = "import sys; from myapp.scripts import show_config; sys.exit(show_config.main(sys.argv[1:]))"
    process = subprocess.Popen([sys.executable, "-c", code, str(ini)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before the interpreter has even started: every write meets a closed pipe
    _, err = process.communicate(timeout=60)
    assert (process.returncode, err) == (1, b"")


@pytest.fixture
def store(committed, committed_database_url):
    settings = load_settings(base_settings(committed_database_url), environ={})
    return SessionStore(dbsession=committed, cipher=TokenCipher([TEST_KEY]), settings=settings.session)


def test_purge(ini, committed, store, capsys):
    user = User(issuer="https://idp.example.test", subject="alice", name="Alice", groups=[])
    committed.add(user)
    committed.flush()
    _, live = store.create(user=user)
    _, old = store.create(user=user)
    store.end(old, "logout")
    committed.execute(UserSession.__table__.update().where(UserSession.id == old.id).values(ended_at=utcnow() - timedelta(days=2)))
    committed.add(LoginTransaction(state_hash="a" * 64, browser_hash="b" * 64, nonce=b"n", code_verifier=b"v",
                                   expires_at=utcnow() - timedelta(minutes=1)))
    committed.add(SeenLogoutToken(issuer="i", jti="j", expires_at=utcnow() - timedelta(minutes=1)))
    committed.add(SeenLogoutToken(issuer="i", jti="k", expires_at=utcnow() + timedelta(minutes=10)))
    committed.commit()
    code, out, _ = run(purge.main, ini, capsys=capsys)
    assert code == 0
    assert out.strip() == "purged 1 session(s), 1 unfinished sign-in(s), 1 logout-token record(s), 0 audit record(s)"
    committed.expire_all()
    assert committed.scalars(select(UserSession.id)).all() == [live.id]
    assert committed.scalar(select(func.count()).select_from(SeenLogoutToken)) == 1


def test_end_sessions(ini, committed, store, capsys):
    user = User(issuer="https://idp.example.test", subject="alice", name="Alice", groups=[])
    committed.add(user)
    committed.flush()
    store.create(user=user)
    store.create(user=user)
    committed.commit()
    code, out, _ = run(end_sessions.main, ini, "--subject", "alice", capsys=capsys)
    assert code == 0 and out.strip() == "ended 2 session(s) of alice (https://idp.example.test)"
    committed.expire_all()
    assert committed.scalar(select(func.count()).select_from(UserSession).where(UserSession.ended_at.is_(None))) == 0
    assert committed.scalars(select(AuditEvent.detail)).one() == "2 session(s) ended by myapp-end-sessions"
    code, _, err = run(end_sessions.main, ini, "--subject", "nobody", capsys=capsys)
    assert code == 2 and "no user with subject 'nobody'" in err


@pytest.fixture
def provider_ini(tmp_path, committed_database_url, provider):
    from tests.functional.conftest import provider_settings

    settings = provider_settings(committed_database_url, provider.issuer)
    lines = ["[app:main]", "use = egg:myapp"] + [f"{k} = {v}".replace("%", "%%") for k, v in settings.items()]
    path = tmp_path / "provider.ini"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_end_sessions_revokes_their_tokens_at_the_provider(provider_ini, committed, store, provider, capsys):
    from myapp.services.tokenset import TokenSet

    user = User(issuer=provider.issuer, subject="alice", name="Alice", groups=[])
    committed.add(user)
    committed.flush()
    store.create(user=user, tokens=TokenSet(refresh_token="rt-1"))
    store.create(user=user, tokens=TokenSet(access_token="at-2"))
    committed.commit()
    code, _, _ = run(end_sessions.main, provider_ini, "--subject", "alice", "--issuer", provider.issuer, capsys=capsys)
    assert code == 0
    assert sorted(provider.revoked) == ["at-2", "rt-1"]
    committed.expire_all()
    assert committed.scalar(select(func.count()).select_from(TokenRevocation)) == 0


def test_purge_ends_sessions_whose_time_ran_out_and_revokes_them(provider_ini, committed, store, provider, capsys):
    from myapp.services.tokenset import TokenSet

    user = User(issuer=provider.issuer, subject="alice", name="Alice", groups=[])
    committed.add(user)
    committed.flush()
    _, old = store.create(user=user, tokens=TokenSet(refresh_token="rt-old"))
    store.create(user=user, tokens=TokenSet(refresh_token="rt-live"))
    committed.execute(UserSession.__table__.update().where(UserSession.id == old.id).values(expires_at=utcnow()))
    committed.commit()
    assert run(purge.main, provider_ini, capsys=capsys)[0] == 0
    assert provider.revoked == ["rt-old"]
    committed.expire_all()
    assert committed.scalars(select(UserSession.end_reason).where(UserSession.id == old.id)).one() == "expired"


def add_user(committed, store, subject, email, issuer="https://idp.example.test", sessions=1):
    user = User(issuer=issuer, subject=subject, name=subject.title(), email=email, groups=[])
    committed.add(user)
    committed.flush()
    for _ in range(sessions):
        store.create(user=user)
    committed.commit()
    return user


def live_sessions(committed, user):
    committed.expire_all()
    return committed.scalar(
        select(func.count()).select_from(UserSession).where(UserSession.user_id == user.id, UserSession.ended_at.is_(None))
    )


def test_end_sessions_by_email(ini, committed, store, capsys):
    alice = add_user(committed, store, "alice", "Alice@Example.com", sessions=2)
    bob = add_user(committed, store, "bob", "bob@example.com")
    code, out, err = run(end_sessions.main, ini, "--email", "alice@example.COM", capsys=capsys)
    assert (code, err) == (0, "")
    assert out == "ended 2 session(s) of alice@example.COM: subject alice (https://idp.example.test)\n"
    assert live_sessions(committed, alice) == 0 and live_sessions(committed, bob) == 1
    assert committed.scalars(select(AuditEvent.detail).where(AuditEvent.user_id == alice.id)).one() == (
        "2 session(s) ended by myapp-end-sessions"
    )
    code, _, err = run(end_sessions.main, ini, "--email", "nobody@example.com", capsys=capsys)
    assert code == 2 and err == "myapp-end-sessions: no user with e-mail 'nobody@example.com'\n"


def test_an_email_of_several_users_is_refused_with_how_to_name_one(ini, committed, store, capsys):
    """The same address at two providers, and twice at one: nobody's sessions end, each user is listed."""
    first = add_user(committed, store, "a-1", "shared@example.com")
    second = add_user(committed, store, "a 2", "shared@example.com")
    elsewhere = add_user(committed, store, "z-9", "SHARED@example.com", issuer="https://other.example.test")
    code, out, err = run(end_sessions.main, ini, "--email", "shared@example.com", capsys=capsys)
    assert code == 2 and out == ""
    assert err == (
        "myapp-end-sessions: several users have the e-mail 'shared@example.com'; name one with --subject and "
        "--issuer: --subject 'a 2' --issuer https://idp.example.test, --subject a-1 --issuer https://idp.example.test, "
        "--subject z-9 --issuer https://other.example.test\n"
    )
    assert [live_sessions(committed, u) for u in (first, second, elsewhere)] == [1, 1, 1]
    code, out, _ = run(end_sessions.main, ini, "--email", "shared@example.com", "--issuer", "https://other.example.test", capsys=capsys)
    assert code == 0 and "subject z-9 (https://other.example.test)" in out
    code, _, err = run(end_sessions.main, ini, "--email", "shared@example.com", "--issuer", "https://idp.example.test", capsys=capsys)
    assert code == 2 and "several users have the e-mail 'shared@example.com' from issuer 'https://idp.example.test'" in err
    code, out, _ = run(end_sessions.main, ini, "--subject", "a 2", "--issuer", "https://idp.example.test", capsys=capsys)
    assert code == 0 and out == "ended 1 session(s) of a 2 (https://idp.example.test)\n"
    assert [live_sessions(committed, u) for u in (first, second, elsewhere)] == [1, 0, 0]


def write_database_ini(path, url):
    path.write_text(f"[app:main]\nuse = egg:myapp\nsqlalchemy.url = {url.replace('%', '%%')}\n")
    return path


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def test_migrate_says_what_it_did(backend, tmp_path, capsys):
    """Only sqlalchemy.url is needed: a migration host does not need the app's secrets."""
    with contextlib.ExitStack() as stack:
        url = f"sqlite:///{tmp_path / 'app.sqlite'}" if backend == "sqlite" else stack.enter_context(private_schema("myapp_migrate"))
        ini = write_database_ini(tmp_path / "app.ini", url)
        assert run(migrate.main, ini, capsys=capsys) == (
            0, f"database at revision {SCHEMA_REVISION} (head), upgraded from an unmigrated database\n", ""
        )
        assert run(migrate.main, ini, capsys=capsys) == (
            0, f"database at revision {SCHEMA_REVISION} (head), already up to date\n", ""
        )


@pytest.mark.parametrize(
    "body, message",
    [
        ("", "sqlalchemy.url: missing from [app:main]"),
        ("sqlalchemy.url = env:MYAPP_TEST_UNSET_VARIABLE\n", "sqlalchemy.url: environment variable MYAPP_TEST_UNSET_VARIABLE is not set"),
        ("sqlalchemy.url = nonsense\n", "sqlalchemy.url: is not a database URL such as postgresql+psycopg://user@host/db"),
    ],
)
def test_migrate_errors_are_one_line(body, message, tmp_path, capsys):
    ini = tmp_path / "app.ini"
    ini.write_text("[app:main]\nuse = egg:myapp\n" + body)
    assert run(migrate.main, ini, capsys=capsys) == (2, "", f"myapp-migrate: {message}\n")


def test_migrate_an_unreachable_database_is_one_line(tmp_path, capsys):
    ini = write_database_ini(tmp_path / "app.ini", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    code, out, err = run(migrate.main, ini, capsys=capsys)
    assert (code, out) == (2, "")
    assert err.startswith("myapp-migrate: cannot migrate the database (OperationalError: ") and err.count("\n") == 1


@pytest.mark.slow
def test_alembic_upgrade_with_production_ini_says_what_it_did(tmp_path):
    """production.ini's logging shows alembic's steps (its root logger, at WARN, would hide them)."""
    from tests.conftest import ROOT

    text = (ROOT / "production.ini").read_text().replace("script_location = myapp:migrations", "script_location = " + str(ROOT / "alembic"))
    (tmp_path / "production.ini").write_text(text)
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environ.update(
        MYAPP_DATABASE_URL=f"sqlite:///{tmp_path / 'app.sqlite'}",
        MYAPP_PUBLIC_URL="https://app.example.test", MYAPP_OIDC_ISSUER="https://idp.example.test",
        MYAPP_OIDC_CLIENT_ID="myapp", MYAPP_OIDC_CLIENT_SECRET="secret", MYAPP_TOKEN_KEYS=TEST_KEY,
    )
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", "production.ini", "upgrade", "head"],
        cwd=tmp_path, env=environ, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    steps = [line.split("] ", 1)[1].split(",")[0] for line in result.stderr.splitlines() if "Running upgrade" in line]
    revisions = [f"{n:04d}" for n in range(1, int(SCHEMA_REVISION) + 1)]
    assert steps == [f"Running upgrade {before} -> {after}" for before, after in zip(["", *revisions], revisions)]


def test_end_sessions_by_provider_name(tmp_path, committed_database_url, committed, store, capsys):
    settings = base_settings(
        committed_database_url,
        **{
            "myapp.providers": "default = Staff\npartners = Partners",
            "myapp.oidc.partners.issuer": "https://partners.example.test",
            "myapp.oidc.partners.client_id": "p",
            "myapp.oidc.partners.client_secret": "p-secret",
        },
    )
    path = tmp_path / "two.ini"
    lines = [f"{k} = {v}".replace("%", "%%").replace("\n", "\n    ") for k, v in settings.items()]
    path.write_text("\n".join(["[app:main]", "use = egg:myapp", *lines]) + "\n")
    for issuer in ("https://idp.example.test", "https://partners.example.test"):
        user = User(issuer=issuer, subject="alice", name="Alice", groups=[])
        committed.add(user)
        committed.flush()
        store.create(user=user)
    committed.commit()
    code, out, _ = run(end_sessions.main, path, "--subject", "alice", "--provider", "partners", capsys=capsys)
    assert code == 0 and out.strip() == "ended 1 session(s) of alice (https://partners.example.test)"
    code, _, err = run(end_sessions.main, path, "--subject", "alice", "--provider", "nope", capsys=capsys)
    assert code == 2 and "no provider named 'nope' (the ini lists: default, partners)" in err
    code, _, err = run(end_sessions.main, path, "--subject", "alice", "--provider", "partners", "--issuer", "x", capsys=capsys)
    assert code == 2 and "give --provider or --issuer, not both" in err


def test_purge_deletes_audit_records_past_the_retention(tmp_path, committed_database_url, committed, capsys):
    from datetime import timedelta

    from myapp.services.audit import AuditEventType, AuditLog

    settings = base_settings(committed_database_url, **{"myapp.audit.retention": "30d"})
    path = tmp_path / "retention.ini"
    lines = [f"{k} = {v}".replace("%", "%%") for k, v in settings.items()]
    path.write_text("\n".join(["[app:main]", "use = egg:myapp", *lines]) + "\n")
    log = AuditLog(dbsession=committed)
    old, recent = log.record(AuditEventType.LOGIN, detail="old"), log.record(AuditEventType.LOGIN, detail="recent")
    committed.execute(AuditEvent.__table__.update().where(AuditEvent.id == old.id).values(created_at=utcnow() - timedelta(days=31)))
    committed.execute(AuditEvent.__table__.update().where(AuditEvent.id == recent.id).values(created_at=utcnow() - timedelta(days=29)))
    committed.commit()
    code, out, _ = run(purge.main, path, capsys=capsys)
    assert code == 0 and out.strip().endswith("1 audit record(s)")
    committed.expire_all()
    assert committed.scalars(select(AuditEvent.detail)).all() == ["recent"]


def test_commands_leave_the_start_up_cautions_to_the_server(ini, committed, caplog, capsys, tmp_path):
    """A ``myapp-purge`` run by cron logged them at every run, and cron mailed each (helper-48)."""
    from myapp import main

    path = tmp_path / "http.ini"
    path.write_text(ini.read_text().replace("myapp.oidc.issuer = ", "myapp.oidc.issuer = http://idp.internal\n#"))
    with caplog.at_level("WARNING", logger="myapp"):
        code, _, err = run(purge.main, path, capsys=capsys)
    assert code == 0 and "plain http" not in caplog.text + err
    # The server, given the same ini, still says it.
    with caplog.at_level("WARNING", logger="myapp"):
        app = main({"__file__": str(path)}, **read_ini("test", str(path)))
    app.registry[Services].close()
    assert "myapp: myapp.oidc.issuer: 'http://idp.internal' is plain http off this machine" in caplog.text
