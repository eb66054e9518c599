"""Migrations are tested on every backend: empty → head → base → head, and match the models."""

from datetime import datetime, timedelta, timezone

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session

from myapp import main
from myapp.models import SCHEMA_REVISION, Base, SchemaError, check_schema, get_engine
from myapp.services.sessions import EndReason, SessionStore, UpstreamToken, hash_session_id
from myapp.services.tokenset import TokenCipher
from myapp.settings import load_settings
from tests.conftest import TEST_KEY, alembic_config, base_settings, migrate, private_schema

CIPHER = TokenCipher([TEST_KEY])


def test_schema_revision_is_alembics_head():
    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == SCHEMA_REVISION


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def empty_database(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'empty.sqlite'}"
        engine = get_engine(url)
        yield url, engine
        engine.dispose()
        return
    with private_schema("myapp_mig") as url:
        engine = get_engine(url)
        try:
            yield url, engine
        finally:
            engine.dispose()


def session_store(dbsession) -> SessionStore:
    """The app's view of the sessions of a database the migrations made."""
    return SessionStore(dbsession=dbsession, cipher=CIPHER, settings=load_settings(base_settings("sqlite://")).session)


def insert_user(connection, subject, name, email, groups_json, now):
    """User 1, as any revision's users table holds one (raw SQL: the models are head's)."""
    connection.execute(
        text(
            "INSERT INTO users (id, issuer, subject, name, email, groups, disabled, created_at, updated_at) "
            "VALUES (1, 'https://idp.example.test', :subject, :name, :email, :groups, false, :now, :now)"
        ),
        {"subject": subject, "name": name, "email": email, "groups": groups_json, "now": now},
    )


def insert_live_session(connection, n: int, raw_id: str, now: datetime) -> None:
    """Session ``n`` of user 1, live for a day, with tokens ``at-n`` and ``rt-n``: a row as the
    revisions from 0009 (browser bindings, nullable) to 0011 all take it."""
    connection.execute(
        text(
            "INSERT INTO sessions (id, id_hash, handle, user_id, created_at, last_seen_at, expires_at, user_agent, "
            "ip_address, provider, csrf_token, access_token, refresh_token, token_generation) "
            "VALUES (:id, :hash, :handle, 1, :now, :now, :expires, '', '', 'default', 'csrf', :at, :rt, 0)"
        ),
        {"id": n, "hash": hash_session_id(raw_id), "handle": f"handle-{n}", "now": now,
         "expires": now + timedelta(days=1), "at": CIPHER.encrypt(f"at-{n}"), "rt": CIPHER.encrypt(f"rt-{n}")},
    )


def run(engine, direction, revision):
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, direction)(config, revision)


