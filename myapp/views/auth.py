"""Sign-in, sign-out and who-am-I: the routes of SPEC.md's "OIDC login" section."""

import logging
import secrets

from pyramid.csrf import check_csrf_token
from pyramid.httpexceptions import HTTPSeeOther
from pyramid.renderers import render_to_response
from pyramid.response import Response
from pyramid.security import NO_PERMISSION_REQUIRED, forget, remember
from pyramid.view import view_config

from myapp.errors import ErrorCode, json_error
from myapp.resources import Permission
from myapp.routes import safe_next_path
from myapp.security import check_form_origin, live_session, sent_from_a_page_of, signed_out_here, tell_signed_out_reason
from myapp.services.audit import AuditEventType
from myapp.services.login import LoginError, StepUp, repeated
from myapp.services.metrics import failure_reason
from myapp.services.oidc import OIDCError, ProviderMisconfigured, ProviderUnavailable
from myapp.services.sessions import EndReason
from myapp.services.stepup import max_age_of
from myapp.settings import DEFAULT_PROVIDER, PROMPTS, acr_values_fit
from myapp.views import SIGNED_OUT_MESSAGES
from myapp.views.errors import error_page

log = logging.getLogger(__name__)

MAX_LOGOUT_REQUEST_BYTES = 64 * 1024
# Callback failures that only mean "this sign-in is over": a state that is spent or expired, or a
# response to no sign-in started here (such as the provider's answer to a replayed request).
STALE_CALLBACK_REASONS = frozenset({"missing_state", "unknown_state", "expired_state"})


def _login_url(request, next_path: str, **query) -> str:
    return request.route_path("login", _query={"next": next_path, **query})


def _sign_in_again(request, next_path: str, *, account_disabled: bool) -> tuple[str, str]:
    """The link (address, words) a page offers after a sign-in refused or a session ended. For a
    disabled account, another account: "Sign in again" would come straight back to the refusal from
    a provider still signed in as them (``prompt=login`` asks it for a sign-in anew)."""
    if account_disabled:
        return _login_url(request, next_path, prompt="login"), "Sign in with another account"
    return _login_url(request, next_path), "Sign in again"


@view_config(route_name="login", request_method="GET", permission=NO_PERMISSION_REQUIRED)
def login(request):
    if request.method == "HEAD":
        return Response(status=200)  # a link checker's HEAD must not start a sign-in
    next_path = safe_next_path(request.GET.get("next"))
    if repeated(request.GET, LOGIN_PARAMETERS):
        # Which copy counts would be a guess (the last, as read; the first, by a proxy or a log):
        # two providers, or two step-ups, are no sign-in anyone asked for (helper-132).
        return error_page(
            request, 400, "This sign-in link is not valid", "It asks for the same thing twice.",
            retry_url=_login_url(request, next_path), retry_label="Sign in",
        )
    providers = request.services.providers
    provider = request.GET.get("provider")
    if not provider:  # none named (an empty ?provider= too): the chooser, or the only one
        if len(providers) > 1:
            return _chooser(request, next_path)
        provider = next(iter(providers))
    elif provider not in providers:
        return error_page(
            request, 400, "Unknown sign-in provider",
            "This sign-in link names a provider this site does not know. Choose one of ours instead.",
            retry_url=_login_url(request, next_path), retry_label="Choose how to sign in",
        )
    if not request.services.login_rate_limiter.allow(request.remote_addr or ""):
        return error_page(
            request, 429, "Too many sign-in attempts", "Please wait a minute before trying again.",
            retry_url=_login_url(request, next_path),
        )
    prompt = request.GET.get("prompt")
    step_up = _step_up_of(request)
    if step_up is None:
        return error_page(
            request, 400, "This sign-in link is not valid",
            "It asks the provider for a kind of sign-in this site cannot pass on.",
            retry_url=_login_url(request, next_path), retry_label="Sign in",
        )
    binding = request.services.login_cookie
    browser_token = binding.read(request) or secrets.token_urlsafe(32)
    try:
        url = request.login_service.begin(
            provider=provider, next_path=next_path, browser_token=browser_token,
            prompt=prompt if prompt in PROMPTS else None,
            step_up=step_up,
        )
    except OIDCError as e:
        log.warning("sign-in at %s cannot start: %s", provider, e.message)
        unavailable = isinstance(e, ProviderUnavailable)
        if e.reason.startswith("par_"):
            # The provider refused the pushed request, failed it or did not answer it (par_unavailable):
            # nothing was stored, and it is audited.
            request.keep_transaction()
            request.audit.record(AuditEventType.LOGIN_FAILED, ip_address=request.remote_addr, detail=e.reason)
            request.services.metrics.login_failures.labels(reason=failure_reason(e.reason)).inc()
        refused = e.reason.startswith("par_refused")
        return error_page(
            request,
            503 if unavailable else 502,
            "Sign-in is unavailable" if unavailable else "Sign-in was refused" if refused else "Sign-in is misconfigured",
            ("The sign-in provider is not available right now. Please try again in a moment." if unavailable
             else f"{e.message} An administrator may need to check the sign-in configuration." if refused
             else f"An administrator needs to fix the sign-in configuration: {e.message}"),
            retry_url=_login_url(request, next_path),
        )
    response = HTTPSeeOther(url)
    response.headerlist.append(binding.set(browser_token))
    return response


