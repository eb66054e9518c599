"""Authlib's framework-agnostic AuthorizationServer, integrated with Pyramid requests and responses."""

import contextlib
import contextvars
import json
import secrets
import time
from collections import defaultdict

from authlib.oauth2 import rfc9207
from authlib.oauth2.rfc6749 import AuthorizationServer as _AuthorizationServer
from authlib.oauth2.rfc6749 import JsonPayload, JsonRequest, OAuth2Payload, OAuth2Request
from pyramid.response import Response

from myapp.devstack.dpop import BINDING
from myapp.devstack.grants import (
    AuthorizationCodeGrant,
    EndSessionEndpoint,
    OpenIDCode,
    OpenIDRefresh,
    RefreshTokenGrant,
    RevocationEndpoint,
    RotatingRefreshTokenGrant,
    S256CodeChallenge,
)
from myapp.devstack.keys import TokenSigner
from myapp.devstack.models import SCOPES, Client
from myapp.devstack.settings import ProviderSettings
from myapp.devstack.storage import ProviderStore, Stat


class PyramidOAuth2Payload(OAuth2Payload):
    def __init__(self, params):
        self._data = {}
        self._datalist = defaultdict(list)
        for key, value in params.items():
            self._data.setdefault(key, value)
            self._datalist[key].append(value)

    @property
    def data(self):
        return self._data

    @property
    def datalist(self):
        return self._datalist


class PyramidOAuth2Request(OAuth2Request):
    """Parameters come from the query string of a GET and from the form body of a POST
    (OpenID Connect Core 3.1.2.1 allows both at the authorization endpoint)."""

    def __init__(self, request):
        super().__init__(method=request.method, uri=request.url, headers=request.headers)
        self._request = request
        self.payload = PyramidOAuth2Payload(request.GET if request.method == "GET" else request.POST)

    @property
    def args(self):
        return self._request.GET

    @property
    def form(self):
        return self._request.POST


class PyramidJsonPayload(JsonPayload):
    def __init__(self, request):
        self._request = request

    @property
    def data(self):
        return self._request.json_body


class PyramidJsonRequest(JsonRequest):
    def __init__(self, request):
        super().__init__(request.method, request.url, request.headers)
        self.payload = PyramidJsonPayload(request)


class IssuerParameter(rfc9207.IssuerParameter):
    def __init__(self, issuer: str):
        self.issuer = issuer

    def get_issuer(self) -> str:
        return self.issuer


TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


class _Audience:
    """The audiences the token request being answered asked for (RFC 8707 resource, or audience):
    Authlib's token generator is not given the request, so the token view sets them here."""

    def __init__(self):
        self._value = contextvars.ContextVar("devstack_audience", default=None)

    @contextlib.contextmanager
    def using(self, audiences: tuple[str, ...] | None):
        token = self._value.set(audiences)
        try:
            yield
        finally:
            self._value.reset(token)

    def get(self) -> tuple[str, ...] | None:
        return self._value.get()


AUDIENCE = _Audience()


class TokenIssuer:
    """Authlib's token generator: RFC 9068 JWT access tokens for the demo API, opaque refresh tokens.

    ``user`` is the :class:`~myapp.devstack.models.TokenFamily` of the grant. A refresh token is
    issued only when the login asked for ``offline_access``.
    """

    def __init__(self, *, issuer: str, audience: str, signer: TokenSigner, lifetime: int):
        self.issuer = issuer
        self.audience = audience
        self.signer = signer
        self.lifetime = lifetime

    def __call__(self, grant_type, client, user=None, scope=None, expires_in=None, include_refresh_token=True):
        family = user
        scope = client.get_allowed_scope(scope)
        lifetime = expires_in or self.lifetime
        now = int(time.time())
        requested = AUDIENCE.get()
        audience = (requested[0] if len(requested) == 1 else list(requested)) if requested else self.audience
        jkt = BINDING.get()
        claims = {
            "iss": self.issuer,
            "sub": family.login.user.subject,
            "aud": audience,
            "exp": now + lifetime,
            "iat": now,
            "jti": secrets.token_urlsafe(16),
            "scope": scope,
            "client_id": client.get_client_id(),
            "sid": family.login.sid,
            "auth_time": family.login.auth_time,
            "acr": family.login.acr,
        }
        if jkt is not None:
            claims["cnf"] = {"jkt": jkt}  # RFC 9449 section 6.1
        token = {
            "token_type": "DPoP" if jkt is not None else "Bearer",
            "access_token": self.signer.sign(claims, typ="at+jwt"),
            "expires_in": lifetime,
            "scope": scope,
        }
        if include_refresh_token and "offline_access" in family.scope.split():
            token["refresh_token"] = secrets.token_urlsafe(32)
        return token


class AuthorizationServer(_AuthorizationServer):
    """The development provider's Authlib server: grants, PKCE, OpenID, RFC 9207, revocation."""

    def __init__(self, *, settings: ProviderSettings, store: ProviderStore, signer: TokenSigner, client: Client):
        super().__init__(scopes_supported=list(SCOPES))
        self.settings = settings
        self.issuer = settings.issuer
        self.store = store
        self.signer = signer
        self.clients = {client.client_id: client}
        self.register_token_generator(
            "default",
            TokenIssuer(
                issuer=settings.issuer,
                audience=settings.api_audience,
                signer=signer,
                lifetime=settings.access_token_lifetime,
            ),
        )
        self.register_extension(IssuerParameter(settings.issuer))
        self.register_grant(AuthorizationCodeGrant, [S256CodeChallenge(required=True), OpenIDCode(self)])
        refresh_grant = RotatingRefreshTokenGrant if settings.rotate_refresh_tokens else RefreshTokenGrant
        self.register_grant(refresh_grant, [OpenIDRefresh(self)])
        self.register_endpoint(RevocationEndpoint)
        self.register_endpoint(EndSessionEndpoint)

    def query_client(self, client_id):
        return self.clients.get(client_id)

    def save_token(self, token, request):
        self.store.save_tokens(request.user, token, self.settings.refresh_token_lifetime, jkt=BINDING.get())
        grant_type = request.payload.grant_type
        if grant_type == "authorization_code":
            self.store.stats.increment(Stat.AUTHORIZATION_CODE_GRANTS)
        elif grant_type == "refresh_token":
            self.store.stats.increment(Stat.REFRESH_GRANTS)

    def send_signal(self, name, *args, **kwargs):
        if name == "after_revoke_token":
            self.store.stats.increment(Stat.REVOCATIONS)

    def create_oauth2_request(self, request):
        if isinstance(request, OAuth2Request):
            return request
        return PyramidOAuth2Request(request)

    def create_json_request(self, request):
        return PyramidJsonRequest(request)

    def handle_response(self, status_code, payload, headers):
        response = Response(status=status_code)
        for name, value in headers:
            response.headers[name] = value
        if isinstance(payload, dict):
            response.body = json.dumps(payload).encode()
        elif payload:
            response.text = payload
        return response

    def authorization_error_response(self, request, error):
        """An error redirect from the authorization endpoint, with ``iss`` like every other one."""
        response = self.handle_error_response(request, error)
        self.execute_hook("after_create_authorization_response", response)
        return response