def test_upgrade_downgrade_upgrade(empty_database):
    _, engine = empty_database
    run(engine, "upgrade", "head")
    tables = set(inspect(engine).get_table_names())
    assert {"users", "sessions", "posts", "audit_events"} <= tables
    run(engine, "downgrade", "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    run(engine, "upgrade", "head")


def test_models_match_migrations(empty_database):
    _, engine = empty_database
    migrate(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = [d for d in compare_metadata(context, Base.metadata)]
    assert diff == []


def test_unmigrated_database_is_refused_with_one_line(empty_database):
    url, engine = empty_database
    with pytest.raises(SchemaError, match="not migrated; run: myapp-migrate app.ini"):
        check_schema(engine, "app.ini")
    with pytest.raises(SystemExit) as info:
        main({"__file__": "/srv/app.ini"}, **base_settings(url))
    assert str(info.value) == "myapp: the database is not migrated; run: myapp-migrate /srv/app.ini"


def test_outdated_database_is_refused(empty_database):
    _, engine = empty_database
    migrate(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '0000'")
    with pytest.raises(SchemaError, match="is at schema revision 0000, this code needs"):
        check_schema(engine)


def test_a_database_migrated_by_a_newer_version_is_refused_with_what_can_help(empty_database):
    """"run: myapp-migrate" would not (it refuses a revision it does not know): helper-45."""
    _, engine = empty_database
    migrate(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(SchemaError) as info:
        check_schema(engine, "app.ini")
    assert str(info.value).startswith("the database is at schema revision 9999, newer than this version of myapp knows")
    assert "myapp-migrate" not in str(info.value)


def test_a_database_emptied_under_a_running_app_is_a_503_and_not_ready(empty_database):
    """helper-142: restored empty (or replaced by one not migrated) while the app ran, every
    signed-in page was waitress's bare 500 on PostgreSQL, /metrics a 500, and /readyz said ok."""
    from webtest import TestApp

    from tests.functional.conftest import dispose

    url, engine = empty_database
    migrate(engine)
    wsgi = main({}, **base_settings(url, **{"myapp.metrics.enabled": "true"}))
    try:
        _emptied_under(TestApp(wsgi, extra_environ={"REMOTE_ADDR": "127.0.0.1"}), engine)
    finally:
        dispose(wsgi)


def _emptied_under(app, engine) -> None:
    assert app.get("/readyz").json["checks"]["database"] == "ok"
    run(engine, "downgrade", "base")
    assert app.get("/readyz", status=503).json["checks"]["database"] == "unavailable: not migrated"
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE alembic_version")
    cookie = {"Cookie": "__Host-session=" + "x" * 43}
    page = app.get("/", headers=cookie, status=503)
    assert page.headers["Retry-After"] == "5" and "text/html" in page.content_type
    answer = app.get("/auth/user", headers={**cookie, "X-CSRF": "1"}, status=503)
    assert answer.json["error"] == "service_unavailable"
    assert "myapp_active_sessions NaN" in app.get("/metrics").text
    assert app.get("/readyz", status=503).json["checks"]["database"] == "unavailable: not migrated"
    migrate(engine)
    assert app.get("/readyz").json["checks"]["database"] == "ok"
    app.get("/", headers=cookie, status="*")  # served again (signed out: that cookie names nothing)


def test_a_migration_that_finds_a_table_missing_is_one_line(empty_database):
    """helper-145: a table a migration expects, gone (a half-restored database), was a traceback
    from myapp-migrate, ending in "run myapp-migrate"."""
    from myapp.models.schema import upgrade

    url, engine = empty_database
    upgrade(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '0010'")
        connection.exec_driver_sql("DROP TABLE session_tokens")
    with pytest.raises(SchemaError) as info:
        upgrade(url)
    said = str(info.value)
    assert said.startswith("cannot migrate the database: a table or column it expects is missing (")
    assert "\n" not in said and "run myapp-migrate" not in said


def test_unreachable_database_is_one_line():
    with pytest.raises(SchemaError) as info:
        check_schema(get_engine("postgresql+psycopg://nobody@127.0.0.1:1/none"))
    assert str(info.value).startswith("cannot reach the database")
    assert "\n" not in str(info.value) and str(info.value).endswith(")")  # closed (helper-136)


def test_bad_settings_stop_main_with_one_line():
    with pytest.raises(SystemExit) as info:
        main({}, **base_settings("sqlite://", **{"myapp.session.idle_timeout": "soon"}))
    assert str(info.value).startswith("myapp: myapp.session.idle_timeout: 'soon' is not a duration")


def test_a_populated_database_upgrades_and_keeps_everything(empty_database):
    """A deployment's database as the first release left it: upgraded to head, every row is still
    there and the app reads it as before."""
    _, engine = empty_database
    run(engine, "upgrade", "0002")
    now = datetime.now(timezone.utc)
    raw_id = "a" * 43
    with engine.begin() as connection:
        insert_user(connection, "alice", "Alice", "a@example.test", '["staff"]', now)
        connection.execute(
            text(
                "INSERT INTO sessions (id, id_hash, handle, user_id, created_at, last_seen_at, expires_at, user_agent, "
                "ip_address, csrf_token, access_token, refresh_token, access_token_expires_at, token_generation) "
                "VALUES (1, :hash, 'handle-1', 1, :now, :now, :expires, 'UA', '192.0.2.1', 'csrf', :at, :rt, :expires, 3)"
            ),
            {"hash": hash_session_id(raw_id), "now": now, "expires": now + timedelta(days=1),
             "at": CIPHER.encrypt("at-1"), "rt": CIPHER.encrypt("rt-1")},
        )
        connection.execute(
            text("INSERT INTO posts (id, owner_id, title, body, created_at, updated_at) VALUES (1, 1, 'T', 'B', :now, :now)"),
            {"now": now},
        )
        connection.execute(
            text("INSERT INTO audit_events (id, created_at, event, user_id, ip_address, detail) VALUES (1, :now, 'login', 1, '', '')"),
            {"now": now},
        )
    run(engine, "upgrade", "head")
    with Session(engine) as dbsession:
        store = session_store(dbsession)
        session = store.find(raw_id)
        assert (session.user_subject, session.user_groups, session.token_generation) == ("alice", ("staff",), 3)
        assert store.rows.read(session.id).tokens.refresh_token == "rt-1"
        assert dbsession.execute(text("SELECT title, form_token FROM posts")).one() == ("T", None)
        assert dbsession.execute(text("SELECT event FROM audit_events")).scalar() == "login"


def test_sessions_from_before_dpop_upgrade_as_bearer_sessions(empty_database):
    """0008 (DPoP) on a database with live sessions and upstream tokens: each keeps its tokens and
    reads as a Bearer session without a key, which is what it was."""
    _, engine = empty_database
    run(engine, "upgrade", "0007")
    now = datetime.now(timezone.utc)
    raw_id = "b" * 43
    with engine.begin() as connection:
        insert_user(connection, "bob", "Bob", "b@example.test", "[]", now)
        connection.execute(
            text(
                "INSERT INTO sessions (id, id_hash, handle, user_id, created_at, last_seen_at, expires_at, user_agent, "
                "ip_address, provider, csrf_token, access_token, refresh_token, access_token_expires_at, token_generation) "
                "VALUES (1, :hash, 'handle-1', 1, :now, :now, :expires, 'UA', '', 'default', 'csrf', :at, :rt, :expires, 2)"
            ),
            {"hash": hash_session_id(raw_id), "now": now, "expires": now + timedelta(days=1),
             "at": CIPHER.encrypt("at-1"), "rt": CIPHER.encrypt("rt-1")},
        )
        connection.execute(
            text(
                "INSERT INTO session_tokens (id, session_id, upstream, access_token, expires_at, refreshed_at) "
                "VALUES (1, 1, 'api2', :token, :expires, :now)"
            ),
            {"token": CIPHER.encrypt("api2-token"), "expires": now + timedelta(hours=1), "now": now},
        )
    run(engine, "upgrade", "head")
    with Session(engine) as dbsession:
        store = session_store(dbsession)
        session = store.find(raw_id)
        assert (session.access_token_type, session.dpop_key, session.token_generation) == (None, None, 2)
        stored = store.rows.read(session.id)
        assert (stored.tokens.access_token, stored.tokens.refresh_token) == ("at-1", "rt-1")
        assert (stored.tokens.token_type, stored.tokens.dpop_key) == ("Bearer", None)
        upstream = store.rows.upstream_token(session.id, "api2")
        assert (upstream.access_token, upstream.token_type) == ("api2-token", "Bearer")


def test_sessions_from_before_browser_bindings_upgrade_without_one_and_are_never_swept(empty_database):
    """0009 on a database with live sessions of one user (one browser or several, nobody knows):
    each keeps its tokens, has no binding, and the sweep for sessions no browser can reach leaves
    them alone, however long ago each was used."""
    _, engine = empty_database
    run(engine, "upgrade", "0008")
    now = datetime.now(timezone.utc)
    with engine.begin() as connection:
        insert_user(connection, "dave", "Dave", None, "[]", now)
        for n, seen in ((1, now - timedelta(minutes=50)), (2, now)):
            connection.execute(
                text(
                    "INSERT INTO sessions (id, id_hash, handle, user_id, created_at, last_seen_at, expires_at, user_agent, "
                    "ip_address, provider, csrf_token, refresh_token, token_generation) "
                    "VALUES (:id, :hash, :handle, 1, :seen, :seen, :expires, '', '', 'default', 'csrf', :rt, 0)"
                ),
                {"id": n, "hash": hash_session_id(str(n) * 43), "handle": f"handle-{n}", "seen": seen,
                 "expires": now + timedelta(days=1), "rt": CIPHER.encrypt(f"rt-{n}")},
            )
    run(engine, "upgrade", "head")
    with Session(engine) as dbsession:
        store = session_store(dbsession)
        assert dbsession.execute(text("SELECT browser_binding FROM sessions")).scalars().all() == [None, None]
        assert store.rows.end_unreachable() == 0
        assert [store.dead_reason(store.find(str(n) * 43)) for n in (1, 2)] == [None, None]
        assert store.rows.read(1).tokens.refresh_token == "rt-1"


def test_upstream_tokens_from_before_0010_upgrade_as_not_exchanged_and_keep_their_rows_on_downgrade(empty_database):
    """0010 on a database with a live session and an upstream token: the token reads as before,
    marked as not exchanged (nobody knows), so ending the session queues only the session's own
    refresh token, as before; a token stored since with a refresh token survives the downgrade."""
    _, engine = empty_database
    run(engine, "upgrade", "0009")
    now = datetime.now(timezone.utc)
    raw_id = "e" * 43
    with engine.begin() as connection:
        insert_user(connection, "erin", "Erin", None, "[]", now)
        for n in (1, 2):
            insert_live_session(connection, n, raw_id if n == 1 else "f" * 43, now)
        connection.execute(
            text(
                "INSERT INTO session_tokens (session_id, upstream, access_token, expires_at, refreshed_at) "
                "VALUES (1, 'swap', :token, :expires, :now)"
            ),
            {"token": CIPHER.encrypt("swap-token"), "expires": now + timedelta(minutes=5), "now": now},
        )
    run(engine, "upgrade", "head")
    with Session(engine) as dbsession:
        store = session_store(dbsession)
        session = store.find(raw_id)
        assert store.rows.upstream_token(session.id, "swap").access_token == "swap-token"
        assert dbsession.execute(text("SELECT exchanged, refresh_token FROM session_tokens")).one() == (False, None)
        assert store.rows.write_upstream_token(
            2, "swap", UpstreamToken("swap-2", now + timedelta(minutes=5), now, exchanged=True), refresh_token="rt-swap-2"
        )
        assert store.end(session, EndReason.REVOKED)
        queued = dbsession.execute(text("SELECT token, token_type_hint FROM token_revocations")).all()
        assert [(CIPHER.decrypt(bytes(token)), hint) for token, hint in queued] == [("rt-1", "refresh_token")]
        dbsession.commit()
    run(engine, "downgrade", "0009")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT session_id, upstream FROM session_tokens")).all() == [(2, "swap")]
        assert connection.execute(text("SELECT handle FROM sessions ORDER BY id")).scalars().all() == ["handle-1", "handle-2"]
    run(engine, "upgrade", "head")


def test_upstream_tokens_from_before_0011_upgrade_minted_for_nothing_known_and_keep_their_rows_on_downgrade(empty_database):
    """0011 on a database with a live session and an upstream token: the token reads as before,
    minted for nothing known (None) whatever the caller expects, which no upstream takes (it is
    asked for again: test_upstream_tokens.py); a token stored since reads as minted for what it
    was, and for nothing else; both survive the downgrade."""
    _, engine = empty_database
    run(engine, "upgrade", "0010")
    now = datetime.now(timezone.utc)
    raw_id = "g" * 43
    with engine.begin() as connection:
        insert_user(connection, "gina", "Gina", None, "[]", now)
        insert_live_session(connection, 1, raw_id, now)
        connection.execute(
            text(
                "INSERT INTO session_tokens (session_id, upstream, access_token, expires_at, refreshed_at, exchanged) "
                "VALUES (1, 'graph', :token, :expires, :now, :exchanged)"
            ),
            {"token": CIPHER.encrypt("graph-token"), "expires": now + timedelta(minutes=5), "now": now, "exchanged": False},
        )
    run(engine, "upgrade", "head")
    with Session(engine) as dbsession:
        store = session_store(dbsession)
        session = store.find(raw_id)
        stored = store.rows.upstream_token(session.id, "graph", minted_for="f" * 32)
        assert (stored.access_token, stored.minted_for, stored.exchanged) == ("graph-token", None, False)
        assert store.rows.write_upstream_token(
            session.id, "own", UpstreamToken("own-token", now + timedelta(minutes=5), now, minted_for="f" * 32)
        )
        assert store.rows.upstream_token(session.id, "own", minted_for="f" * 32).minted_for == "f" * 32
        assert store.rows.upstream_token(session.id, "own", minted_for="e" * 32).minted_for is None
        dbsession.commit()
    run(engine, "downgrade", "0010")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT upstream FROM session_tokens ORDER BY id")).scalars().all() == ["graph", "own"]
    run(engine, "upgrade", "head")


def test_posts_from_before_0012_keep_their_ids_and_no_id_is_given_twice_after(empty_database):
    """0012 on a database with posts: each keeps its id, owner and form token; a deleted highest
    id is not given to the next post (SQLite's AUTOINCREMENT; PostgreSQL's sequence never did);
    the rows survive the downgrade."""
    _, engine = empty_database
    run(engine, "upgrade", "0011")
    now = datetime.now(timezone.utc)
    with engine.begin() as connection:
        insert_user(connection, "hank", "Hank", None, "[]", now)
        for n in (1, 2, 3):
            connection.execute(text(
                "INSERT INTO posts (owner_id, title, body, created_at, updated_at, form_token) "
                "VALUES (1, :title, '', :now, :now, :token)"), {"title": f"post {n}", "now": now, "token": f"form-{n}"})
    run(engine, "upgrade", "head")
    with engine.begin() as connection:
        assert connection.execute(text("SELECT id, title, form_token FROM posts ORDER BY id")).all() == [
            (1, "post 1", "form-1"), (2, "post 2", "form-2"), (3, "post 3", "form-3")]
        connection.execute(text("DELETE FROM posts WHERE id = 3"))
        connection.execute(text(
            "INSERT INTO posts (owner_id, title, body, created_at, updated_at) VALUES (1, 'post 4', '', :now, :now)"),
            {"now": now})
        assert connection.execute(text("SELECT max(id) FROM posts")).scalar() == 4
    run(engine, "downgrade", "0011")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT id FROM posts ORDER BY id")).scalars().all() == [1, 2, 4]
    run(engine, "upgrade", "head")


def test_downgrading_keeps_the_rows_of_child_tables(empty_database):
    """Downgrades drop columns in place: on SQLite a rebuilt "sessions" table would cascade into
    session_tokens (foreign keys are on)."""
    _, engine = empty_database
    run(engine, "upgrade", "head")
    now = datetime.now(timezone.utc)
    with engine.begin() as connection:
        insert_user(connection, "carol", "Carol", None, "[]", now)
        connection.execute(text(
            "INSERT INTO sessions (id, id_hash, handle, user_id, created_at, last_seen_at, expires_at, user_agent, "
            "ip_address, provider, csrf_token, token_generation) "
            "VALUES (1, 'h', 'handle-1', 1, :now, :now, :now, '', '', 'default', 'csrf', 0)"), {"now": now})
        connection.execute(text(
            "INSERT INTO session_tokens (id, session_id, upstream, access_token, refreshed_at) "
            "VALUES (1, 1, 'api2', :token, :now)"), {"token": b"x", "now": now})
    run(engine, "downgrade", "0005")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT upstream FROM session_tokens")).scalars().all() == ["api2"]
        assert connection.execute(text("SELECT handle FROM sessions")).scalars().all() == ["handle-1"]