def _step_up_of(request) -> StepUp | None:
    """``acr_values`` and ``max_age`` of /login (a step-up asks for them); None when malformed."""
    acr_values = tuple(request.GET.get("acr_values", "").split())
    max_age = request.GET.get("max_age")
    if not acr_values_fit(acr_values):
        return None
    if max_age is not None:
        max_age = max_age_of(max_age)
        if max_age is None:
            return None
    return StepUp(acr_values=acr_values, max_age=max_age)


# What /login passes on from the provider chooser to the provider chosen, besides ``next``.
CHOOSER_KEEPS = ("acr_values", "max_age", "prompt")
# What /login reads that changes the sign-in asked for: each at most once (``next`` is checked
# whichever copy is read, and only says where to go after).
LOGIN_PARAMETERS = ("provider", *CHOOSER_KEEPS)


def _chooser(request, next_path: str) -> Response:
    """Several providers and none named: one button for each, keeping ``next`` and what the link
    asks of the sign-in (a step-up's ``acr_values`` and ``max_age``, ``prompt``), checked once chosen."""
    kept = {name: request.GET[name] for name in CHOOSER_KEEPS if name in request.GET}
    choices = [
        {"name": name, "label": client.settings.display_name,
         "url": request.route_path("login", _query={"provider": name, "next": next_path, **kept})}
        for name, client in request.services.providers.items()
    ]
    response = render_to_response("myapp:templates/sign_in.jinja2", {"providers": choices}, request=request)
    response.headers["Cache-Control"] = "no-store"
    return response


