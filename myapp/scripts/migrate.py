"""Bring the database to the schema this version of myapp needs, and say what was done.

Runs the migrations that ship with the installed package (alembic's "upgrade head") on the
database named by sqlalchemy.url in the ini file's [app:main]; no other setting is needed.
Run it before starting a new version; running it again changes nothing. The app refuses to
serve a database that is not at its revision and names this command.

Example:
  myapp-migrate /etc/myapp/production.ini
  database at revision 0008 (head), upgraded from 0007
"""

from myapp.models import SchemaError
from myapp.models.schema import database_url, upgrade
from myapp.scripts import configure_logging, fail, parser, read_ini
from myapp.settings import SettingsError

PROG = "myapp-migrate"


def main(argv=None):
    options = parser(PROG, __doc__).parse_args(argv)
    raw = read_ini(PROG, options.config_uri)
    try:
        url = database_url(raw)
    except SettingsError as e:
        fail(PROG, str(e))
    configure_logging(PROG, options.config_uri)  # production.ini shows alembic's lines, one per step
    try:
        before, after = upgrade(url)
    except SchemaError as e:
        fail(PROG, str(e))
    if before == after:
        print(f"database at revision {after} (head), already up to date")
    elif before is None:
        print(f"database at revision {after} (head), upgraded from an unmigrated database")
    else:
        print(f"database at revision {after} (head), upgraded from {before}")
    return 0
