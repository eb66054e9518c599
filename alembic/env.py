"""Migrations read ``sqlalchemy.url`` from the same ini's ``[app:main]`` as the app does.

Installed, this folder is the package ``myapp.migrations`` (``script_location = myapp:migrations``).
``myapp-migrate`` and the tests hand in an open connection through
``config.attributes["connection"]`` instead.
"""

from alembic import context
from pyramid.paster import get_appsettings, setup_logging

from myapp.models import get_engine, schema
from myapp.models.meta import Base, UTCDateTime
from myapp.settings import SettingsError

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    ini = config.config_file_name
    setup_logging(ini)
    try:
        return schema.database_url(get_appsettings(ini, name="main"))
    except SettingsError as e:
        raise SystemExit(f"alembic: {ini}: {e}") from None


def render_item(type_, obj, autogen_context):
    # Migrations spell out plain SQLAlchemy types, so they never depend on app code that may change.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run(connection):
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline():
    context.configure(url=database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    connection = config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    engine = get_engine(database_url())
    try:
        with engine.connect() as connection:
            run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
