"""Who is asking: the security policy, Identity and principals, CSRF storage and the JSON CSRF rule."""

import functools
import hmac
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from pyramid.authorization import ACLHelper, Authenticated, Everyone
from pyramid.exceptions import BadCSRFOrigin
from pyramid.interfaces import ICSRFStoragePolicy, ISecurityPolicy
from pyramid.request import RequestLocalCache
from pyramid.viewderivers import INGRESS
from zope.interface import implementer

from myapp import tracing
from myapp.cookies import SessionCookie
from myapp.errors import APIError, ErrorCode
from myapp.models import User
from myapp.services import Services
from myapp.services.sessions import PROVIDER_UNKNOWN, EndReason, SessionRecord, SignIn, same_provider_session
from myapp.services.tokenset import TokenSet

# RFC 9110 section 9.2.1. Every other method, one SPEC.md's list names or not (PROPFIND, MKCOL),
# may change something: the JSON CSRF rule checks its Origin, and its refusal is audited.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def user_principal(user_id: int) -> str:
    return f"user:{user_id}"


def group_principal(group: str) -> str:
    return f"group:{group}"


@dataclass(frozen=True)
class Identity:
    """The signed-in user and their session, as plain values (never a live ORM object)."""

    session: SessionRecord
    idle_expires_at: datetime
    # The name its provider has in the settings now (``session.provider`` is the one it signed in
    # with; a provider renamed since is found by its issuer). What upstreams and step-ups go by.
    provider: str

    @property
    def user_id(self) -> int:
        return self.session.user_id

    @property
    def issuer(self) -> str:
        return self.session.user_issuer

    @property
    def subject(self) -> str:
        return self.session.user_subject

    @property
    def name(self) -> str:
        return self.session.user_name

    @property
    def email(self) -> str | None:
        return self.session.user_email

    @property
    def groups(self) -> tuple[str, ...]:
        return self.session.user_groups

    @property
    def session_id(self) -> int:
        return self.session.id

    @property
    def session_handle(self) -> str:
        return self.session.handle

    @property
    def csrf_token(self) -> str:
        return self.session.csrf_token

    @property
    def expires_at(self) -> datetime:
        return self.session.expires_at

    @functools.cached_property  # asked by every permission check of the request
    def principals(self) -> tuple[str, ...]:
        return (
            Authenticated,
            user_principal(self.user_id),
            *(group_principal(g) for g in self.groups),
        )


