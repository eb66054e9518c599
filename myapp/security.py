"""Who is asking: the session cookie, the security policy, CSRF storage and the JSON CSRF rule."""

import hmac
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote, urlsplit

from pyramid.authorization import ACLHelper, Authenticated, Everyone
from pyramid.interfaces import ICSRFStoragePolicy, ISecurityPolicy
from pyramid.request import RequestLocalCache
from pyramid.viewderivers import INGRESS
from webob.cookies import make_cookie
from zope.interface import implementer

from myapp.errors import APIError, ErrorCode
from myapp.models import User
from myapp.services.sessions import EndReason, SessionRecord, TokenSet
from myapp.settings import SessionSettings

MAX_COOKIE_LENGTH = 128
SESSION_KEY = "myapp.session"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def user_principal(user_id: int) -> str:
    return f"user:{user_id}"


def group_principal(group: str) -> str:
    return f"group:{group}"


def read_cookie(request, name: str) -> str | None:
    """A cookie's value, or None when absent or when the Cookie header is not UTF-8."""
    try:
        return request.cookies.get(name)
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True)
class Identity:
    """The signed-in user and their session, as plain values (never a live ORM object)."""

    user_id: int
    issuer: str
    subject: str
    name: str
    email: str | None
    groups: tuple[str, ...]
    session_id: int
    session_handle: str
    csrf_token: str
    created_at: datetime
    expires_at: datetime
    idle_expires_at: datetime

    @property
    def principals(self) -> tuple[str, ...]:
        return (
            Authenticated,
            user_principal(self.user_id),
            *(group_principal(g) for g in self.groups),
        )


class SessionCookie:
    """Builds the Set-Cookie headers for the session id, with exactly SPEC.md's attributes."""

    def __init__(self, settings: SessionSettings):
        self.name = settings.cookie_name
        self._attributes = dict(
            path="/",
            secure=settings.cookie_secure,
            httponly=True,
            samesite=settings.cookie_samesite,
        )

    def read(self, request) -> str | None:
        value = read_cookie(request, self.name)
        if value is None or len(value) > MAX_COOKIE_LENGTH:
            return None
        return value

    def is_present(self, request) -> bool:
        return self.name + "=" in request.headers.get("Cookie", "")

    def set(self, raw_id: str, max_age: int) -> tuple[str, str]:
        return ("Set-Cookie", make_cookie(self.name, raw_id, max_age=max(max_age, 0), **self._attributes))

    def delete(self) -> tuple[str, str]:
        return ("Set-Cookie", make_cookie(self.name, None, **self._attributes))

    def is_set_in(self, response) -> bool:
        prefix = self.name + "="
        return any(k.lower() == "set-cookie" and v.startswith(prefix) for k, v in response.headerlist)


@implementer(ISecurityPolicy)
class SessionSecurityPolicy:
    """An opaque cookie naming a server-side session row (h's auth ticket, warehouse's policy).

    ``identity()`` fails closed at every step: no cookie, malformed, unknown hash, ended, expired,
    idle, user disabled → ``None``. A cookie that names no live session is cleared.
    """

    def __init__(self, settings: SessionSettings):
        self.cookie = SessionCookie(settings)
        self._cache = RequestLocalCache(self._load_identity)

    def identity(self, request) -> Identity | None:
        return self._cache.get_or_create(request)

    def authenticated_userid(self, request) -> str | None:
        identity = request.identity
        return None if identity is None else str(identity.user_id)

    def permits(self, request, context, permission):
        principals = [Everyone]
        identity = request.identity
        if identity is not None:
            principals.extend(identity.principals)
        return ACLHelper().permits(context, principals, permission)

    def remember(self, request, userid, *, tokens=TokenSet(), provider_sid=None, **kw):
        """Start a new session for the user (never reusing the browser's old id) and set its cookie."""
        store = request.session_store
        old = self._current_session(request)
        if old is not None:
            store.end(old, EndReason.REPLACED)
        raw_id, row = store.create(
            user=request.dbsession.get(User, int(userid)),
            user_agent=request.user_agent or "",
            # REMOTE_ADDR, which waitress sets from a trusted proxy's X-Forwarded-For only;
            # WebOb's client_addr would believe any X-Forwarded-For a browser sends.
            ip_address=request.remote_addr or "",
            provider_sid=provider_sid,
            tokens=tokens,
        )
        self._cache.clear(request)
        request.environ["myapp.new_session_handle"] = row.handle
        max_age = int((row.expires_at - row.created_at).total_seconds())
        return [self.cookie.set(raw_id, max_age)]

    def forget(self, request, *, reason=EndReason.LOGOUT, **kw):
        session = self._current_session(request)
        if session is not None:
            request.session_store.end(session, reason)
        self._cache.clear(request)
        request.environ.pop(SESSION_KEY, None)
        return [self.cookie.delete()]

    def session_record(self, request) -> SessionRecord | None:
        """The live session behind ``request.identity``, as read by the same lookup."""
        if request.identity is None:
            return None
        return request.environ.get(SESSION_KEY)

    def _current_session(self, request) -> SessionRecord | None:
        self.identity(request)
        return request.environ.get(SESSION_KEY)

    def _load_identity(self, request) -> Identity | None:
        request.environ.pop(SESSION_KEY, None)
        raw_id = self.cookie.read(request)
        if raw_id is None:
            if self.cookie.is_present(request):
                self._clear_cookie_later(request, None)
            return None
        store = request.session_store
        session = store.find(raw_id)
        if session is None:
            self._clear_cookie_later(request, None)
            return None
        reason = store.dead_reason(session)
        if reason is not None:
            self._clear_cookie_later(request, reason)
            return None
        last_seen_at = store.touch(session)
        request.environ[SESSION_KEY] = session
        return Identity(
            user_id=session.user_id,
            issuer=session.user_issuer,
            subject=session.user_subject,
            name=session.user_name,
            email=session.user_email,
            groups=session.user_groups,
            session_id=session.id,
            session_handle=session.handle,
            csrf_token=session.csrf_token,
            created_at=session.created_at,
            expires_at=session.expires_at,
            idle_expires_at=store.idle_expires_at(session, last_seen_at),
        )

    def _clear_cookie_later(self, request, reason):
        # The reason lets the UI say "you were signed out because ...".
        request.environ["myapp.signed_out_reason"] = reason
        cookie = self.cookie

        def clear(request, response):
            if not cookie.is_set_in(response):
                response.headerlist.append(cookie.delete())

        request.add_response_callback(clear)


