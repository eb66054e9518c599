"""Errors that browser code branches on: ``{"error": CODE, "message": text}`` (SPEC.md).

Every code a JSON answer can carry is here, SPEC.md's and the few it does not list (each
explained in docs/architecture.md), so that no view invents one.
"""

import functools
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


@functools.cache
def outage_errors() -> tuple[type[BaseException], ...]:
    """What "the database or the lock backend cannot be reached" looks like when it is raised."""
    import redis
    from sqlalchemy import exc

    return (
        ServiceUnavailable, exc.OperationalError, exc.InterfaceError, exc.DisconnectionError, exc.TimeoutError,
        redis.ConnectionError, redis.TimeoutError,
    )


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
