"""Exception views: plain-words pages for people, SPEC.md's JSON shape for programs."""

import logging

from pyramid.exceptions import BadCSRFOrigin, BadCSRFToken, PredicateMismatch
from pyramid.httpexceptions import HTTPException, HTTPForbidden, HTTPSeeOther
from pyramid.renderers import render_to_response
from pyramid.response import Response
from pyramid.view import exception_view_config, forbidden_view_config, notfound_view_config

from myapp.errors import APIError, ErrorCode, describe_outage, json_error
from myapp.models import UserSession
from myapp.request import FormRefused
from myapp.resources import ROW_FACTORIES, SessionResource
from myapp.routes import is_json_request, return_path
from myapp.security import SAFE_METHODS, FormFromElsewhere, JSONCSRFRefused, live_session
from myapp.services.audit import AuditEventType
from myapp.services.oidc import ProviderUnavailable
from myapp.services.sessions import EndReason
from myapp.services.stepup import StepUpRequired
from myapp.services.tokens import LoginRequired, UpstreamTokenRefused
from myapp.stepup import step_up_response

log = logging.getLogger(__name__)


def error_page(request, status, title, message, **extra) -> Response:
    response = render_to_response(
        "myapp:templates/error.jinja2",
        {"status": status, "title": title, "message": message, **extra},
        request=request,
    )
    response.status_int = status
    return response


def refusal(request, status: int, code: ErrorCode, message: str, *, title: str, page: str | None = None,
            page_status: int | None = None) -> Response:
    """SPEC.md's JSON error for programs; a page in plain words for people."""
    if is_json_request(request):
        return json_error(status, code, message)
    return error_page(request, page_status or status, title, page or message)


def _back_here(request) -> str:
    """Where to return after signing in again: this page, or the form's page (its draft waits there)."""
    return return_path(request, request.services.settings.public_url)


@exception_view_config(APIError)
def api_error(exc, request):
    return json_error(exc.status, exc.code, exc.message, exc.headers)


@exception_view_config(JSONCSRFRefused)
def json_csrf_refused(exc, request):
    """A JSON call refused by the CSRF rule. One that would change something (any method but GET,
    HEAD, OPTIONS, TRACE), from a signed-in session, is a denied action for the audit log, as a
    refused form is: the session's cookie goes only with same-site requests of those methods
    (SameSite), so it is forged or broken browser code. A safe one is not (docs/architecture.md):
    it changes nothing, a person opening /auth/user or an /api address in the address bar makes
    one, and any website could write records in the person's name with links to such addresses."""
    if request.method not in SAFE_METHODS and request.identity is not None:
        request.restart_transaction()
        record_denial(request, exc.reason)
    return api_error(exc, request)


@exception_view_config(FormRefused)
def form_refused(exc, request):
    return refusal(request, exc.status, exc.code, exc.message, title="This form could not be sent")


@exception_view_config(LoginRequired)
def login_required(exc, request):
    """The session ended while refreshing (expired, revoked, or its refresh token reused)."""
    if is_json_request(request):
        response = json_error(401, ErrorCode.LOGIN_REQUIRED, "Your session has ended. Sign in again.")
    else:
        response = HTTPSeeOther(
            request.route_path("signed_out", _query={"reason": EndReason.REFRESH_FAILED, "next": _back_here(request)})
        )
    response.headerlist.append(request.services.session_cookie.delete())
    return response


@exception_view_config(StepUpRequired)
def step_up_required(exc, request):
    """An upstream's RFC 9470 challenge (a path rule is answered by the step-up view deriver, myapp.stepup)."""
    return step_up_response(request, exc)


@exception_view_config(UpstreamTokenRefused)
def upstream_token_refused(exc, request):
    """The provider will not issue this upstream's token: that API only is unavailable."""
    log.warning("%s", exc.message)
    return refusal(
        request, 502, ErrorCode.UPSTREAM_UNAVAILABLE, exc.message,
        title="This service is unavailable", page="A service this page needs is unavailable. Please try again later.",
    )