@implementer(ICSRFStoragePolicy)
class SessionRowCSRFStoragePolicy:
    """The CSRF token lives in the session row; an anonymous request has none and fails every check."""

    def new_csrf_token(self, request):
        session = request.session_record
        if session is None:
            return ""
        return request.session_store.new_csrf_token(session)

    def get_csrf_token(self, request):
        identity = request.identity
        return "" if identity is None else identity.csrf_token

    def check_csrf_token(self, request, supplied_token):
        expected = self.get_csrf_token(request)
        return bool(expected) and hmac.compare_digest(
            expected.encode("utf-8"), (supplied_token or "").encode("utf-8", "surrogateescape")
        )


def json_csrf_failure(request, public_url: str) -> str | None:
    """SPEC.md's rule for JSON routes; returns why the request is refused, or None."""
    if request.headers.get("X-CSRF") != "1":
        return "the X-CSRF: 1 header is required"
    if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        return "cross-site requests are refused"
    if request.method in UNSAFE_METHODS:
        origin = request.headers.get("Origin")
        if origin is not None and not same_origin(origin, public_url):
            return "the Origin header does not match this site"
    return None


def same_origin(origin: str, public_url: str) -> bool:
    if origin == "null":
        return False
    try:
        a, b = urlsplit(origin), urlsplit(public_url)
        return (a.scheme, a.hostname, a.port or _default_port(a.scheme)) == (
            b.scheme,
            b.hostname,
            b.port or _default_port(b.scheme),
        ) and a.path in ("", "/")
    except ValueError:
        return False


def _default_port(scheme):
    return {"http": 80, "https": 443}.get(scheme)


def json_csrf_view(view, info):
    """View deriver: ``json_csrf=True`` applies the JSON CSRF rule before anything else runs."""
    if not info.options.get("json_csrf"):
        return view
    public_url = info.registry.settings["myapp"].public_url

    def wrapper(context, request):
        reason = json_csrf_failure(request, public_url)
        if reason is not None:
            raise APIError(403, ErrorCode.CSRF_FAILED, f"Request refused: {reason}.")
        return view(context, request)

    return wrapper


json_csrf_view.options = ("json_csrf",)


def includeme(config):
    settings = config.get_settings()["myapp"]
    policy = SessionSecurityPolicy(settings.session)
    config.set_security_policy(policy)
    config.set_csrf_storage_policy(SessionRowCSRFStoragePolicy())
    config.set_default_csrf_options(require_csrf=True)
    config.add_view_deriver(json_csrf_view, under=INGRESS, over="secured_view")
    config.add_request_method(policy.session_record, "session_record", property=True)
    config.registry["session_cookie"] = policy.cookie
    headers = SecurityHeaders(settings, lambda: config.registry["oidc_client"].cached_logout_origin())
    config.add_subscriber(headers, "pyramid.events.NewResponse")


class SecurityHeaders:
    """SPEC.md's browser hardening, applied to every response (and over a proxied upstream's own).

    ``logout_origin`` returns the provider's end-session origin once discovery is known: the
    logout form's redirect ends there, and browsers apply ``form-action`` to that redirect.
    """

    def __init__(self, settings, logout_origin=lambda: None):
        self.issuer_origin = _origin(settings.oidc.issuer)
        self.logout_origin = logout_origin
        self.headers = [
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "same-origin"),
            ("X-Frame-Options", "DENY"),
        ]
        if settings.session.cookie_secure:
            self.headers.append(("Strict-Transport-Security", "max-age=31536000"))
        self._csp = {}

    def content_security_policy(self) -> str:
        extra = self.logout_origin()
        policy = self._csp.get(extra)
        if policy is None:
            form_action = sorted({"'self'", self.issuer_origin, *([extra] if extra else [])})
            policy = self._csp[extra] = "; ".join(
                [
                    "default-src 'self'",
                    "script-src 'self'",
                    "style-src 'self'",
                    "img-src 'self' data:",
                    "connect-src 'self'",
                    "object-src 'none'",
                    "base-uri 'none'",
                    f"form-action {' '.join(form_action)}",
                    "frame-ancestors 'none'",
                ]
            )
        return policy

    def __call__(self, event):
        response = event.response
        headers = response.headers
        for name, value in self.headers:
            headers[name] = value
        headers["Content-Security-Policy"] = self.content_security_policy()
        if event.request.environ.get("PATH_INFO", "").startswith("/static/"):
            return
        # Pages and JSON depend on who is asking: never cached, never shared.
        if "Cache-Control" not in headers:
            headers["Cache-Control"] = "no-store"
        vary = response.vary or ()
        if "Cookie" not in vary:
            response.vary = (*vary, "Cookie")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


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

