"""Errors that browser code branches on: ``{"error": CODE, "message": text}`` (SPEC.md)."""

from enum import StrEnum


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


class APIError(Exception):
    """Raised anywhere under /api/ or /auth/; the exception view renders it as JSON."""

    def __init__(self, status: int, code: ErrorCode, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def as_json(self) -> dict:
        return {"error": str(self.code), "message": self.message}