@view_config(route_name="auth_callback", request_method="GET", permission=NO_PERMISSION_REQUIRED)
@view_config(route_name="auth_provider_callback", request_method="GET", permission=NO_PERMISSION_REQUIRED)
def callback(request):
    if request.method == "HEAD":
        return Response(status=200)  # completing a sign-in changes state: only a GET does it
    if not request.services.callback_rate_limiter.allow(request.remote_addr or ""):
        return error_page(
            request, 429, "Too many sign-in attempts", "Please wait a minute before trying again.",
            retry_url=_login_url(request, "/"),
        )
    # The browser's session (if any) is read before this request writes: its first read may write
    # (its activity, in a transaction of its own), which on SQLite would wait behind this request's
    # own write lock for as long as the lock's timeout (helper-46).
    identity = request.identity
    signed_in = identity is not None
    try:
        result = request.login_service.complete(
            request.GET,
            # /auth/callback is the default provider's; every provider also has /auth/callback/<name>.
            provider=request.matchdict.get("provider", DEFAULT_PROVIDER),
            browser_token=request.services.login_cookie.read(request),
            signed_in=identity.session if signed_in else None,
        )
    except LoginError as e:
        # The consumed login transaction and the audit record stay; nothing else was written.
        request.keep_transaction()
        request.services.metrics.login_failures.labels(reason=failure_reason(e.reason)).inc()
        if (not e.started_here or e.reason in STALE_CALLBACK_REASONS) and signed_in:
            # Back (or a reload) onto a sign-in that already completed or ran out, in a browser
            # that is signed in: nothing went wrong for this person; carry on where they meant to go.
            log.info("stale sign-in callback (%s) in a signed-in browser; sending it on", e.reason)
            return HTTPSeeOther(e.next_path)
        if e.started_here:
            request.audit.record(
                AuditEventType.LOGIN_FAILED, user_id=e.user_id, ip_address=request.remote_addr, detail=e.reason
            )
            log.info("sign-in failed: %s", e.reason)
        else:
            log.info("sign-in callback answering no sign-in started here (%s), from %s", e.reason, request.remote_addr)
        retry_url, retry_label = _sign_in_again(request, e.next_path, account_disabled=e.reason == "account_disabled")
        return error_page(
            request,
            e.status,
            "Sign-in did not work" if e.status < 500 else "Sign-in is unavailable",
            e.message,
            retry_url=retry_url,
            retry_label=retry_label,
        )
    headers = remember(
        request, result.user_id, tokens=result.tokens, provider=result.provider, provider_sid=result.provider_sid,
        sign_in=result.sign_in, browser_binding=result.browser_binding,
    )
    request.services.metrics.logins.inc()
    request.audit.record(
        AuditEventType.LOGIN,
        user_id=result.user_id,
        actor_id=result.user_id,
        session_handle=request.identity.session_handle if request.identity else None,
        ip_address=request.remote_addr,
    )
    return HTTPSeeOther(result.next_path, headers=headers)


@view_config(route_name="logout", request_method="POST", permission=NO_PERMISSION_REQUIRED, require_csrf=False)
def logout(request):
    # A session whose provider this process does not know is signed out here all the same.
    session = live_session(request)
    if session is None:
        ended = signed_out_here(request)
        if ended is not None and sent_from_a_page_of(request, ended):
            # Signed out here by an earlier press whose answer the browser never had (Stop pressed,
            # the connection lost), so the provider's sign-out was never reached: this press, from
            # a page of that session (its CSRF token, this origin), goes on to it. Nothing more is
            # ended or recorded. Anything else (another page's token, another site) goes home.
            at_provider = request.logout_service.signed_out_already(ended)
        else:
            # Already signed out (expired, revoked): nothing to protect, just tidy up, but only a
            # cookie the browser sent. Without one this may be another site's form: a browser sends
            # no SameSite cookie with a cross-site POST, yet takes the answer's Set-Cookie, so
            # clearing it would sign the person out in their browser (not on the server: the
            # session would stay live, unended, its tokens unrevoked), with no token of ours.
            cleared = forget(request) if request.services.session_cookie.is_present(request) else []
            return HTTPSeeOther(request.route_path("home"), headers=cleared)
    else:
        check_form_origin(request)
        check_csrf_token(request)
        at_provider = request.logout_service.logout(session, ip_address=request.remote_addr)
    response = HTTPSeeOther(at_provider or request.route_path("home"), headers=forget(request))
    response.headerlist.append(request.services.session_cookie.signed_out_note())
    return response


