"""The schema's migrations: where they are, and running them on the database an ini file names.

In a checkout they are the top-level ``alembic/`` folder; an installed package carries the same
files as ``myapp/migrations`` (setup.py maps one onto the other), so ``myapp-migrate`` and
``script_location = myapp:migrations`` work wherever the package is installed.
"""

from collections.abc import Mapping
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

import myapp
from myapp.errors import NotMigrated, describe_outage
from myapp.models import SchemaError, current_revision, get_engine
from myapp.settings import SettingsError, database_url_problem, resolve

PACKAGE = Path(myapp.__file__).resolve().parent


def migrations_directory() -> Path:
    """The migrations that ship with this code (they match its ``SCHEMA_REVISION``)."""
    installed = PACKAGE / "migrations"
    checkout = PACKAGE.parent / "alembic"
    if (installed / "env.py").is_file():
        return installed
    # A checkout, run in place or installed with `pip install -e`.
    if (checkout / "env.py").is_file() and (PACKAGE.parent / "setup.py").is_file():
        return checkout
    raise SchemaError(f"the migrations are missing from {installed}; reinstall myapp")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_directory()).replace("%", "%%"))
    return config


def database_url(app_settings: Mapping[str, str]) -> str:
    """``sqlalchemy.url`` of an ini file's ``[app:main]``, with ``env:``/``file:`` resolved.

    Only the database: migrating needs none of the other settings (nor their secrets).
    """
    raw = (app_settings.get("sqlalchemy.url") or "").strip()
    if not raw:
        raise SettingsError("sqlalchemy.url: missing from [app:main]")
    return resolve("sqlalchemy.url", raw)


def upgrade(url: str) -> tuple[str | None, str]:
    """Migrate the database at ``url`` to the head revision; returns (revision before, after).

    Raises :class:`SchemaError` with one line when the database cannot be reached or migrated.
    """
    config = alembic_config()
    script = ScriptDirectory.from_config(config)
    problem = database_url_problem(url)
    if problem is not None:
        raise SchemaError(problem)
    try:
        engine = get_engine(url)
    except (ArgumentError, ValueError) as e:  # ValueError: a port that is not a number
        raise SchemaError(f"sqlalchemy.url: {describe_outage(e)}") from None
    except ImportError as e:
        raise SchemaError(f"sqlalchemy.url: its database driver is not installed ({e})") from None
    try:
        before = current_revision(engine)
        if before is not None and before not in {r.revision for r in script.walk_revisions()}:
            raise SchemaError(
                f"the database is at schema revision {before}, which this version of myapp does not know "
                f"(its newest is {script.get_current_head()}): was it migrated by a newer version?"
            )
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        return before, current_revision(engine)
    except SQLAlchemyError as e:
        # Its first line, closed (helper-147: a driver's message of several lines lost the ")").
        raise SchemaError(f"cannot migrate the database ({describe_outage(e)})") from None
    except NotMigrated as e:  # a table a migration expects is not there (helper-145: a traceback)
        raise SchemaError(
            f"cannot migrate the database: a table or column it expects is missing ({describe_outage(e.__cause__ or e)})"
        ) from None
    except CommandError as e:
        raise SchemaError(str(e).splitlines()[0]) from None
    finally:
        engine.dispose()
