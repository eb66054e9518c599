"""Errors that browser code branches on: ``{"error": CODE, "message": text}`` (SPEC.md).

Every code a JSON answer can carry is here, SPEC.md's and the few it does not list (each
explained in docs/architecture.md), so that no view invents one.
"""

import functools
import re
from enum import StrEnum

from pyramid.response import Response


class ErrorCode(StrEnum):
    LOGIN_REQUIRED = "login_required"
    CSRF_FAILED = "csrf_failed"
    UNKNOWN_UPSTREAM = "unknown_upstream"
    BAD_PATH = "bad_path"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    SERVICE_UNAVAILABLE = "service_unavailable"
    WRONG_PROVIDER = "wrong_provider"
    STEP_UP_REQUIRED = "step_up_required"
    # Beyond SPEC.md's list (docs/architecture.md says why each exists).
    BAD_REQUEST = "bad_request"
    FORBIDDEN = "forbidden"
    HTTP_ERROR = "http_error"
    INTERNAL_ERROR = "internal_error"
    # OpenID Connect Back-Channel Logout 1.0, section 2.8.
    INVALID_REQUEST = "invalid_request"


class ServiceUnavailable(Exception):
    """The database or the lock backend cannot be reached: 503 ``service_unavailable`` (SPEC.md)."""

    def __init__(self, message: str = "The service is briefly unavailable. Please try again in a moment."):
        super().__init__(message)
        self.message = message


class NotMigrated(ServiceUnavailable):
    """A table or column the code needs is missing: the database was replaced or restored while
    the app ran (start-up checks the schema, myapp.models.check_schema), or not migrated yet. A
    503 like any outage, in words that say what to do, where PostgreSQL's error was a 500."""

    def __init__(self, detail: str):
        super().__init__(
            f"the database is not migrated for this version of myapp ({detail}); run myapp-migrate"
        )


@functools.cache
def outage_errors() -> tuple[type[BaseException], ...]:
    """What "the database or the lock backend cannot be reached" looks like when it is raised."""
    import redis
    from sqlalchemy import exc

    return (
        ServiceUnavailable, exc.OperationalError, exc.InterfaceError, exc.DisconnectionError, exc.TimeoutError,
        redis.ConnectionError, redis.TimeoutError,
    )


# The longest description of an outage a log line carries.
MAX_OUTAGE_DESCRIPTION = 200
# A URL's user:password@ (to the last @: a password may hold one), and libpq's password=...
_URL_CREDENTIALS = re.compile(r"://\S*@")
# A quoted host name with an @ in it: the rest of a URL's password that held an @ not written %40
# (SQLAlchemy ends the password at the first @ and takes the rest, up to a / : or ?, for the host,
# which the driver then fails to resolve: "failed to resolve host 'rest-of-it@db.internal'").
_QUOTED_AT = re.compile(r"""(["'])[^"'\n/:?]*@""")
_PASSWORD_KEYWORD = re.compile(r"(pass(?:word|wd)?\s*=\s*)(?:'(?:[^'\\]|\\.)*'?|\S+)", re.IGNORECASE)


def describe_outage(exc: BaseException) -> str:
    """One short line for the log: the error's type and the first line of what it says. For
    SQLAlchemy's wrapper, the driver's own message (``exc.orig``): SQLAlchemy's text adds the
    statement, its parameters and a link. Credentials a driver echoes from a URL or a connection
    string are masked."""
    from sqlalchemy.exc import SQLAlchemyError

    cause = getattr(exc, "orig", None) or exc
    said = str(cause.args[0]) if isinstance(cause, SQLAlchemyError) and cause.args else str(cause)
    line = next((line for line in said.splitlines() if line.strip()), "")
    line = _URL_CREDENTIALS.sub("://***@", line)
    line = _PASSWORD_KEYWORD.sub(r"\1***", _QUOTED_AT.sub(r"\1***@", line))
    line = " ".join(line.split())
    if len(line) > MAX_OUTAGE_DESCRIPTION:
        line = line[: MAX_OUTAGE_DESCRIPTION - 3] + "..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


class APIError(Exception):
    """Raised anywhere under /api/ or /auth/; the exception view renders it as JSON."""

    def __init__(self, status: int, code: ErrorCode, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def json_error(status: int, code: ErrorCode, message: str, headers: dict | None = None) -> Response:
    """SPEC.md's JSON error: ``{"error": CODE, "message": text}``."""
    response = Response(json={"error": str(code), "message": message}, status=status)
    response.headers.update(headers or {})
    return response
