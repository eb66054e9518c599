"""The development provider's endpoints under /_dev/idp: thin views over :class:`Provider`."""

import functools
import time
from urllib.parse import urlencode

from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749 import OAuth2Error
from pyramid.httpexceptions import HTTPFound, HTTPNotFound
from pyramid.security import NO_PERMISSION_REQUIRED

from myapp.devstack.dpop import BINDING, ProofRefused, challenge, proofs_of
from myapp.devstack.models import user_name_problem
from myapp.devstack.provider import (
    PAR_LIFETIME,
    PROVIDERS,
    SECOND_FACTOR_CODE,
    SIGN_IN_LIFETIME,
    AccessTokenRefused,
    wants_second_factor,
)
from myapp.devstack.server import ACCESS_TOKEN_TYPE, AUDIENCE, TOKEN_EXCHANGE
from myapp.devstack.web import (
    CSRF_FIELD,
    SESSION_COOKIE,
    csrf_ok,
    csrf_token,
    devstack_view,
    json_response,
    method_not_allowed,
    presented_token,
    render,
    set_provider_cookie,
)

# Each issuer lives under its own path: /_dev/idp, and /_dev/idp2 when a second one is configured.
_BASE = "/_dev/{idp:idp2?}"
ROUTES = {
    "devstack.idp.root": _BASE,
    "devstack.idp.home": _BASE + "/",
    "devstack.idp.discovery": _BASE + "/.well-known/openid-configuration",
    "devstack.idp.jwks": _BASE + "/jwks",
    "devstack.idp.authorize": _BASE + "/authorize",
    "devstack.idp.sign_in": _BASE + "/login",
    "devstack.idp.token": _BASE + "/token",
    "devstack.idp.par": _BASE + "/par",
    "devstack.idp.userinfo": _BASE + "/userinfo",
    "devstack.idp.revoke": _BASE + "/revoke",
    "devstack.idp.logout": _BASE + "/logout",
    "devstack.idp.stats": _BASE + "/stats",
}
# Fields of the provider's own forms, never part of the authorization request they carry.
FORM_FIELDS = frozenset({"name", "action", "otp", CSRF_FIELD, "pushed_seal"})
# What a pushed request keeps: never the client's credentials.
CREDENTIALS = frozenset({"client_secret", "client_assertion", "client_assertion_type"})


def includeme(config):
    for name, pattern in ROUTES.items():
        config.add_route(name, pattern)
        # Views with a request_method win; anything else reaches this one.
        config.add_view(method_not_allowed, route_name=name, require_csrf=False, permission=NO_PERMISSION_REQUIRED)


def provider_of(request):
    """The issuer this request is for (404 for /_dev/idp2 when no second issuer is configured)."""
    provider = request.registry[PROVIDERS].get(request.matchdict.get("idp", "idp"))
    if provider is None:
        raise HTTPNotFound()
    return provider


def route(request, name: str) -> str:
    return request.route_path(name, idp=request.matchdict.get("idp", "idp"))


def browser_session(request):
    return provider_of(request).store.find_session(request.cookies.get(SESSION_COOKIE))


def carried_params(payload):
    """The authorization or logout request, as hidden fields for the next form."""
    return [(key, value) for key, values in payload.datalist.items() if key not in FORM_FIELDS for value in values]


@devstack_view(route_name="devstack.idp.root")
def root(request):
    return HTTPFound(location=route(request, "devstack.idp.home"))


@devstack_view(route_name="devstack.idp.home", request_method="GET")
def home(request):
    provider = provider_of(request)
    return render(
        request,
        "home.jinja2",
        session=browser_session(request),
        csrf_token=csrf_token(request, secure=provider.settings.secure_cookies),
        metadata=provider.metadata(),
    )


@devstack_view(route_name="devstack.idp.discovery", request_method="GET")
def discovery(request):
    return json_response(provider_of(request).metadata())


@devstack_view(route_name="devstack.idp.jwks", request_method="GET")
def jwks(request):
    return json_response(provider_of(request).signer.jwks())


@devstack_view(route_name="devstack.idp.stats", request_method="GET")
def stats(request):
    return json_response(provider_of(request).store.stats.snapshot())


