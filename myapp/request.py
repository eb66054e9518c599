"""The app's request: typed properties for the services a view needs, and the few named things a
request learns on its way (why its session ended, whether its transaction keeps its work).

Views, resources and the security policy reach services only through these properties; nothing
outside the development stack looks anything up in the registry by a string.
"""

import os
from collections.abc import Callable, Mapping
from functools import partial
from types import SimpleNamespace
from urllib.parse import unquote_to_bytes

import pyramid_tm
from pyramid.decorator import reify
from pyramid.encode import url_quote, urlencode
from pyramid.interfaces import IRoutesMapper
from pyramid.path import caller_package
from pyramid.request import Request as PyramidRequest
from pyramid.url import QUERY_SAFE
from sqlalchemy.orm import Session
from webob.compat import cgi_FieldStorage, parse_header
from webob.multidict import MultiDict

from myapp.errors import ErrorCode
from myapp.memo import remember, remembered
from myapp.routes import API_PREFIX
from myapp.services import Services
from myapp.services.audit import AuditLog
from myapp.services.login import LoginService
from myapp.services.logout import LogoutService
from myapp.services.sessions import EndReason, SessionStore
from myapp.services.tokenset import Credential

# A post is at most about 20,000 characters, up to nine bytes each once form-encoded.
MAX_FORM_BYTES = 256 * 1024
# Where the registry says the largest request body any route takes, the proxy's or a form's: unless
# the ini sets ``max_request_body_size``, myapp's server refuses a larger one itself
# (myapp.server.create_server).
LARGEST_BODY = "myapp.largest_body"
# Where the registry keeps the largest body the paths under a prefix take, by prefix ("/api/"):
# what myapp's server refuses from a request's head (myapp.server), in the words of the part that
# would refuse it.
BODY_LIMITS = "myapp.body_limits"


def takes_bodies_up_to(registry, size: int, *, under: str | None = None) -> None:
    """Record that a route of the app takes a body of ``size`` bytes: :data:`LARGEST_BODY` is the
    largest any part of it records, whichever includes itself first. ``under``: that the paths
    under this prefix take none larger (:data:`BODY_LIMITS`)."""
    registry[LARGEST_BODY] = max(registry.get(LARGEST_BODY, 0), size)
    if under is not None:
        registry[BODY_LIMITS] = {**registry.get(BODY_LIMITS, {}), under: size}
MAX_FORM_FIELDS = 1000
FORM_TYPES = ("", "application/x-www-form-urlencoded", "multipart/form-data")
# Where the registry keeps the paths every request under one SCRIPT_NAME shares (Request.route_path).
FIXED_PATHS = "myapp.fixed_paths"
FIXED_PATHS_LIMIT = 1024
# What layout.jinja2 links to on every page, as ``paths.<name>``: routes by their names, assets by
# these (Request.layout_paths).
LAYOUT_ROUTES = ("auth_user", "home", "posts", "account_sessions", "admin_audit", "admin_users", "logout", "login")
LAYOUT_ASSETS = {"css": "myapp:static/app.css", "favicon": "myapp:static/favicon.svg", "js": "myapp:static/app.js"}


# Where the registry keeps the paths of routes asked with parameters (Request.route_path), by them.
ROUTE_PATHS = "myapp.route_paths"
ROUTE_PATHS_LIMIT = 4096


def _plain_parameters(kw: dict) -> bool:
    """Whether ``kw`` are a route's parameters (no ``_anchor``, ``_app_url`` and the like, which
    are Pyramid's to read) that are all exactly strings or whole numbers (not ``True`` or ``1.0``,
    equal to ``1`` as keys and written otherwise) or tuples of strings (a ``*subpath``), with a
    ``_query`` or not."""
    return all(name == "_query" or not name.startswith("_") and _plain(value) for name, value in kw.items())


def _plain(value) -> bool:
    kind = type(value)
    return kind is str or kind is int or kind is tuple and all(type(item) is str for item in value)


