"""Every URL of the app, which of them programs call, and which paths are safe to return to."""

import hashlib
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pyramid.security import NO_PERMISSION_REQUIRED
from pyramid.static import QueryStringConstantCacheBuster

from myapp.resources import post_collection_factory, post_factory, session_factory, user_factory

STATIC_DIR = Path(__file__).parent / "static"

API_PREFIX = "/api/"
API_ROUTE = "api"
AUTH_USER_PATH = "/auth/user"
BACKCHANNEL_LOGOUT_PATH = "/auth/backchannel-logout"
CLIENT_JWKS_PATH = "/auth/jwks.json"
# Paths whose callers are programs, not people: errors there are JSON, never a page or a redirect.
# "/api" itself is a script's mistaken address for the proxy: its 404 is JSON as below it.
JSON_PATHS = frozenset({API_PREFIX.rstrip("/"), AUTH_USER_PATH, BACKCHANNEL_LOGOUT_PATH, CLIENT_JWKS_PATH})


def is_json_request(request) -> bool:
    """Whether the caller is a program; decided by the path alone, so that it holds before
    routing (a tween refusing an unreadable request) as well as after."""
    return is_json_path(request.environ.get("PATH_INFO", ""))


def is_json_path(path: str) -> bool:
    """Whether what asks for ``path`` is a program (also before the app, in the server)."""
    return path.startswith(API_PREFIX) or path in JSON_PATHS


def safe_next_path(value: str | None) -> str:
    """``value`` if it is a path on this site, else ``/``: no scheme, no host, no tricks."""
    if not isinstance(value, str) or not value.startswith("/") or len(value) > 2000:
        return "/"
    # Browsers drop tabs and newlines and read "\\" as "/": "/\t/x" and "/\\x" mean "//x".
    # Only printable ASCII: anything else could not even be sent back in a Location header.
    if any(not 0x21 <= ord(c) <= 0x7E or c == "\\" for c in value):
        return "/"
    decoded = unquote(value)
    if value.startswith("//") or decoded.startswith(("//", "/\\")):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def return_path(request, public_url: str) -> str:
    """Where to come back to after signing in: this page for a GET of a page; for a form post or
    an API call, the page of this site it was sent from (its same-origin Referer), else ``/``."""
    if request.method in ("GET", "HEAD") and not is_json_request(request):
        return safe_next_path(request.path_qs)
    try:
        referrer = urlsplit(request.referrer or "")
    except ValueError:  # an unreadable Referer ("http://[::1/") names no page of this site (helper-116)
        return "/"
    public = urlsplit(public_url)
    if (referrer.scheme, referrer.netloc) == (public.scheme, public.netloc):
        return safe_next_path(referrer.path + (f"?{referrer.query}" if referrer.query else ""))
    return "/"


def static_fingerprint(directory: Path = STATIC_DIR) -> str:
    """A digest of the static files, so their URLs change when they do and can be cached for a year."""
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(directory)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def includeme(config):
    config.add_static_view("static", "myapp:static", cache_max_age=31536000, permission=NO_PERMISSION_REQUIRED)
    config.add_cache_buster("myapp:static/", QueryStringConstantCacheBuster(static_fingerprint()))

    # First: the proxy is the hot path, and routes are tried in order.
    config.add_route(API_ROUTE, API_PREFIX + "{upstream}*subpath")
    config.add_route("home", "/")
    config.add_route("healthz", "/healthz")
    config.add_route("readyz", "/readyz")
    config.add_route("metrics", "/metrics")

    config.add_route("login", "/login")
    config.add_route("auth_callback", "/auth/callback")
    config.add_route("auth_provider_callback", "/auth/callback/{provider}")
    config.add_route("client_jwks", CLIENT_JWKS_PATH)
    config.add_route("logout", "/logout")
    config.add_route("signed_out", "/signed-out")
    config.add_route("backchannel_logout", BACKCHANNEL_LOGOUT_PATH)
    config.add_route("auth_user", AUTH_USER_PATH)

    config.add_route("posts", "/posts", factory=post_collection_factory)
    config.add_route("post_new", "/posts/new", factory=post_collection_factory)
    config.add_route("post", "/posts/{id}", factory=post_factory)
    config.add_route("post_edit", "/posts/{id}/edit", factory=post_factory)
    config.add_route("post_delete", "/posts/{id}/delete", factory=post_factory)

    config.add_route("account_sessions", "/account/sessions")
    config.add_route("account_sessions_revoke_others", "/account/sessions/revoke-others")
    config.add_route("account_session_revoke", "/account/sessions/{handle}/revoke", factory=session_factory)

    config.add_route("admin_audit", "/admin/audit")
    config.add_route("admin_audit_csv", "/admin/audit.csv")
    config.add_route("admin_users", "/admin/users")
    config.add_route("admin_user_sessions_revoke", "/admin/users/{id}/sessions/revoke", factory=user_factory)