@devstack_view(route_name="devstack.idp.authorize", request_method=("GET", "POST"))
def authorize(request):
    """The authorization endpoint: a code straight away when the browser is signed in here and
    nothing asks otherwise, else the sign-in page."""
    provider = provider_of(request)
    unpacked = unpack_pushed_request(request, provider)
    if unpacked is not None:
        return unpacked
    session = browser_session(request)
    login = provider.login_for(session, request.params.get("max_age"), request.params.get("acr_values"))
    try:
        grant = provider.server.get_consent_grant(request, end_user=login)
    except OAuth2Error as error:
        return authorization_error(request, error)
    if grant.prompt:
        name = session.user.subject if session else request.params.get("login_hint", "")
        return sign_in_page(request, grant, name=name)
    return provider.server.create_authorization_response(grant.request, grant_user=login, grant=grant)


def unpack_pushed_request(request, provider):
    """RFC 9126: a request_uri stands for the request pushed before (single use); without one, a
    provider that requires pushed requests refuses. None when the request may go on."""
    request_uri = request.params.get("request_uri")
    if request_uri is None:
        return refused_unpushed(request) if provider.settings.require_par else None
    params = provider.pulled(request_uri, request.params.get("client_id"))
    if params is None:
        return render(request, "error.jinja2", status=400, title="This sign-in request was refused",
                      message="invalid_request_uri: the request_uri is unknown, used or expired.")
    # From here on the request is the pushed one, as if the browser had carried its parameters.
    request.query_string = urlencode(params)
    if request.method == "POST":
        request.method = "GET"
    return None


def refused_unpushed(request):
    return render(request, "error.jinja2", status=400, title="This sign-in request was refused",
                  message="invalid_request: this provider requires pushed authorization requests.")


def form_params(request) -> list | None:
    """The authorization request a sign-in form carries back: its fields but the form's own; None
    when one is not text (a file, posted as multipart), which no sign-in page carries."""
    params = [(key, value) for key, value in request.POST.items() if key not in FORM_FIELDS]
    return params if all(isinstance(value, str) for _, value in params) else None


@devstack_view(route_name="devstack.idp.par", request_method="POST")
def pushed_authorization_request(request):
    """RFC 9126: the client pushes its authorization request; 201 with a request_uri."""
    provider = provider_of(request)
    if not provider.client_authenticated(request):
        return token_error("invalid_client", "Client authentication failed.", 401)
    params = [(k, v) for k, v in request.POST.items() if k not in CREDENTIALS]
    if len([k for k, _ in params if k != "resource"]) != len({k for k, _ in params if k != "resource"}):
        return token_error("invalid_request", "A parameter is given twice.")
    if "request_uri" in dict(params) or dict(params).get("client_id") != provider.client.client_id:
        return token_error("invalid_request", "A pushed request names this client and carries no request_uri.")
    if dict(params).get("redirect_uri") not in provider.client.redirect_uris:
        return token_error("invalid_request", "The redirect_uri is not registered for this client.")
    return json_response({"request_uri": provider.push(params), "expires_in": PAR_LIFETIME}, status=201)


@devstack_view(route_name="devstack.idp.sign_in", request_method="POST")
def sign_in(request):
    """The sign-in form, which carries the authorization request; it is validated again here.
    Cancel sends the person back to the client with ``error=access_denied``."""
    provider = provider_of(request)
    seal, sealed_until = request.POST.get("pushed_seal"), None
    if provider.settings.require_par:
        # Only a request pushed first (its sign-in page sealed what it carries), once, for a while:
        # the form is no way around PAR.
        sealed_until = provider.sealed(form_params(request), seal)
        if sealed_until is None:
            return refused_unpushed(request)
    try:
        grant = provider.server.get_consent_grant(request, end_user=None)
    except OAuth2Error as error:
        return authorization_error(request, error)
    name = request.POST.get("name", "").strip()
    again = functools.partial(sign_in_page, request, grant, name=name, sealed_until=sealed_until)
    if not csrf_ok(request):
        return again(problem="This form has expired. Please sign in again.")
    if request.POST.get("action") == "cancel":
        provider.spend(seal, sealed_until)
        # Authlib answers access_denied to the client, with state and iss.
        return provider.server.create_authorization_response(grant.request, grant_user=None, grant=grant)
    problem = user_name_problem(name)
    if problem is not None:
        return again(problem=problem)
    second_factor = wants_second_factor(request.POST.get("acr_values"))
    if second_factor and request.POST.get("otp", "").strip() != SECOND_FACTOR_CODE:
        return again(problem="That code is not right. Type the code from your authenticator.")
    session_key, login = provider.sign_in(request.cookies.get(SESSION_COOKIE), name, second_factor=second_factor)
    provider.spend(seal, sealed_until)
    response = provider.server.create_authorization_response(grant.request, grant_user=login, grant=grant)
    set_provider_cookie(response, SESSION_COOKIE, session_key, secure=provider.settings.secure_cookies, path=provider.settings.path)
    return response