@implementer(ISecurityPolicy)
class SessionSecurityPolicy:
    """An opaque cookie naming a server-side session row (h's auth ticket, warehouse's policy).

    ``identity()`` fails closed at every step: no cookie, malformed, unknown hash, ended, expired,
    idle, user disabled → ``None``. A cookie that names no live session is cleared.
    ``remember()`` starts a new session; ``forget()`` clears the cookie (ending a session is the
    caller's business: a logout ends it under the refresh lock, a revocation by handle).
    """

    def __init__(self, cookie: SessionCookie):
        self.cookie = cookie
        self._cache = RequestLocalCache(self._load_identity)
        self._acl = ACLHelper()

    def identity(self, request) -> Identity | None:
        return self._cache.get_or_create(request)

    def loaded_identity(self, request) -> Identity | None:
        """The identity this request has loaded already, else None, without asking the database:
        for the page about an outage, which would otherwise wait for the lookup a second time."""
        return self._cache.get(request, None)

    def authenticated_userid(self, request) -> str | None:
        identity = request.identity
        return None if identity is None else str(identity.user_id)

    def permits(self, request, context, permission):
        identity = self.identity(request)  # request.identity's, without Pyramid's look-up of this policy
        principals = (Everyone,) if identity is None else (Everyone, *identity.principals)
        return self._acl.permits(context, principals, permission)

    def remember(
        self, request, userid, *, tokens=TokenSet(), provider="default", provider_sid=None, sign_in=SignIn(),
        browser_binding=None, **kw
    ):
        """Start a new session for the user (never reusing the browser's old id) and set its cookie;
        ``request.identity`` is the new session from here on."""
        store = request.session_store
        old = self.identity(request)
        user = request.dbsession.get(User, int(userid))
        replaced = old.session if old is not None else unserved_session(request)
        if replaced is not None:
            # Its refresh token is revoked, unless this sign-in was made in the same session at the
            # provider (a step-up, a second sign-in behind single sign-on): revoking it there could
            # end the new session's too (same_provider_session). It is wiped here either way.
            shared = same_provider_session(replaced.user_issuer, replaced.provider_sid, user.issuer, provider_sid)
            store.end(replaced, EndReason.REPLACED, revoke=not shared)
        raw_id, session = store.create(
            user=user,
            user_agent=request.user_agent or "",
            # REMOTE_ADDR, which waitress sets from a trusted proxy's X-Forwarded-For only;
            # WebOb's client_addr would believe any X-Forwarded-For a browser sends.
            ip_address=request.remote_addr or "",
            provider=provider,
            provider_sid=provider_sid,
            tokens=tokens,
            sign_in=sign_in,
            browser_binding=browser_binding,
        )
        live = store.dead_reason(session) is None  # a disabled user's new session is dead at once
        identity = Identity(session=session, idle_expires_at=store.idle_expires_at(session), provider=provider)
        self._cache.set(request, identity if live else None)
        max_age = int((session.expires_at - session.created_at).total_seconds())
        headers = [self.cookie.set(raw_id, max_age)]
        # A note of how or why an earlier session ended is not this one's: a landing or signed-out
        # page of the new session (or of the next person at the browser) must not say it.
        if self.cookie.ended_note_of(request) is not None:
            headers.append(self.cookie.clear_ended_note())
        if self.cookie.has_signed_out_note(request):
            headers.append(self.cookie.clear_signed_out_note())
        return headers

    def forget(self, request, **kw):
        self._cache.set(request, None)
        return [self.cookie.delete()]

    def _load_identity(self, request) -> Identity | None:
        raw_id = self.cookie.read(request)
        if raw_id is None:
            if self.cookie.is_present(request):
                self._clear_cookie_later(request, None)
            return None
        store = request.session_store
        with tracing.span("session.lookup") as span:
            session = store.find(raw_id)
            span.set_attribute("myapp.session_found", session is not None)
        if session is None:
            self._clear_cookie_later(request, None)
            return None
        reason = store.dead_reason(session)
        if reason is not None:
            if session.ended_at is None:
                store.end_found_dead(session, reason)  # idle, or its account disabled
            request.environ[ENDED_SESSION] = session
            self._clear_cookie_later(request, reason)
            return None
        client = request.services.providers.of_session(session.provider, session.user_issuer)
        if client is None:
            # A provider this process does not know (a renamed one is still found by its issuer):
            # removed from the settings, or added on other processes first, in a rolling deployment.
            # No session here, but nothing ended and the cookie kept: a process that knows the
            # provider still serves it, and a removed provider's sessions end at their timeout, or
            # when the person signs out or in again here (see unserved_session).
            request.signed_out_reason = PROVIDER_UNKNOWN
            request.environ[UNSERVED_SESSION] = session
            return None
        session = store.touch(session)
        return Identity(session=session, idle_expires_at=store.idle_expires_at(session), provider=client.settings.name)

    def _clear_cookie_later(self, request, reason: EndReason | None):
        # The reason lets the UI say "you were signed out because ...".
        request.signed_out_reason = reason
        cookie = self.cookie

        def clear(request, response):
            if not cookie.is_set_in(response):
                response.headerlist.append(cookie.delete())
                if reason is not None and not request.environ.get(REASON_TOLD):
                    # For the signed-out page a script opens next (SessionCookie.ended_note); not
                    # when this answer is a page that says why itself (tell_signed_out_reason).
                    response.headerlist.append(cookie.ended_note(reason))

        request.add_response_callback(clear)


REASON_TOLD = "myapp.signed_out_reason_told"


def tell_signed_out_reason(request) -> str | None:
    """``request.signed_out_reason`` for a page that says it: that page is the first to tell, so
    its answer leaves no note of it for a later one (SessionCookie.ended_note), which would tell it
    again."""
    request.identity  # meets (and clears) an ended cookie
    request.environ[REASON_TOLD] = True
    return request.signed_out_reason


UNSERVED_SESSION = "myapp.unserved_session"


def unserved_session(request) -> SessionRecord | None:
    """The live session of the request's cookie that this process serves no identity for, as its
    provider is not configured here; what signing out or in again here must end all the same."""
    if request.identity is not None:
        return None
    return request.environ.get(UNSERVED_SESSION)


def live_session(request) -> SessionRecord | None:
    """The live session of the request's cookie: its identity's, or one whose provider this process
    does not serve (unserved_session), which signing out ends all the same."""
    identity = request.identity
    return identity.session if identity is not None else unserved_session(request)


ENDED_SESSION = "myapp.ended_session"


def signed_out_here(request) -> SessionRecord | None:
    """The session of the request's cookie when a sign-out here ended it (``/logout``, the browser's
    own: no other request knows the cookie), else None. A cookie that still names it means the
    browser never had that sign-out's answer, which cleared it (Stop pressed, the connection
    lost), so nor did it reach the provider's sign-out page."""
    session = request.environ.get(ENDED_SESSION) if request.identity is None else None
    if session is None or session.ended_at is None or session.end_reason != EndReason.LOGOUT:
        return None
    return session


def sent_from_a_page_of(request, session: SessionRecord) -> bool:
    """The check of a form (its origin, then its CSRF token), against ``session``'s token rather
    than the identity's: for a session that is no longer the request's identity."""
    if form_origin_failure(request, request.registry.settings["myapp"].public_url) is not None:
        return False
    supplied = request.POST.get("csrf_token", "") or request.headers.get("X-CSRF-Token", "")
    return csrf_tokens_match(session.csrf_token, supplied)


def csrf_tokens_match(expected: str, supplied: str | None) -> bool:
    # A token is ASCII: anything else is no token, and a lone surrogate (a form part decoded as
    # UTF-7) could not be encoded for the comparison, a 500 (helper-118).
    supplied = supplied or ""
    return bool(expected) and supplied.isascii() and hmac.compare_digest(expected.encode("utf-8"), supplied.encode("ascii"))


