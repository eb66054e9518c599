"""Responses of the development stack: HTML pages, JSON, and the provider's own cookies.

Pages are rendered with a private Jinja2 environment rather than Pyramid renderers, so that the
BFF's BeforeRender subscribers (which look up the BFF session) never run for the devstack.
Every page is strict-CSP clean: no inline script or style, one stylesheet from the static view.
"""

import hmac
import re
import secrets

import jinja2
from pyramid.response import Response
from pyramid.security import NO_PERMISSION_REQUIRED
from pyramid.view import view_config

from myapp.devstack.settings import IDP_PATH

SESSION_COOKIE = "devstack_idp_session"
CSRF_COOKIE = "devstack_idp_csrf"
CSRF_FIELD = "csrf_token"
STYLESHEET = "myapp.devstack:static/devstack.css"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("myapp.devstack", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def devstack_view(**settings):
    """``view_config`` for the devstack: no BFF session, so no BFF CSRF check or permission."""
    return view_config(require_csrf=False, permission=NO_PERMISSION_REQUIRED, **settings)


def json_response(data, *, status: int = 200, headers: dict | None = None) -> Response:
    response = Response(json=data, status=status)
    response.headers["Cache-Control"] = "no-store"
    response.headers.update(headers or {})
    return response


def method_not_allowed(request) -> Response:
    return json_response(
        {"error": "method_not_allowed", "message": f"{request.method} is not allowed here."}, status=405
    )


def render(request, template: str, *, form_action=(), status: int = 200, **values) -> Response:
    """A page, with headers as strict as the BFF's; ``form_action`` lists the origins its forms
    may end up at (browsers apply form-action to the redirect that follows a form POST)."""
    idp = (request.matchdict or {}).get("idp", "idp")
    body = _templates.get_template(template).render(
        request=request,
        stylesheet=request.static_path(STYLESHEET),
        csrf_field=CSRF_FIELD,
        route=lambda name: request.route_path(name, idp=idp),
        **values,
    )
    response = Response(body, status=status, content_type="text/html", charset="utf-8")
    sources = " ".join(["'self'", *form_action])
    response.headers.update(
        {
            "Content-Security-Policy": (
                "default-src 'none'; style-src 'self'; img-src 'self'; "
                f"form-action {sources}; frame-ancestors 'none'; base-uri 'none'"
            ),
            "X-Frame-Options": "DENY",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        }
    )
    return response


def set_provider_cookie(response: Response, name: str, value: str | None, *, secure: bool, path: str = IDP_PATH) -> None:
    """Set (or, with ``None``, delete) a cookie that only this issuer's paths ever see (a cookie
    for /_dev/idp is not sent to /_dev/idp2)."""
    if value is None:
        response.delete_cookie(name, path=path)
        return
    response.set_cookie(name, value, path=path, httponly=True, samesite="Lax", secure=secure)


def csrf_token(request, *, secure: bool) -> str:
    """The form token: a random value in a cookie, repeated in a hidden field (double submit)."""
    token = request.cookies.get(CSRF_COOKIE, "")
    if not _TOKEN.fullmatch(token):
        token = secrets.token_urlsafe(32)
        path = "/_dev/" + request.matchdict.get("idp", "idp") if request.matchdict else IDP_PATH
        request.add_response_callback(
            lambda request, response: set_provider_cookie(response, CSRF_COOKIE, token, secure=secure, path=path)
        )
    return token


def csrf_ok(request) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    field = request.POST.get(CSRF_FIELD, "")
    return bool(_TOKEN.fullmatch(cookie)) and hmac.compare_digest(cookie.encode(), field.encode("utf-8", "replace"))


def presented_token(request) -> tuple[str, str | None]:
    """The scheme (lower case) and token of the ``Authorization`` header: ``bearer`` (RFC 6750
    2.1) or ``dpop`` (RFC 9449 section 7.1); the token is None when there is none."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return scheme.lower(), token or None


def bearer_token(request) -> str | None:
    """The token of an ``Authorization: Bearer`` header (RFC 6750 2.1), or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
