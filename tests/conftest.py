"""Shared fixtures: one migrated database per test session, each test rolled back.

The database fixtures are parametrized: every test that touches the database runs on SQLite, and
again on PostgreSQL when MYAPP_TEST_DATABASE_URL is set (skipped with a reason otherwise).
"""

import contextlib
import os
import secrets
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from alembic import command
from alembic.config import Config
from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlalchemy.orm import Session

from myapp.models import begin_sqlite_transactions_with, get_engine

ROOT = Path(__file__).resolve().parent.parent
TEST_ISSUER = "https://idp.example.test"
TEST_PUBLIC_URL = "https://app.example.test"
TEST_KEY = Fernet.generate_key().decode()


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(ROOT / "alembic"))
    return config


def migrate(engine, revision="head"):
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def base_settings(database_url: str, **overrides) -> dict:
    settings = {
        "sqlalchemy.url": database_url,
        "myapp.public_url": TEST_PUBLIC_URL,
        "myapp.oidc.issuer": TEST_ISSUER,
        "myapp.oidc.client_id": "myapp-test",
        "myapp.oidc.client_secret": "test-client-secret",
        "myapp.tokens.encryption_keys": TEST_KEY,
        "myapp.upstreams": "demo = https://api.example.test/v1",
        # The revoker's background thread must not share a test's rolled-back connection: tests
        # run its passes themselves (Revoker.run_once).
        "myapp.revocation.interval": "0",
    }
    settings.update(overrides)
    return settings


def postgresql_url() -> str:
    url = os.environ.get("MYAPP_TEST_DATABASE_URL")
    if not url:
        pytest.skip("PostgreSQL tests need MYAPP_TEST_DATABASE_URL (set by .ci/run)")
    return url


def with_search_path(url: str, schema: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={quote(f'-csearch_path={schema}')}"


@contextlib.contextmanager
def private_schema(prefix: str):
    """A new schema in the PostgreSQL test database, dropped afterwards; yields a URL using it."""
    base = postgresql_url()
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = get_engine(base)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield with_search_path(base, schema)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgresql_schema():
    with private_schema("myapp_test") as url:
        yield url


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def database_url(request, tmp_path_factory):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite'}"
    return request.getfixturevalue("postgresql_schema")


@pytest.fixture(scope="session")
def engine(database_url):
    engine = get_engine(database_url)
    migrate(engine)
    if engine.dialect.name == "sqlite":
        # pysqlite's own transaction handling breaks SAVEPOINT; let SQLAlchemy emit BEGIN itself.
        begin_sqlite_transactions_with(engine, "BEGIN")
    yield engine
    engine.dispose()


@pytest.fixture
def connection(engine):
    """A connection inside a transaction that is rolled back after the test."""
    with engine.connect() as connection:
        transaction = connection.begin()
        try:
            yield connection
        finally:
            transaction.rollback()


@pytest.fixture
def dbsession(connection):
    session = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    yield session
    session.close()


@pytest.fixture
def fernet_key():
    return Fernet.generate_key().decode()


def random_name(prefix="user"):
    return f"{prefix}-{secrets.token_hex(4)}"


def pytest_terminal_summary(terminalreporter):
    """One line per skip reason, with a count, instead of one line per skipped test."""
    reasons = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        terminalreporter.section("skipped")
        for reason, count in sorted(reasons.items()):
            terminalreporter.line(f"{count:5d} skipped: {reason}")


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def committed_database_url(request, tmp_path_factory):
    """A migrated database whose writes are really committed; tables are emptied after each test."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('committed') / 'app.sqlite'}"
        engine = get_engine(url)
        migrate(engine)
        engine.dispose()
        yield url
        return
    with private_schema("myapp_live") as url:
        engine = get_engine(url)
        migrate(engine)
        engine.dispose()
        yield url


@pytest.fixture(scope="module")
def committed_engine(committed_database_url):
    engine = get_engine(committed_database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def committed(committed_engine):
    """A session on the committed database; every table is emptied after the test."""
    from myapp.models import Base

    session = Session(bind=committed_engine, expire_on_commit=False)
    yield session
    session.close()
    with committed_engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(table.delete())


def redis_url() -> str:
    url = os.environ.get("MYAPP_TEST_REDIS_URL")
    if not url:
        pytest.skip("Redis tests need MYAPP_TEST_REDIS_URL (set by .ci/run)")
    return url


@pytest.fixture(scope="session")
def served_provider():
    """The programmable fake provider (tests/support/fake_provider.py) on a loopback port."""
    from tests.support.fake_provider import served_fake_provider

    with served_fake_provider() as provider:
        yield provider


@pytest.fixture
def provider(served_provider):
    served_provider.reset()
    yield served_provider
    served_provider.reset()