# Query strings as Pyramid writes them, by what they were written from (Request.route_path).
_QUERIES: dict = {}
_QUERIES_LIMIT = 1024


def _query_string(query) -> str:
    """``query`` (a string, a mapping or pairs) written as pyramid.url.parse_url_overrides writes
    it; a string, or a mapping of strings to strings or whole numbers, remembered by its text or its
    pairs (of exactly those types: ``1``, ``True`` and ``1.0`` are equal keys written differently).
    Every signed-in page links to ``signed_out`` with its own path as ``next``; writing that cost it
    3 us. Bounded: the values come from requests."""
    if isinstance(query, str):
        key = query
    elif isinstance(query, Mapping):
        key = tuple(query.items())
        if not all(type(name) is str and type(value) in (str, int) for name, value in key):
            key = None
    else:
        key = None
    written = None if key is None else _QUERIES.get(key)
    if written is None:
        written = url_quote(query, QUERY_SAFE) if isinstance(query, str) else urlencode(query, doseq=True)
        if key is not None:
            remember(_QUERIES, key, written, _QUERIES_LIMIT)
    return written


def is_utf8(data: bytes, *, form_encoded: bool = False) -> bool:
    """Whether ``data`` is UTF-8 text; ``form_encoded``: once its %-escapes (and "+") are read,
    as in a query string or a urlencoded form."""
    if form_encoded:
        data = unquote_to_bytes(data.replace(b"+", b" "))
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# What a part of a multipart form may say of itself and still be read as the UTF-8 text it is.
_PLAIN_CHARSETS = frozenset({"utf-8", "utf8"})
_PLAIN_TRANSFER_ENCODINGS = frozenset({"7bit", "8bit", "binary"})
# A part's head as a browser writes one (a name, a file name, a type) is well under this, and so is
# the form's Content-Type: past it, the parser's reading of parameters costs quadratic time.
MAX_FORM_HEAD_BYTES = 1024


def _part_heads_are_plain(body: bytes, boundary: bytes) -> bool:
    """Whether each part's head, read as Python's parser reads it (lines split at LF, a delimiter
    a line of ``--boundary`` alone, a head up to the first line of whitespace alone), is at most
    :data:`MAX_FORM_HEAD_BYTES`, names no parts within the part, and holds no CR but at a line's
    end (the parser's header reader ends a line there too, and a head read otherwise here could
    hide what follows: helper-122). Looked at before the parse, as the parser spends its time
    there: a head of 52,000 lines, or a part holding 29,000 empty parts under a boundary of its
    own, cost it hundreds of times a whole form before :func:`_plain_part` could refuse it
    (helper-121)."""
    delimiter, last = b"--" + boundary, b"--" + boundary + b"--"
    in_head, size = False, 0
    for line in body.split(b"\n"):
        if in_head:
            if not line.strip():
                in_head = False
                continue
            size += len(line) + 1
            if size > MAX_FORM_HEAD_BYTES or b"\r" in line.removesuffix(b"\r") or b"multipart/" in line.lower():
                return False
        elif line.strip() in (delimiter, last):
            in_head, size = line.strip() == delimiter, 0
    return True


def _plain_part(field) -> bool:
    """Whether a part of a multipart form, as Python's parser read it, is plain text as a browser
    sends one: no charset but UTF-8's, no transfer encoding, no parts within it. WebOb decodes a
    part by the charset and the transfer encoding it names (``charset=utf-7`` made a lone surrogate
    of ``+2AA-``, which the database refused; an unknown one raised LookupError): each was a 500
    (helper-116). Asked of the parser's own reading, so that no spelling of the header reads
    otherwise here (helper-118: ``BOUNDARY=``, a second ``charset``, a line folded by a bare CR)."""
    charset = field.type_options.get("charset")
    encoding = field.headers.get("Content-Transfer-Encoding")
    return (
        field.list is None
        and (charset is None or charset.strip().lower() in _PLAIN_CHARSETS)
        and (encoding is None or encoding.strip().lower() in _PLAIN_TRANSFER_ENCODINGS)
    )