def sign_in_page(request, grant, *, name="", problem=None, sealed_until=None):
    provider = provider_of(request)
    params = carried_params(grant.request.payload)
    return render(
        request,
        "sign_in.jinja2",
        status=400 if problem else 200,
        form_action=provider.form_action_origins,
        action=route(request, "devstack.idp.sign_in"),
        params=params,
        # Reached only with a pushed request when they are required (unpack_pushed_request, or its
        # seal checked on the way in, whose time it keeps): the seal says so to the form's next post.
        pushed_seal=provider.seal(params, sealed_until or int(time.time()) + SIGN_IN_LIFETIME)
        if provider.settings.require_par else None,
        client_id=grant.request.client.get_client_id(),
        name=name,
        problem=problem,
        second_factor=wants_second_factor(grant.request.payload.data.get("acr_values")),
        second_factor_code=SECOND_FACTOR_CODE,
        csrf_token=csrf_token(request, secure=provider.settings.secure_cookies),
    )


def authorization_error(request, error):
    """Redirect the error to the client when its redirect_uri is proven (RFC 6749 4.1.2.1),
    else tell the person in the browser."""
    if error.redirect_uri:
        return provider_of(request).server.authorization_error_response(request, error)
    return render(
        request,
        "error.jinja2",
        status=400,
        title="This sign-in request was refused",
        message=f"{error.error}: {error.get_error_description()}",
    )


@devstack_view(route_name="devstack.idp.token", request_method="POST")
def token(request):
    provider = provider_of(request)
    try:
        jkt = token_request_binding(request, provider)
    except ProofRefused as e:
        return with_nonce(token_error(e.error, e.reason), provider)
    with BINDING.using(jkt):
        if request.POST.get("grant_type") == TOKEN_EXCHANGE:
            return with_nonce(token_exchange(request, provider), provider)
        targets = requested_audiences(request, provider)
        if isinstance(targets, str):
            return token_error("invalid_target", targets)
        with AUDIENCE.using(targets):
            return with_nonce(provider.server.create_token_response(request), provider)


def token_request_binding(request, provider) -> str | None:
    """RFC 9449 section 5: the key a token request's DPoP proof proves, whose thumbprint the
    access token will carry (None: no proof, or a provider that does not bind)."""
    proofs = proofs_of(request.headers)
    if not proofs or provider.settings.dpop == "off":
        return None
    jkt = provider.proofs.check(proofs, method="POST", url=provider.endpoint("token"))
    return None if provider.settings.dpop == "ignore" else jkt


def with_nonce(response, provider):
    """Every answer of a server that demands nonces tells the current one (RFC 9449 section 8.2)."""
    response.headers.update(provider.proofs.nonce_header())
    return response


def requested_audiences(request, provider) -> tuple[str, ...] | str | None:
    """RFC 8707 ``resource`` (one or more) or Auth0-style ``audience``: the APIs the access token
    is for; None for the default. A string says why the target is refused."""
    targets = tuple(request.POST.getall("resource")) or tuple(request.POST.getall("audience"))
    if not targets:
        return None
    unknown = [t for t in targets if t not in provider.settings.audiences]
    if unknown:
        return f"This provider issues no tokens for {unknown[0][:200]!r}."
    return targets


def token_error(error: str, description: str, status: int = 400):
    return json_response({"error": error, "error_description": description}, status=status)


