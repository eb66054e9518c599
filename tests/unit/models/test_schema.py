"""myapp.models.schema: the migrations that ship with the code, run on the database an ini names."""

import pytest
from alembic import command

from myapp.models import SCHEMA_REVISION, SchemaError, current_revision, get_engine
from myapp.models.schema import alembic_config, database_url, migrations_directory, upgrade
from myapp.settings import SettingsError
from tests.conftest import ROOT, private_schema


def test_a_checkout_migrates_from_its_alembic_folder():
    assert migrations_directory() == ROOT / "alembic"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def empty_database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.sqlite'}"
        return
    with private_schema("myapp_schema") as url:
        yield url


def revision_of(url):
    engine = get_engine(url)
    try:
        return current_revision(engine)
    finally:
        engine.dispose()


def test_upgrade_reports_before_and_after(empty_database_url):
    assert upgrade(empty_database_url) == (None, SCHEMA_REVISION)
    assert upgrade(empty_database_url) == (SCHEMA_REVISION, SCHEMA_REVISION)
    engine = get_engine(empty_database_url)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0001")
    engine.dispose()
    assert upgrade(empty_database_url) == ("0001", SCHEMA_REVISION)
    assert revision_of(empty_database_url) == SCHEMA_REVISION


def test_a_database_from_a_newer_version_is_refused_untouched(empty_database_url):
    upgrade(empty_database_url)
    engine = get_engine(empty_database_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    engine.dispose()
    with pytest.raises(SchemaError) as info:
        upgrade(empty_database_url)
    assert str(info.value) == (
        f"the database is at schema revision 9999, which this version of myapp does not know "
        f"(its newest is {SCHEMA_REVISION}): was it migrated by a newer version?"
    )
    assert revision_of(empty_database_url) == "9999"


def test_an_unreachable_database_is_one_line():
    with pytest.raises(SchemaError) as info:
        upgrade("postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert str(info.value).startswith("cannot migrate the database (OperationalError: ")
    assert "\n" not in str(info.value) and str(info.value).endswith(")")  # closed (helper-147)


@pytest.mark.parametrize(
    "url, message",
    [
        # As the app's start-up says them (helper-147: SQLAlchemy's own words, "Can't load plugin").
        ("not a url", "sqlalchemy.url: is not a database URL such as postgresql+psycopg://user@host/db"),
        ("postgresql+psycopg://app:s3cret@db:notaport/app",
         "sqlalchemy.url: is not a database URL such as postgresql+psycopg://user@host/db"),
        ("nosuchdatabase://app:s3cret@db/app", "sqlalchemy.url: no database driver for 'nosuchdatabase' here; "
         "use postgresql+psycopg://user@host/db or sqlite:///path/to/file"),
        ("postgres://app:s3cret@db/app", "sqlalchemy.url: no database driver for 'postgres' here; "
         "use postgresql+psycopg://user@host/db or sqlite:///path/to/file"),
        ("mssql+pymssql://app:s3cret@db/app", "sqlalchemy.url: no database driver for 'mssql+pymssql' here "
         "(no module named 'pymssql'); use postgresql+psycopg://user@host/db or sqlite:///path/to/file"),
    ],
)
def test_a_malformed_url_is_one_line_without_its_password(url, message):
    with pytest.raises(SchemaError) as info:
        upgrade(url)
    assert str(info.value) == message


def test_database_url_resolves_indirection_and_nothing_else(monkeypatch):
    monkeypatch.setenv("MYAPP_TEST_MIGRATE_URL", "sqlite:///x.sqlite")
    assert database_url({"sqlalchemy.url": " env:MYAPP_TEST_MIGRATE_URL "}) == "sqlite:///x.sqlite"
    with pytest.raises(SettingsError, match="^sqlalchemy.url: missing from \\[app:main\\]$"):
        database_url({"myapp.public_url": "https://app.example.test"})
    monkeypatch.delenv("MYAPP_TEST_MIGRATE_URL")
    with pytest.raises(SettingsError, match="environment variable MYAPP_TEST_MIGRATE_URL is not set"):
        database_url({"sqlalchemy.url": "env:MYAPP_TEST_MIGRATE_URL"})