class FormRefused(Exception):
    """A form body that will not be parsed: too large, too many fields, or unreadable."""

    def __init__(self, status: int, code: ErrorCode, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Request(PyramidRequest):
    # Why the session the cookie named is no longer live, so that the next page can say so.
    signed_out_reason: EndReason | None = None
    # Set by keep_transaction(): pyramid_tm commits even though the answer is an error.
    keeps_transaction: bool = False

    @reify
    def tm(self):
        """pyramid_tm's transaction manager. A method of this class, not pyramid_tm's request
        property (models' includeme drops it): any request property makes Pyramid build a new
        request class for every request."""
        return pyramid_tm.create_tm(self)

    def route_path(self, route_name, *elements, **kw):
        """Pyramid's ``route_path``; for a route asked without parameters, elements, anchor or
        Pyramid's other options, its path remembered per SCRIPT_NAME: every page asks for the same
        dozen (the header's links), and the answer depends on nothing else (no route here has a
        pregenerator). One asked with parameters that are all exactly strings, whole numbers or
        tuples of strings (``post``, ``id=7``: each post of a page links to its own) is remembered
        apart, by them, in a store of its own (:data:`ROUTE_PATHS`), which requests fill with what
        they ask and which is emptied when full. A ``_query`` is added to it as Pyramid writes one
        (every signed-in page links to ``signed_out`` with the page's own path as ``next``)."""
        query = kw.get("_query")
        if elements or (kw and kw.keys() != {"_query"} and not _plain_parameters(kw)):
            return super().route_path(route_name, *elements, **kw)
        script_name = self.environ.get("SCRIPT_NAME", "")
        parameters = tuple(sorted((name, value) for name, value in kw.items() if name != "_query"))
        if parameters:
            key = ("route", route_name, parameters, script_name)
            paths, limit = self.registry[ROUTE_PATHS], ROUTE_PATHS_LIMIT
        else:
            key, paths, limit = ("route", route_name, script_name), self._fixed_paths, FIXED_PATHS_LIMIT
        path = paths.get(key)
        if path is None:
            route = self.registry.getUtility(IRoutesMapper).get_route(route_name)
            if route is None or route.pregenerator is not None:
                return super().route_path(route_name, **kw)
            path = remember(paths, key, super().route_path(route_name, **dict(parameters)), limit)
        if not query:
            return path
        return f"{path}?{_query_string(query)}"

    def static_path(self, path, **kw):
        """Pyramid's ``static_path``; for an asset named by its package (``myapp:static/app.css``),
        without options, remembered per SCRIPT_NAME like :meth:`route_path` (the cache buster's
        fingerprint is a constant of the running code)."""
        if not os.path.isabs(path) and ":" not in path:
            # Relative to the caller's package, as Pyramid's own does (it would find this module).
            path = f"{caller_package().__name__}:{path}"
        if kw or ":" not in path:
            return super().static_path(path, **kw)
        return self._remembered(("static", path, self.environ.get("SCRIPT_NAME", "")), partial(super().static_path, path))

    @property
    def layout_paths(self) -> SimpleNamespace:
        """The paths every page's layout links to, from :meth:`route_path` and :meth:`static_path`,
        made once per SCRIPT_NAME: a template's call of each cost a page 30 us in all."""
        return self._remembered(("layout", self.environ.get("SCRIPT_NAME", "")), lambda: SimpleNamespace(
            **{name: self.route_path(name) for name in LAYOUT_ROUTES},
            **{name: self.static_path(asset) for name, asset in LAYOUT_ASSETS.items()},
        ))

    def _remembered(self, key: tuple, make: Callable[[], str | SimpleNamespace]) -> str | SimpleNamespace:
        """What ``make()`` gives, made once per ``key`` (which names the SCRIPT_NAME it is for;
        SCRIPT_NAME comes from a trusted proxy, the store is bounded all the same)."""
        return remembered(self._fixed_paths, key, lambda _: make(), FIXED_PATHS_LIMIT)

    @property
    def _fixed_paths(self) -> dict:
        return self.registry[FIXED_PATHS]

    @property
    def POST(self):
        """The form, parsed the first time a view (or the CSRF check, after the permission check)
        reads it, never before: bounded in bytes and in fields, UTF-8 text and nothing else (no
        other charset, no bytes that are not UTF-8, no files), and :class:`FormRefused` when it
        cannot be read."""
        if "webob._parsed_post_vars" not in self.environ and self._is_form():
            self._bound_form()
            try:
                form = self._multipart_form() if self.content_type == "multipart/form-data" else PyramidRequest.POST.fget(self)
            # ValueError: a multipart body without a boundary, say; RecursionError: parts within
            # parts past Python's stack (helper-116); LookupError: whatever charset is left.
            except (ValueError, LookupError, RecursionError):
                raise FormRefused(400, ErrorCode.BAD_REQUEST, "The form could not be read.") from None
            if any(not isinstance(value, str) for value in form.values()):
                # Not kept as read: whatever asks again is refused again.
                del self.environ["webob._parsed_post_vars"]
                raise FormRefused(400, ErrorCode.BAD_REQUEST, "This form takes text, not files.")
            return form
        return PyramidRequest.POST.fget(self)

    def _multipart_form(self) -> MultiDict:
        """A multipart form read as WebOb's ``Request.POST`` reads it, each part checked between
        Python's parser and WebOb's decoding (:func:`_plain_part`)."""
        self.make_body_seekable()
        self.body_file_raw.seek(0)
        environ = {**self.environ, "QUERY_STRING": ""}
        environ.setdefault("CONTENT_LENGTH", "0")  # as WebOb does: FieldStorage assumes none is -1
        parsed = cgi_FieldStorage(fp=self.body_file, environ=environ, keep_blank_values=True, encoding="utf8")
        # Its parts were counted before the parse (_bound_form): each needs a delimiter line.
        parts = parsed.list or ()
        if any(part.filename is not None for part in parts):
            # An empty file input too (filename=""), which the parser reads as bytes, and which
            # WebOb's decoding by a charset the part names turned into an AttributeError (helper-120).
            raise FormRefused(400, ErrorCode.BAD_REQUEST, "This form takes text, not files.")
        if not all(_plain_part(part) for part in parts):
            raise FormRefused(400, ErrorCode.BAD_REQUEST, "The form could not be read.")
        form = MultiDict.from_fieldstorage(parsed)
        self.environ["webob._parsed_post_vars"] = (form, self.body_file_raw)
        return form

    def _is_form(self) -> bool:
        # The same test as WebOb's: a POST without a Content-Type is read as a form too.
        content_type = self.content_type
        return content_type in FORM_TYPES and (self.method == "POST" or bool(content_type))

    def _bound_form(self) -> None:
        too_large = FormRefused(413, ErrorCode.PAYLOAD_TOO_LARGE, "The form is too large.")
        if (self.content_length or 0) > MAX_FORM_BYTES:
            raise too_large
        raw = self.body_file_raw
        if self.is_body_seekable:  # pyramid_retry made it so (a temporary file past 10 KiB)
            raw.seek(0)
        body = raw.read(MAX_FORM_BYTES + 1) if self.is_body_readable else b""
        if len(body) > MAX_FORM_BYTES:
            raise too_large
        # WebOb reads forms as UTF-8 only (another charset is an exception it calls a warning), and
        # turns bytes that are not UTF-8 into U+FFFD: refused here instead, as what was sent
        # cannot be kept as it was sent.
        if self.charset != "UTF-8":
            raise FormRefused(400, ErrorCode.BAD_REQUEST, "The form must be sent as UTF-8.")
        if not is_utf8(body, form_encoded=self.content_type != "multipart/form-data"):
            raise FormRefused(400, ErrorCode.BAD_REQUEST, "The form is not valid UTF-8.")
        if self.content_type == "multipart/form-data":
            # Before parsing (tens of thousands of empty parts cost the parser a second), by the
            # boundary as the parser itself reads it from the header (helper-118: "BOUNDARY=b"
            # was not found by a search for "boundary="; helper-120: counted only once parsed).
            # The header is bounded first: its reader takes quadratic time over the ";" after an
            # unclosed quote (helper-121: 48K of them cost thousands of times a whole form).
            content_type = self.headers.get("Content-Type", "")
            if len(content_type) > MAX_FORM_HEAD_BYTES:
                raise FormRefused(400, ErrorCode.BAD_REQUEST, "The form could not be read.")
            boundary = parse_header(content_type)[1].get("boundary", "").encode("latin-1", "replace")
            fields = body.count(b"--" + boundary) - 1 if boundary else 0
            if boundary and not _part_heads_are_plain(body, boundary):
                raise FormRefused(400, ErrorCode.BAD_REQUEST, "The form could not be read.")
        else:
            fields = body.count(b"&") + 1
        if fields > MAX_FORM_FIELDS:
            raise FormRefused(413, ErrorCode.PAYLOAD_TOO_LARGE, f"The form has more than {MAX_FORM_FIELDS} fields.")
        if self.is_body_seekable:
            raw.seek(0)
        else:
            self.body = body

    @reify
    def services(self) -> Services:
        return self.registry[Services]

    @reify
    def dbsession(self) -> Session:
        """The request's ORM session, in pyramid_tm's transaction."""
        return self.services.database.request_session(self)

    @reify
    def session_store(self) -> SessionStore:
        services = self.services
        return SessionStore(
            dbsession=lambda: self.dbsession,
            cipher=services.cipher,
            settings=services.settings.session,
            own_transactions=services.database.own_transaction,
            read_row=services.database.read_row,
            read_all=services.database.read_all,
            recent_touches=services.recent_touches,
        )

    @reify
    def audit(self) -> AuditLog:
        return AuditLog(dbsession=self.dbsession)

    @reify
    def login_service(self) -> LoginService:
        services = self.services
        return LoginService(
            dbsession=self.dbsession, providers=services.providers, cipher=services.cipher,
            upstreams=services.settings.upstreams,
        )

    @reify
    def logout_service(self) -> LogoutService:
        services = self.services
        return LogoutService(
            dbsession=self.dbsession,
            providers=services.providers,
            tokens=services.tokens,
            sessions=self.session_store,
            audit=self.audit,
        )

    def access_token(self, stale: str | None = None, *, upstream: str | None = None) -> Credential:
        """A valid access token of this request's session for ``upstream`` (see TokenManager.access_token)."""
        return self.services.tokens.access_token(self.identity.session, upstream=upstream, stale=stale)

    def keep_transaction(self) -> None:
        """Commit this request's work even though it answers with an error."""
        self.keeps_transaction = True

    def restart_transaction(self) -> None:
        """Discard what this request wrote so far and start again, keeping what comes next."""
        self.tm.abort()
        self.tm.begin()
        self.keep_transaction()


def includeme(config):
    config.set_request_factory(Request)
    takes_bodies_up_to(config.registry, MAX_FORM_BYTES)
    # The proxy (views/api.py) takes none larger than max_body_bytes, and refuses it in these words.
    takes_bodies_up_to(config.registry, config.get_settings()["myapp"].proxy.max_body_bytes, under=API_PREFIX)
    config.registry[FIXED_PATHS] = {}
    config.registry[ROUTE_PATHS] = {}
