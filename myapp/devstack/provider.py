"""The development OpenID provider: its key, memory, Authlib server and back-channel, wired once."""

import base64
import hmac
import logging
import re
import secrets
import threading
import time
from urllib.parse import unquote_plus

from myapp.devstack.backchannel import BackchannelNotifier
from myapp.devstack.client_auth import ClientAssertions, load_client_keys
from myapp.devstack.dpop import ALGORITHMS as DPOP_ALGORITHMS
from myapp.devstack.dpop import BINDING, ProofChecker, ServerNonces
from myapp.devstack.keys import ALGORITHM, TokenSigner, load_or_create_signing_key
from myapp.devstack.models import (
    CLIENT_AUTH_METHODS,
    GRANT_TYPES,
    MFA_ACR,
    PASSWORD_ACR,
    SCOPES,
    Client,
    Login,
    ProviderSession,
    User,
)
from myapp.devstack.server import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE, AuthorizationServer
from myapp.devstack.settings import ProviderSettings, origin_of
from myapp.devstack.storage import ProviderStore, Stat, new_login

log = logging.getLogger(__name__)

#: The registry key of the running :class:`Provider` objects, by path segment ("idp", "idp2").
PROVIDERS = "myapp.devstack.providers"

MAX_AGE = re.compile(r"[0-9]{1,10}")
CLAIMS = tuple("sub iss aud exp iat auth_time nonce sid at_hash name email email_verified groups".split())


# The code the sign-in page's simulated second factor accepts (a development stack, not a secret).
SECOND_FACTOR_CODE = "123456"
PAR_LIFETIME = 60
# How long the sign-in page of a pushed request may be posted (require_par): its seal says until when.
SIGN_IN_LIFETIME = 600


def wants_second_factor(acr_values: str | None) -> bool:
    return MFA_ACR in (acr_values or "").split()


class AccessTokenRefused(Exception):
    """The userinfo endpoint refuses the bearer token; ``error`` is the RFC 6750 error code."""

    def __init__(self, error: str, description: str):
        super().__init__(description)
        self.error = error
        self.description = description


def basic_credentials(header: str) -> tuple[str, str] | None:
    """The client id and secret of an ``Authorization: Basic`` header, read as RFC 6749 section
    2.3.1 has them written: form-urlencoded, then base64 (a space comes as ``+``)."""
    try:
        pair = base64.b64decode(header.removeprefix("Basic "), validate=True).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None
    client_id, colon, secret = pair.partition(":")
    return (unquote_plus(client_id), unquote_plus(secret)) if colon else None


def authenticate_client_secret_basic(query_client, request):
    """Authlib's hook for ``client_secret_basic`` at the token and revocation endpoints, reading the
    credentials as :func:`basic_credentials` does (Authlib's own takes a ``+`` for a plus, so a
    secret with a space was refused there while ``/par`` took it)."""
    header = request.headers.get("Authorization", "")
    credentials = basic_credentials(header) if header.startswith("Basic ") else None
    if credentials is None:
        return None
    client = query_client(credentials[0])
    if client is not None and client.check_client_secret(credentials[1]):
        return client
    return None