def token_exchange(request, provider):
    """RFC 8693: an access token this issuer minted, traded for one with another audience."""
    if not provider.client_authenticated(request):
        return token_error("invalid_client", "Client authentication failed.", 401)
    if request.POST.get("subject_token_type") != ACCESS_TOKEN_TYPE or not request.POST.get("subject_token"):
        return token_error("invalid_request", "A subject_token of type access_token is required.")
    targets = requested_audiences(request, provider)
    if isinstance(targets, str):
        return token_error("invalid_target", targets)
    if not targets:
        return token_error("invalid_target", "Name the API with resource or audience.")
    exchanged = provider.exchange(request.POST["subject_token"], targets, request.POST.get("scope"))
    if exchanged is None:
        return token_error("invalid_grant", "The subject token is unknown, expired, revoked or from another issuer.")
    return json_response(exchanged)


@devstack_view(route_name="devstack.idp.revoke", request_method="POST")
def revoke(request):
    return provider_of(request).server.create_endpoint_response("revocation", request)


@devstack_view(route_name="devstack.idp.userinfo", request_method=("GET", "POST"))
def userinfo(request):
    """OpenID Connect Core 5.3: a Bearer token bound to no key, or a DPoP-bound one with a proof by
    its key (RFC 9449 section 7); every answer carries the current nonce when it demands one."""
    provider = provider_of(request)
    return with_nonce(userinfo_response(request, provider), provider)


def userinfo_response(request, provider):
    scheme, access_token = presented_token(request)
    jkt = None
    if scheme == "dpop" and provider.settings.dpop != "off":
        try:
            jkt = provider.proofs.check(
                proofs_of(request.headers), method=request.method, url=provider.endpoint("userinfo"),
                access_token=access_token,
            )
        except ProofRefused as e:
            return json_response(
                {"error": e.error, "error_description": e.reason}, status=401, headers={"WWW-Authenticate": challenge(e)}
            )
    elif scheme != "bearer":
        access_token = None
    if access_token is None:
        return json_response(
            {"error": "invalid_request", "error_description": "Send the access token as a Bearer token."},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="devstack"'},
        )
    try:
        claims = provider.userinfo(access_token, jkt=jkt)
    except AccessTokenRefused as e:
        scheme_name = "DPoP" if jkt is not None else "Bearer"
        authenticate = f'{scheme_name} realm="devstack", error="{e.error}", error_description="{e.description}"'
        return json_response(
            {"error": e.error, "error_description": e.description},
            status=403 if e.error == "insufficient_scope" else 401,
            headers={"WWW-Authenticate": authenticate},
        )
    return json_response(claims)


@devstack_view(route_name="devstack.idp.logout", request_method=("GET", "POST"))
def end_session(request):
    """RP-initiated logout, and the landing page's sign-out button.

    With a valid id_token_hint the sessions end at once; without one the person confirms first
    (RP-Initiated Logout 1.0, section 6). Either way each client is told over the back channel.
    """
    provider = provider_of(request)
    try:
        end_request = provider.server.validate_endpoint_request("end_session", request)
    except OAuth2Error as error:
        return render(
            request,
            "error.jinja2",
            status=400,
            title="This sign-out request was refused",
            message=error.get_error_description() or error.error,
        )
    confirmed = request.method == "POST" and csrf_ok(request)
    if end_request.needs_confirmation and not confirmed:
        return render(
            request,
            "sign_out.jinja2",
            action=route(request, "devstack.idp.logout"),
            params=carried_params(end_request.request.payload),
            csrf_token=csrf_token(request, secure=provider.settings.secure_cookies),
        )

    session = browser_session(request)
    ending = provider.sessions_to_end(session, end_request.id_token_claims)
    provider.sign_out(ending)
    if end_request.redirect_uri:
        response = HTTPFound(location=end_request.redirect_uri)
    else:
        response = render(request, "signed_out.jinja2", return_to=_return_link(end_request))
    if session is not None and session in ending:
        set_provider_cookie(response, SESSION_COOKIE, None, secure=provider.settings.secure_cookies, path=provider.settings.path)
    return response


def _return_link(end_request):
    """Without an id_token_hint the provider does not redirect by itself; it offers the
    registered post_logout_redirect_uri as a link instead (RP-Initiated Logout 1.0, section 3)."""
    data = end_request.request.payload.data
    uri = data.get("post_logout_redirect_uri")
    if not uri:
        return None
    state = data.get("state")
    return add_params_to_uri(uri, {"state": state}) if state else uri