@exception_view_config(ProviderUnavailable)
def provider_unavailable(exc, request):
    return refusal(
        request, 503, ErrorCode.PROVIDER_UNAVAILABLE, "The sign-in provider is not answering. Try again shortly.",
        title="Sign-in provider unavailable", page="The sign-in provider is not answering. Please try again shortly.",
    )


@forbidden_view_config()
def forbidden(exc, request):
    if request.identity is None:
        if is_json_request(request):
            return json_error(401, ErrorCode.LOGIN_REQUIRED, "Sign in to continue.")
        reason = request.signed_out_reason
        if reason:
            return HTTPSeeOther(request.route_path("signed_out", _query={"reason": reason, "next": _back_here(request)}))
        return HTTPSeeOther(request.route_path("login", _query={"next": _back_here(request)}))

    # Whatever the request did so far is discarded; the denial itself is recorded.
    request.restart_transaction()
    permission = getattr(getattr(exc, "result", None), "permission", None)
    record_denial(request, f"needs {permission}" if permission else None)
    return refusal(
        request, 403, ErrorCode.FORBIDDEN, "You are not allowed to do this.", title="You cannot do that",
        page="Your account is not allowed to see or change this. If you think it should be, ask an administrator.",
    )


def record_denial(request, why: str | None) -> None:
    """A denied action of the signed-in person, for the audit log (SPEC.md), in the request's
    transaction: the caller makes sure that it is kept."""
    identity = request.identity
    request.audit.record(
        AuditEventType.ACCESS_DENIED,
        user_id=identity.user_id,
        actor_id=identity.user_id,
        session_handle=identity.session_handle,
        ip_address=request.remote_addr,
        detail=f"{request.method} {request.path[:300]}" + (f" ({why})" if why else ""),
    )


_ALLOWED_METHODS = "myapp.allowed_methods"


def allowed_methods(registry, route_name: str) -> str | None:
    """The ``Allow`` header of a 405 on ``route_name`` (RFC 9110): the methods its views take,
    read once from the configuration; None when one of them takes any method."""
    known = registry.get(_ALLOWED_METHODS)
    if known is None:
        views: dict[str, set[str] | None] = {}
        for entry in registry.introspector.get_category("views"):
            view = entry["introspectable"]
            name, methods = view["route_name"], view["request_methods"]
            if name is None or (name in views and views[name] is None):
                continue
            if methods is None:
                views[name] = None
                continue
            taken = views.setdefault(name, set())
            taken.update((methods,) if isinstance(methods, str) else methods)
            if "GET" in taken:
                taken.add("HEAD")  # Pyramid's request_method predicate lets HEAD through with GET
        known = registry[_ALLOWED_METHODS] = {
            name: ", ".join(sorted(methods)) for name, methods in views.items() if methods
        }
    return known.get(route_name)


@notfound_view_config()
def not_found(exc, request):
    if isinstance(exc, PredicateMismatch) and request.matched_route is not None:
        if request.matched_route.factory in ROW_FACTORIES and request.identity is None:
            # A stranger is sent to sign in as for a row that does not exist: a 405 where the row
            # exists, and the sign-in where it does not, told anyone which posts and accounts do
            # (helper-113).
            return forbidden(HTTPForbidden(), request)
        response = refusal(
            request, 405, ErrorCode.METHOD_NOT_ALLOWED, f"{request.method} is not allowed here.", title="Not allowed",
            page=f"This address does not accept {request.method} requests.",
        )
        allow = allowed_methods(request.registry, request.matched_route.name)
        if allow is not None:
            response.headers["Allow"] = allow
        return response
    if (request.method == "POST" and request.matched_route is not None
            and request.matched_route.name == "post_delete" and not is_json_request(request)):
        # "Delete post" pressed again after Stop, the first press having deleted it: still 404
        # (SPEC.md), in words that fit. The same for every id with no post, so it tells nothing
        # GET /posts/{id}'s 404 does not; and before the CSRF check, as every missing row's 404.
        return error_page(
            request, 404, "No post here", "There is no post here. It may already have been deleted.",
            retry_url=request.route_path("posts"), retry_label="Go to the posts",
        )
    return refusal(
        request, 404, ErrorCode.UNKNOWN_UPSTREAM, "There is no API at this address.", title="Page not found",
        page="There is nothing at this address. It may have been deleted.",
    )