class Provider:
    def __init__(self, settings: ProviderSettings, *, nonces: ServerNonces | None = None):
        self.settings = settings
        self.issuer = settings.issuer
        # RFC 9449: the proofs its token and userinfo endpoints take (with a nonce when it demands one).
        self.proofs = ProofChecker.of(demands_nonce=settings.dpop_nonce, nonces=nonces)
        self.signer = TokenSigner(load_or_create_signing_key(settings.key_file))
        self.store = ProviderStore(reuse_interval=settings.refresh_token_reuse_interval)
        self.client = Client.from_registration(settings.client)
        self.server = AuthorizationServer(settings=settings, store=self.store, signer=self.signer, client=self.client)
        self.assertions = ClientAssertions(
            client_id=self.client.client_id,
            keys=load_client_keys(settings.client_keys),
            audiences=(self.issuer, self.endpoint("token"), self.endpoint("par"), self.endpoint("revoke")),
        )
        self.server.register_client_auth_method("private_key_jwt", self.assertions.authenticate)
        self.server.register_client_auth_method("client_secret_basic", authenticate_client_secret_basic)
        self._pushed: dict[str, tuple[float, list]] = {}
        self._pushed_lock = threading.Lock()
        # Seals the pushed requests its sign-in form carries (require_par): this process's alone,
        # each good until it expires or its form signs in or cancels (spent, kept until it expires).
        self._seal_key = secrets.token_bytes(32)
        self._spent_seals: dict[str, float] = {}
        self.notifier = BackchannelNotifier(
            issuer=self.issuer, signer=self.signer, clients=self.server.clients, stats=self.store.stats
        )
        self.form_action_origins = sorted(
            {origin_of(uri) for uri in (*self.client.redirect_uris, *self.client.post_logout_redirect_uris)}
        )

    def endpoint(self, name: str) -> str:
        return f"{self.issuer}/{name}"

    def metadata(self) -> dict:
        """OpenID Provider Metadata (OpenID Connect Discovery 1.0, section 3)."""
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.endpoint("authorize"),
            "token_endpoint": self.endpoint("token"),
            "userinfo_endpoint": self.endpoint("userinfo"),
            "jwks_uri": self.endpoint("jwks"),
            "revocation_endpoint": self.endpoint("revoke"),
            "end_session_endpoint": self.endpoint("logout"),
            "scopes_supported": list(SCOPES),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": [*GRANT_TYPES, TOKEN_EXCHANGE],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
            "revocation_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
            "claims_supported": [*CLAIMS, "acr", "amr"],
            "acr_values_supported": [PASSWORD_ACR, MFA_ACR],
            "pushed_authorization_request_endpoint": self.endpoint("par"),
            "require_pushed_authorization_requests": self.settings.require_par,
            "token_endpoint_auth_signing_alg_values_supported": ["PS256", "RS256", "ES256"],
            "prompt_values_supported": ["none", "login", "consent", "select_account"],
            "claims_parameter_supported": False,
            "request_parameter_supported": False,
            "request_uri_parameter_supported": False,  # PAR's request_uri only (RFC 9126)
            "backchannel_logout_supported": True,
            "backchannel_logout_session_supported": True,
            "authorization_response_iss_parameter_supported": True,
            **({"dpop_signing_alg_values_supported": list(DPOP_ALGORITHMS)} if self.settings.dpop != "off" else {}),
        }

    def login_for(self, session: ProviderSession | None, max_age: str | None, acr_values: str | None = None) -> Login | None:
        """The browser's current login, unless it is older than ``max_age`` seconds (Core 3.1.2.1)
        or weaker than the second factor ``acr_values`` asks for."""
        if session is None:
            return None
        if max_age is not None and MAX_AGE.fullmatch(max_age) and time.time() - session.auth_time > int(max_age):
            return None
        if wants_second_factor(acr_values) and session.acr != MFA_ACR:
            return None
        return new_login(session)

    def sign_in(self, session_key: str | None, name: str, *, second_factor: bool = False) -> tuple[str, Login]:
        """Sign ``name`` in, in the browser holding ``session_key``; returns its cookie value and login.

        Signing in as someone else ends the browser's previous session, with back-channel logouts.
        """
        key, session, ended = self.store.sign_in(session_key, User(name), second_factor=second_factor)
        log.info("devstack provider: %s signed in", name)
        if ended is not None:
            self.notifier.notify(ended)
        return key, new_login(session)

    def sessions_to_end(self, browser_session: ProviderSession | None, hint: dict | None) -> list[ProviderSession]:
        """The sessions an RP-initiated logout ends: the one named by the ID token hint's ``sid``,
        and the browser's own unless the hint names another user."""
        sessions = []
        if hint and hint.get("sid"):
            hinted = self.store.find_session_by_sid(hint["sid"])
            if hinted is not None:
                sessions.append(hinted)
        if browser_session is not None and browser_session not in sessions:
            if not hint or hint.get("sub") == browser_session.user.subject:
                sessions.append(browser_session)
        return sessions

    def sign_out(self, sessions: list[ProviderSession]) -> None:
        for session in sessions:
            if self.store.end_session(session):
                log.info("devstack provider: %s signed out", session.user.subject)
                self.notifier.notify(session)

    def client_authenticated(self, request) -> bool:
        """The client's assertion (private_key_jwt), or its secret by Basic credentials
        (form-urlencoded first, RFC 6749 2.3.1) or in the form."""
        if request.POST.get("client_assertion_type"):
            return self.assertions.verify(request.POST)
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            credentials = basic_credentials(header)
            if credentials is None:
                return False
            client_id, secret = credentials
        else:
            client_id, secret = request.POST.get("client_id", ""), request.POST.get("client_secret", "")
        return client_id == self.client.client_id and hmac.compare_digest(
            secret.encode("utf-8"), self.client.client_secret.encode("utf-8")
        )

    def exchange(self, subject_token: str, audiences: tuple[str, ...], scope: str | None) -> dict | None:
        """RFC 8693: a new access token for ``audiences``, for the person of an active access token
        this issuer minted; None when the subject token is not one."""
        record = self.store.active_access_token(subject_token)
        if record is None:
            return None
        family = record.family
        granted = " ".join(s for s in (scope or record.scope).split() if s in record.scope.split()) or record.scope
        now, lifetime = int(time.time()), self.settings.access_token_lifetime
        claims = {
            "iss": self.issuer, "sub": family.login.user.subject,
            "aud": audiences[0] if len(audiences) == 1 else list(audiences),
            "exp": now + lifetime, "iat": now, "jti": secrets.token_urlsafe(16), "scope": granted,
            "client_id": self.client.client_id, "sid": family.login.sid, "auth_time": family.login.auth_time,
            "act": {"sub": self.client.client_id},
        }
        jkt = BINDING.get()
        if jkt is not None:
            claims["cnf"] = {"jkt": jkt}
        self.store.stats.increment(Stat.TOKEN_EXCHANGES)
        exchanged = {
            "access_token": self.signer.sign(claims, typ="at+jwt"),
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "DPoP" if jkt is not None else "Bearer",
            "expires_in": lifetime,
            "scope": granted,
        }
        self.store.save_exchanged(record, exchanged, jkt=jkt)  # known, so that it can be revoked
        return exchanged

    def push(self, params: list) -> str:
        """RFC 9126: keep an authorization request for a minute; its single-use request_uri."""
        request_uri = "urn:ietf:params:oauth:request_uri:" + secrets.token_urlsafe(24)
        now = time.time()
        with self._pushed_lock:
            self._pushed = {k: v for k, v in self._pushed.items() if v[0] > now}
            self._pushed[request_uri] = (now + PAR_LIFETIME, params)
        return request_uri

    def seal(self, params: list, expires: int) -> str:
        """A seal over an authorization request that was pushed (its fields as a form carries them,
        in any order), good until ``expires`` (a Unix time): the sign-in form carries it beside the
        request, so that a provider that requires pushed requests takes from its form only a
        request pushed first, once, and not for ever."""
        encoded = "&".join(f"{len(k)}:{k}={len(v)}:{v}" for k, v in sorted(params))
        mac = hmac.new(self._seal_key, f"{expires}|{encoded}".encode("utf-8", "surrogatepass"), "sha256").hexdigest()
        return f"{expires}.{mac}"

    def sealed(self, params: list | None, seal: str | None) -> int | None:
        """The seal's expiry when it is this process's seal over ``params``, live and not spent."""
        if params is None or seal is None or not seal.isascii():
            return None
        expires = seal.partition(".")[0]
        if not (expires.isdigit() and len(expires) <= 12) or int(expires) <= time.time():
            return None
        if not hmac.compare_digest(self.seal(params, int(expires)), seal):
            return None
        with self._pushed_lock:
            return None if seal in self._spent_seals else int(expires)

    def spend(self, seal: str | None, expires: int | None) -> None:
        """A sealed form answered to the client (a code, or access_denied): its seal is good no
        more. Nothing to spend (``expires`` None) where no seal was asked for."""
        if expires is None:
            return
        now = time.time()
        with self._pushed_lock:
            self._spent_seals = {k: v for k, v in self._spent_seals.items() if v > now}
            self._spent_seals[seal] = expires

    def pulled(self, request_uri: str, client_id: str | None) -> list | None:
        """The pushed request (spent), when it is live and the client named is the one that pushed it."""
        with self._pushed_lock:
            expires, params = self._pushed.pop(request_uri, (0.0, None))
        if params is None or expires <= time.time() or dict(params).get("client_id") != client_id:
            return None
        return params

    def userinfo(self, access_token: str, *, jkt: str | None = None) -> dict:
        """The claims for an access token; ``jkt`` is the key of the DPoP proof it came with (None:
        sent as Bearer). A bound token is accepted only with its own key's proof."""
        record = self.store.active_access_token(access_token)
        if record is None:
            raise AccessTokenRefused("invalid_token", "The access token is unknown, expired or revoked.")
        if record.jkt != jkt:
            raise AccessTokenRefused(
                "invalid_token",
                "The access token is bound to a DPoP key; send it with DPoP and that key's proof."
                if record.jkt is not None else "The access token is not bound to a DPoP key; send it as Bearer.",
            )
        if "openid" not in record.scope.split():
            raise AccessTokenRefused("insufficient_scope", "The access token lacks the openid scope.")
        return record.family.login.user.claims(record.scope)
