import hashlib
from pathlib import Path

from pyramid.security import NO_PERMISSION_REQUIRED
from pyramid.static import QueryStringConstantCacheBuster

from myapp.resources import post_collection_factory, post_factory, session_factory, user_factory

STATIC_DIR = Path(__file__).parent / "static"

# Routes whose callers are programs, not people: errors there are JSON, never a redirect.
JSON_ROUTES = frozenset({"auth_user", "api", "backchannel_logout"})


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
    config.add_route("api", "/api/{upstream}*subpath")
    config.add_route("home", "/")
    config.add_route("healthz", "/healthz")
    config.add_route("readyz", "/readyz")
    config.add_route("metrics", "/metrics")

    config.add_route("login", "/login")
    config.add_route("auth_callback", "/auth/callback")
    config.add_route("logout", "/logout")
    config.add_route("signed_out", "/signed-out")
    config.add_route("backchannel_logout", "/auth/backchannel-logout")
    config.add_route("auth_user", "/auth/user")

    config.add_route("posts", "/posts", factory=post_collection_factory)
    config.add_route("post_new", "/posts/new", factory=post_collection_factory)
    config.add_route("post", "/posts/{id}", factory=post_factory)
    config.add_route("post_edit", "/posts/{id}/edit", factory=post_factory)
    config.add_route("post_delete", "/posts/{id}/delete", factory=post_factory)

    config.add_route("account_sessions", "/account/sessions")
    config.add_route("account_sessions_revoke_others", "/account/sessions/revoke-others")
    config.add_route("account_session_revoke", "/account/sessions/{handle}/revoke", factory=session_factory)

    config.add_route("admin_audit", "/admin/audit")
    config.add_route("admin_users", "/admin/users")
    config.add_route("admin_user_sessions_revoke", "/admin/users/{id}/sessions/revoke", factory=user_factory)