@implementer(ICSRFStoragePolicy)
class SessionRowCSRFStoragePolicy:
    """The CSRF token lives in the session row; an anonymous request has none and fails every check."""

    def new_csrf_token(self, request):
        identity = request.identity
        if identity is None:
            return ""
        return request.session_store.new_csrf_token(identity.session)

    def get_csrf_token(self, request):
        identity = request.identity
        if identity is None:
            # Signing out of a session this process serves no identity for is still checked.
            unserved = unserved_session(request)
            return "" if unserved is None else unserved.csrf_token
        return identity.csrf_token

    def check_csrf_token(self, request, supplied_token):
        return csrf_tokens_match(self.get_csrf_token(request), supplied_token)


def json_csrf_failure(request, public_url: str) -> str | None:
    """SPEC.md's rule for JSON routes; returns why the request is refused, or None."""
    if request.headers.get("X-CSRF") != "1":
        return "the X-CSRF: 1 header is required"
    if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        return "cross-site requests are refused"
    if request.method not in SAFE_METHODS:
        origin = request.headers.get("Origin")
        if origin is not None and not same_origin(origin, public_url):
            return "the Origin header does not match this site"
    return None


def form_origin_failure(request, public_url: str) -> str | None:
    """Why a form (a POST of a page: a post, a sign-out) is refused for where it was sent from, or
    None. Its ``Origin``, else its ``Referer``'s origin, must be ``myapp.public_url``'s, as in the
    JSON rule: never the request's ``Host``, which a reverse proxy may not pass on and whoever sends
    the request writes (Pyramid's check_csrf_origin trusts it, and skips plain-http requests, as a
    proxy's are when it sends no X-Forwarded-Proto). Naming neither leaves the CSRF token to decide,
    as Pyramid did, except on a request that came over https, which Pyramid refuses (browsers send
    ``Origin`` with every POST): nothing names another site, and a script or an old browser whose
    Referer was stripped sends neither."""
    origin = request.headers.get("Origin")
    if origin is not None and not origin.strip():
        # Named, and naming nothing: refused, as the JSON rule refuses it, over http too. Read as
        # absent, it let the Referer go unchecked, and over http left the CSRF token to decide.
        return "an empty Origin header"
    if origin is None and request.referrer:
        try:
            referer = urlsplit(request.referrer)
        except ValueError:  # an unreadable Referer ("https://[host/") names no origin, this site's least
            return "sent from another origin"
        origin = f"{referer.scheme}://{referer.netloc}"
    if not origin:
        return "missing Origin or Referer" if request.scheme == "https" else None
    return None if same_origin(origin, public_url) else "sent from another origin"


class FormFromElsewhere(BadCSRFOrigin):
    """A form refused for where it was sent from; ``reason`` is ``form_origin_failure``'s, for the audit."""

    def __init__(self, reason: str):
        super().__init__(f"Origin checking failed - {reason}.")
        self.reason = reason


def check_form_origin(request) -> bool:
    """Every form's origin check (``form_origin_failure``), before its CSRF token's: Pyramid's CSRF
    callback (its own origin check turned off), and /logout's. True, or FormFromElsewhere."""
    reason = form_origin_failure(request, request.registry.settings["myapp"].public_url)
    if reason is not None:
        raise FormFromElsewhere(reason)
    return True


def same_origin(origin: str, public_url: str) -> bool:
    """Whether ``origin`` (an ``Origin`` header, or a ``Referer``'s scheme and authority) is the
    public URL's: its scheme, host and port, and nothing else. Userinfo, a query or a fragment make
    it no origin (RFC 6454 serializes none; a browser sends none: helper-132)."""
    if origin == "null" or "@" in origin or "?" in origin or "#" in origin:
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


class JSONCSRFRefused(APIError):
    """SPEC.md's JSON CSRF rule refused the request (403 ``csrf_failed``); ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(403, ErrorCode.CSRF_FAILED, f"Request refused: {reason}.")
        self.reason = reason


def json_csrf_view(view, info):
    """View deriver: ``json_csrf=True`` applies the JSON CSRF rule before anything else runs."""
    if not info.options.get("json_csrf"):
        return view
    public_url = info.settings["myapp"].public_url

    def wrapper(context, request):
        reason = json_csrf_failure(request, public_url)
        if reason is not None:
            raise JSONCSRFRefused(reason)
        return view(context, request)

    return wrapper


json_csrf_view.options = ("json_csrf",)


def includeme(config):
    policy = SessionSecurityPolicy(config.registry[Services].session_cookie)
    config.set_security_policy(policy)
    config.set_csrf_storage_policy(SessionRowCSRFStoragePolicy())
    # Pyramid's origin check compares with the request's Host; ours, with myapp.public_url. The
    # callback runs for every form of an unsafe method, before the token is checked.
    config.set_default_csrf_options(require_csrf=True, check_origin=False, callback=check_form_origin)
    config.add_view_deriver(json_csrf_view, under=INGRESS, over="secured_view")