@view_config(
    route_name="backchannel_logout", request_method="POST", permission=NO_PERMISSION_REQUIRED, require_csrf=False
)
def backchannel_logout(request):
    """OpenID Connect Back-Channel Logout 1.0: server to server, the logout token is the proof."""
    if (request.content_length or 0) > MAX_LOGOUT_REQUEST_BYTES:
        return _no_store(json_error(400, ErrorCode.INVALID_REQUEST, "The request is too large."))
    token = request.POST.get("logout_token", "")
    try:
        claims, ended = request.logout_service.backchannel_logout(token, ip_address=request.remote_addr)
    except OIDCError as e:
        if isinstance(e, ProviderMisconfigured | ProviderUnavailable):
            # Anyone may post here: what is wrong with the provider's documents is for the log, not them.
            log.warning("back-channel logout refused: %s: %s", e.reason, e.message)
            return _no_store(json_error(400, ErrorCode.INVALID_REQUEST, "The logout token cannot be checked now."))
        log.warning("back-channel logout refused: %s", e.reason)
        return _no_store(json_error(400, ErrorCode.INVALID_REQUEST, e.message))
    if not ended:
        # Usually the echo of a person's own sign-out here: nothing happened, so nothing is audited.
        log.info("back-channel logout ended no session (%s)", "by sid" if claims.get("sid") else "by sub")
    return _no_store(Response(json={}, status=200))


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


@view_config(route_name="client_jwks", request_method="GET", permission=NO_PERMISSION_REQUIRED)
def client_jwks(request):
    """The public keys of every provider's ``client_keys`` (private_key_jwt), for providers that
    fetch them from this client's ``jwks_uri``; 404 when no provider is configured with keys."""
    keys, seen = [], set()
    for client in request.services.providers.values():
        for key in client.client_keys.public_jwks():
            if key["kid"] not in seen:
                seen.add(key["kid"])
                keys.append(key)
    if not keys:
        return json_error(404, ErrorCode.HTTP_ERROR, "No client keys are configured.")
    response = Response(json={"keys": keys}, content_type="application/jwk-set+json")
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@view_config(
    route_name="signed_out",
    request_method="GET",
    permission=NO_PERMISSION_REQUIRED,
    renderer="myapp:templates/signed_out.jinja2",
)
def signed_out(request):
    # Why: what the server knows first (this request met the ended cookie, or the one before it
    # did and left a note for this page), else the address's reason (another tab's word).
    cookie = request.services.session_cookie
    met = tell_signed_out_reason(request)  # meets (and clears) an ended cookie, and says why here
    noted = cookie.ended_note_of(request)
    if noted is not None:
        request.response.headerlist.append(cookie.clear_ended_note())
    server_known = [r for r in (met, noted) if r in SIGNED_OUT_MESSAGES]
    known = server_known or [r for r in (request.GET.get("reason", ""),) if r in SIGNED_OUT_MESSAGES]
    message = SIGNED_OUT_MESSAGES[known[0]] if known else "Your session has ended."
    next_path = safe_next_path(request.GET.get("next"))
    # Other tabs still showing a signed-in page are told (app.js), with the reason only when the
    # server knows it: anyone may write one into this page's address.
    login_url, login_label = _sign_in_again(
        request, next_path, account_disabled=bool(known) and known[0] == EndReason.ACCOUNT_DISABLED
    )
    return {
        "message": message, "login_url": login_url, "login_label": login_label,
        "session_gone": server_known[0] if server_known else "",
    }


@view_config(
    route_name="auth_user",
    request_method="GET",
    permission=Permission.USE_API,
    json_csrf=True,
    renderer="json",
)
def current_user(request):
    """Who is signed in, for browser code. Never a token: those stay on the server."""
    identity = request.identity
    return {
        "sub": identity.subject,
        "name": identity.name,
        "email": identity.email,
        "groups": list(identity.groups),
        "logout_url": request.services.settings.public_url + request.route_path("logout"),
        "csrf_token": identity.csrf_token,
        "session": {
            "expires_at": identity.expires_at.isoformat(),
            "idle_expires_at": identity.idle_expires_at.isoformat(),
        },
    }
