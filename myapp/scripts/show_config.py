"""Show the effective configuration of an ini file, every value resolved, secrets masked.

Reads the settings as the app would (env: and file: values included) without starting it or
reaching the database; a missing or malformed setting is reported in one line.

Example:
  myapp-show-config production.ini
"""

import dataclasses
import itertools
import re
from datetime import timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from myapp.scripts import parser, print_lines, read_settings
from myapp.settings import production_cautions, secret_parameter

PROG = "myapp-show-config"
SECRET_FIELDS = {"client_secret", "encryption_keys", "client_keys"}


# user:password@ as SQLAlchemy reads a database URL: the user may hold "@" (Azure's user@server),
# the password runs to the next "@", "/", "?" and "#" included, which urlsplit takes for the path,
# the query or the fragment (so found no password in an unencoded one: helper-117); and the query
# is all that follows the first "?", "#" included.
_SQLALCHEMY_CREDENTIALS = re.compile(r"^(?P<head>[\w+.-]+://[^:/]*:)(?P<password>[^@]*)@")
# URLs of a store that takes a password in them (redis-py's schemes).
_STORE_SCHEMES = ("redis://", "rediss://", "unix://")


def _masked_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(secret_parameter(name) for name, _ in pairs):
        return query  # as written
    return urlencode([(name, "***" if secret_parameter(name) else value) for name, value in pairs], safe="*")


def mask_url(url: str | None, *, database: bool = False) -> str | None:
    """``url`` with its password and every query parameter that may hold a secret shown as
    ``***``, each found as the library that reads the URL finds it: SQLAlchemy for the database's
    (``database``), else as urlsplit and redis-py do (the password after the userinfo's first ":",
    up to the authority's last "@"). A URL that cannot be read, or whose password was not found
    where the library finds it, is ``***`` whole."""
    if not url:
        return url
    try:
        shown = _mask_database_url(url) if database else _mask_url(url)
        read = make_url(url) if database else urlsplit(url)
        password = read.password
        host = (read.host if database else read.hostname) or ""
        # A port urlsplit cannot read: a password holding "#", "/" or "?" unencoded ended the
        # authority early, and nothing says where it ends (helper-121).
        read.port  # noqa: B018
    except (ValueError, ArgumentError):  # "[" in what urlsplit takes for the host
        return "***"
    if "@" in host:  # a password holding an unencoded "@", read as part of the host (helper-120)
        return "***"
    if not database and url.startswith(_STORE_SCHEMES) and "@" in url and "***@" not in shown:
        # A Redis URL with an "@" whose password was not found: one of digits before a "#", "/"
        # or "?" reads as a port, and the rest as a path (helper-122). An http(s) URL cannot hold
        # credentials here (the settings refuse them), and an "@" in its path is shown as written.
        return "***"
    # A password the library reads that the masking did not find (a form of URL not foreseen here).
    return "***" if password and "***@" not in shown else shown


def _mask_database_url(url: str) -> str:
    found = _SQLALCHEMY_CREDENTIALS.match(url)
    shown = f"{found['head']}***@{url[found.end():]}" if found and found["password"] else url
    base, mark, query = shown.partition("?")
    return base + mark + _masked_query(query) if mark else shown


def _mask_url(url: str) -> str:
    parts = urlsplit(url)
    shown = url
    if parts.password is not None:
        scheme = url[: url.index("://") + 3]
        userinfo, _, host = parts.netloc.rpartition("@")
        masked = f"{userinfo.partition(':')[0]}:***@{host}"
        shown = scheme + masked + url[len(scheme) + len(parts.netloc):]
    parts = urlsplit(shown)
    query = _masked_query(parts.query)
    if query == parts.query:
        return shown
    rebuilt = urlunsplit(parts._replace(query=query))
    # urlunsplit drops an empty authority: sqlite:////var/app.sqlite would read sqlite://var/app.sqlite.
    if not parts.netloc and shown.startswith(f"{parts.scheme}://"):
        rebuilt = f"{parts.scheme}://{rebuilt[len(parts.scheme) + 1:]}"
    return rebuilt


def describe(name: str, value):
    if name in SECRET_FIELDS:
        return f"*** ({len(value)} key(s))" if isinstance(value, tuple) else "***"
    if name == "client_certificate":
        return "(a PEM certificate)" if value else None
    if isinstance(value, str) and "://" in value:  # any URL: the database's, Redis's, OTLP's, an upstream's
        return mask_url(value, database=name == "database_url")
    if isinstance(value, timedelta):
        return f"{int(value.total_seconds())}s"
    if isinstance(value, (frozenset, set)):
        return " ".join(sorted(value))
    if isinstance(value, tuple):
        return " ".join(value)
    return value


def lines(prefix: str, value):
    if dataclasses.is_dataclass(value):
        for item in dataclasses.fields(value):
            yield from lines(f"{prefix}.{item.name}" if prefix else item.name, getattr(value, item.name))
    elif hasattr(value, "items"):
        for key, item in value.items():
            yield from lines(f"{prefix}.{key}", item)
    elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
        for index, item in enumerate(value):  # the step-up rules, one by one
            yield from lines(f"{prefix}[{index}]", item)
    else:
        yield f"{prefix} = {describe(prefix.rsplit('.', 1)[-1], value)}"


def main(argv=None):
    options = parser(PROG, __doc__).parse_args(argv)
    _, settings = read_settings(PROG, options.config_uri)
    cautions = (f"# caution: {caution}" for caution in production_cautions(settings))
    return print_lines(itertools.chain(lines("", settings), cautions))