def _origin_refused(exc: BadCSRFOrigin) -> str:
    """What the audit says of a form refused for its origin: ``form_origin_failure``'s reason."""
    return exc.reason if isinstance(exc, FormFromElsewhere) else "sent from another origin"


@exception_view_config(BadCSRFToken)
@exception_view_config(BadCSRFOrigin)
def bad_csrf(exc, request):
    if request.identity is not None:
        # A form of a signed-in person refused (forged, or from a page left open too long): a denied
        # action for the audit log, as a refused permission is. Nothing the request did is kept.
        request.restart_transaction()
        record_denial(request, "no valid CSRF token" if isinstance(exc, BadCSRFToken) else _origin_refused(exc))
    again = {"logout": _sign_out_again, "account_session_revoke": _revoke_again}.get(
        request.matched_route.name if request.matched_route is not None else ""
    )
    if again is not None and not is_json_request(request):
        page = again(request)
        if page is not None:
            return page
    return refusal(
        request, 403, ErrorCode.CSRF_FAILED, "Request refused: missing or wrong CSRF token.",
        title="This form has expired", page_status=400,
        page="The form was sent without a valid security token, or from another site. "
        "Go back, reload the page and try again.",
    )


def _sign_out_again(request) -> Response | None:
    """A refused sign-out of a live session: usually a Sign out button on a page from before the
    current sign-in (another tab signed in again since), whose form carries the old
    session's CSRF token. It signs nothing out, as a forged one must not; the person is offered
    one press that does, a form of the current session. None when the browser has no session."""
    session = live_session(request)
    if session is None:
        return None
    response = render_to_response(
        "myapp:templates/sign_out.jinja2",
        {"name": session.user_name, "csrf_token": session.csrf_token},
        request=request,
    )
    response.status_int = 400
    return response


def _revoke_again(request) -> Response | None:
    """A refused Sign out of one of the person's own sessions, on /account/sessions: usually a list
    from before the current sign-in (another tab signed out and in again since), whose forms carry
    the old session's CSRF token. It signs nothing out, as a forged one must not; the page names the
    session it was about and offers one press that does, a form of the current session. None (the
    plain refusal) for anyone else's session: an administrator's refused form tells nothing of it."""
    identity, context = request.identity, getattr(request, "context", None)
    if identity is None or not isinstance(context, SessionResource) or context.session.user_id != identity.user_id:
        return None
    response = render_to_response(
        "myapp:templates/session_revoke.jinja2",
        {
            "session": request.dbsession.get(UserSession, context.session.id),
            "ended": context.ended,
            "current": context.session.id == identity.session_id,
        },
        request=request,
    )
    response.status_int = 400
    return response


@exception_view_config(HTTPException)
def http_exception(exc, request):
    if exc.code < 400:
        return exc
    return refusal(
        request, exc.code, ErrorCode.HTTP_ERROR, exc.title, title=exc.title,
        page=exc.explanation or "The request could not be handled.",
    )


def service_unavailable(exc, request):
    """The database or the lock backend cannot be reached (SPEC.md): 503, and nothing kept."""
    log.warning("service unavailable on %s %s: %s", request.method, request.path, describe_outage(exc))
    response = refusal(
        request, 503, ErrorCode.SERVICE_UNAVAILABLE, "The service is briefly unavailable. Try again shortly.",
        title="Briefly unavailable", page="We cannot reach our database right now. Please try again in a moment.",
    )
    response.headers["Retry-After"] = "5"
    return response


@exception_view_config(Exception)
def unexpected_error(exc, request):
    log.exception("unexpected error on %s %s", request.method, request.path)
    return refusal(
        request, 500, ErrorCode.INTERNAL_ERROR, "Something went wrong on our side.", title="Something went wrong",
        page="An unexpected error stopped this page. It has been logged; please try again in a moment.",
    )
