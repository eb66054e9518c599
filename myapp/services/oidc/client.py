"""Everything myapp asks of one provider: the authorization URL, the token endpoint (code exchange,
refresh), revocation, userinfo and the end-session URL, through Authlib's client on the shared
HTTP pool; and the checks on the JWTs it sends (:class:`TokenValidator`)."""

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from enum import StrEnum
from urllib.parse import urlencode, urlsplit

import requests
from authlib.integrations.base_client import OAuthError
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from myapp import tracing
from myapp.services.dpop import DPoPKey, Nonces, challenge_error, choose_algorithm
from myapp.services.http import CutShort, HttpClient, HTTPFailure, NoTimeLeft, NoTimer, describe
from myapp.services.oidc.client_auth import (
    ClientKeys,
    assertion_audience,
    client_secret_basic,
    client_secret_post,
    private_key_jwt,
)
from myapp.services.oidc.errors import (
    DPoPNotBound,
    OIDCError,
    ProviderMisconfigured,
    ProviderResting,
    ProviderUnavailable,
    TokenRequestRefused,
    TokenResponseInvalid,
    error_code,
)
from myapp.services.oidc.jose import TokenValidator
from myapp.services.oidc.metadata import URI_CHARS, ProviderDocuments, ProviderMetadata
from myapp.services.tokenset import TokenSet
from myapp.settings import OIDCSettings

log = logging.getLogger(__name__)


# RFC 6750 section 2.1 (b64token), the characters an access token may have in a header.
TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# RFC 6749 appendix A: a refresh token is printable ASCII (VSCHAR).
VSCHARS = re.compile(r"[\x20-\x7e]+")
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
# How long a token endpoint that held a call until it timed out is left alone (TokenEndpointRest), in seconds.
TOKEN_ENDPOINT_REST = 5.0


def _parse_token_response(response: requests.Response) -> dict:
    """A token endpoint's JSON object. An OAuth error in it raises OAuthError; a server error, an
    answer that is not a JSON object, or one that is but comes with a status other than a success
    (and no OAuth error) raises requests' HTTPError, or ValueError when its status was a success."""
    if response.status_code >= 500:
        response.raise_for_status()
    try:
        token = response.json()
    except (ValueError, RecursionError):  # RecursionError: nested past Python's stack
        token = None
    if not isinstance(token, dict):
        response.raise_for_status()
        raise ValueError("not a JSON object")
    if "error" in token:
        raise OAuthError(error=str(token["error"]), description=token.get("error_description"))
    if not 200 <= response.status_code < 300:
        # RFC 6749 section 5.1: tokens come with 200 OK. A client error or a redirect without an
        # OAuth error in it is no token response, whatever it holds.
        raise requests.HTTPError(f"answered HTTP {response.status_code}", response=response)
    return token


def _asks_for_nonce(response: requests.Response) -> bool:
    """A token endpoint's RFC 9449 section 8 answer: 400 (or 401) ``use_dpop_nonce``."""
    if response.status_code not in (400, 401):
        return False
    try:
        document = response.json()
    except (ValueError, RecursionError):
        return False
    return isinstance(document, dict) and document.get("error") == "use_dpop_nonce"


class Revocation(StrEnum):
    """What became of a token sent to the provider's revocation endpoint."""

    REVOKED = "revoked"
    NOT_OFFERED = "not_offered"  # the provider has no revocation endpoint: nothing to do
    REFUSED = "refused"  # the provider will not revoke it (400): trying again will not help
    FAILED = "failed"  # unreachable, slow or failing: try again later


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class TokenEndpointRest:
    """Whether to ask a provider's token endpoint now, in this process: not for
    :data:`TOKEN_ENDPOINT_REST` seconds after it held a call until it timed out, then by one
    request at a time (the probe) until one is not held up so.

    Without it, each request whose token was due waited for a provider that did not answer, up to
    ``myapp.oidc.http_timeout``, each on a thread of the server's: a hung provider held every
    thread, and people of another provider, or whose tokens were fresh, waited behind them
    (helper-140: 0.01 s became 2.84 s). A failure that comes at once (a refused connection, a
    503) holds no thread, and asking again is how a recovery is seen soonest: no rest. A call not
    made (no time left under the refresh lock, discovery unavailable) says nothing either way."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic):
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._until = None  # when the rest ends (monotonic); None: ask freely
        self._probing = False  # a request after the rest is asking it now

    def resting(self) -> bool:
        """Whether a caller would be told not to ask now."""
        with self._lock:
            return self._until is not None and (self.monotonic() < self._until or self._probing)

    def ask(self) -> bool | None:
        """None: do not ask now. Else whether this caller is the probe, which must then end with
        :meth:`ended` (in a ``finally``), as every caller that asks does."""
        with self._lock:
            if self._until is None:
                return False
            if self.monotonic() < self._until or self._probing:
                return None
            self._probing = True
            return True

    def ended(self, probe: bool, held_up: bool | None) -> None:
        """A call ended: ``held_up`` True (rest), False (it answered, or failed at once: ask
        freely) or None (not made: as it was). Only the probe ends the probing."""
        with self._lock:
            if held_up:
                self._until = self.monotonic() + TOKEN_ENDPOINT_REST
            elif held_up is False:
                self._until = None
            if probe:
                self._probing = False


class OIDCClient:
    """One provider, as this app's client. One instance per provider and process, shared by threads."""

    def __init__(
        self,
        *,
        settings: OIDCSettings,
        http: HttpClient,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings
        self.http = http
        self.client_keys = ClientKeys(settings.client_keys, settings.client_certificate)
        self.documents = ProviderDocuments(
            issuer=settings.issuer, http=http, monotonic=monotonic, issuer_setting=settings.settings_prefix + "issuer"
        )
        self.validator = TokenValidator(
            issuer=settings.issuer,
            client_id=settings.client_id,
            client_secret=settings.client_secret,
            documents=self.documents,
            clock=clock,
        )
        # The latest DPoP-Nonce of each of this provider's servers (token endpoint, userinfo).
        self.nonces = Nonces()
        self.token_endpoint_rest = TokenEndpointRest(monotonic)

    def metadata(self) -> ProviderMetadata:
        return self.documents.metadata()

    def validate_id_token(self, id_token: str, *, nonce: str | None, access_token: str | None = None) -> dict:
        return self.validator.validate_id_token(id_token, nonce=nonce, access_token=access_token)

    def validate_logout_token(self, logout_token: str) -> dict:
        return self.validator.validate_logout_token(logout_token)

    def authorization_url(
        self,
        *,
        state: str,
        nonce: str,
        code_verifier: str,
        prompt: str | None = None,
        resources: tuple[str, ...] = (),
        extra: dict | None = None,
    ) -> str:
        """Where to send the browser to sign in. With a pushed authorization request (RFC 9126)
        the parameters go to the provider on the back channel first, and the browser's URL
        carries only ``client_id`` and ``request_uri``."""
        metadata = self.metadata()
        if self.settings.token_endpoint_auth_method == "private_key_jwt":
            # Refuse before the person signs in at the provider, not after, when the code could
            # never be exchanged: the provider takes no assertion this key can sign.
            self.client_keys.algorithm_for(metadata.assertion_algorithms)
        params = [
            ("response_type", "code"),
            ("client_id", self.settings.client_id),
            ("redirect_uri", self.settings.redirect_uri),
            ("scope", self.settings.scope),
            ("state", state),
            ("nonce", nonce),
            ("code_challenge", create_s256_code_challenge(code_verifier)),
            ("code_challenge_method", "S256"),
            # A step-up's own acr_values and max_age replace configured ones, never join them.
            *((name, value) for name, value in self.settings.authorize_params.items() if name not in (extra or {})),
            *(extra or {}).items(),
        ]
        # RFC 8707: one for each resource, once, though authorize_params may name an upstream's too.
        configured = {value for name, value in params if name == "resource"}
        params.extend(("resource", resource) for resource in dict.fromkeys(resources) if resource not in configured)
        if prompt:
            params.append(("prompt", prompt))
        if self._pushes(metadata):
            request_uri = self._push(metadata.par_endpoint, params)
            params = [("client_id", self.settings.client_id), ("request_uri", request_uri)]
        endpoint = metadata.authorization_endpoint
        return endpoint + ("&" if urlsplit(endpoint).query else "?") + urlencode(params)

    def _pushes(self, metadata: ProviderMetadata) -> bool:
        mode = self.settings.par
        if mode == "never":
            if metadata.par_required:
                raise ProviderMisconfigured(
                    f"The provider requires pushed authorization requests, but {self.settings.settings_prefix}par = never."
                )
            return False
        if metadata.par_endpoint is None:
            if mode == "always" or metadata.par_required:
                raise ProviderMisconfigured(
                    "The provider offers no pushed authorization request endpoint, "
                    f"but {self.settings.settings_prefix}par = {mode}."
                )
            return False
        return True

    def _push(self, endpoint: str, params: list) -> str:
        """RFC 9126: the authorization request's parameters, client-authenticated; its request_uri."""
        try:
            response = self._post(endpoint, params, role="par")
        except requests.RequestException as e:
            failure = describe(e)
            if failure.unavailable:
                raise ProviderUnavailable(
                    f"The provider's pushed authorization request endpoint {failure}.", reason="par_unavailable"
                ) from None
            raise OIDCError("par_failed", f"The provider's pushed authorization request endpoint {failure}.") from None
        try:
            document = response.json()
        except (ValueError, RecursionError):
            document = None
        if response.status_code >= 500:
            raise ProviderUnavailable(
                f"The provider's pushed authorization request endpoint answered HTTP {response.status_code}.",
                reason="par_unavailable",
            )
        if not isinstance(document, dict):
            raise OIDCError("par_failed", "The provider's pushed authorization request endpoint did not answer with JSON.")
        if response.status_code not in (200, 201):
            error = error_code(document.get("error")) if "error" in document else "refused"
            raise OIDCError(f"par_refused:{error}"[:64], f"The provider refused the sign-in request ({error}).")
        request_uri = document.get("request_uri")
        if not isinstance(request_uri, str) or len(request_uri) > 2048 or not URI_CHARS.fullmatch(request_uri):
            # A URI is ASCII: one that is not could not go into the redirect (helper-125: a lone
            # surrogate was a 500 at /login).
            raise OIDCError("par_failed", "The provider's pushed authorization response has no request_uri.")
        return request_uri

    def dpop_algorithm(self, metadata: ProviderMetadata | None = None) -> str | None:
        """The algorithm of a new session's DPoP key at this provider (SPEC.md "Sender-constrained
        tokens"), or None for Bearer tokens; raises :class:`ProviderMisconfigured` when DPoP is
        required and the provider offers none this app can sign."""
        mode = self.settings.dpop
        if mode == "off":
            return None
        metadata = metadata or self.metadata()
        alg = choose_algorithm(metadata.dpop_algorithms or ())
        if alg is None and mode == "required":
            if metadata.dpop_algorithms:
                raise ProviderMisconfigured(
                    f"The provider takes DPoP proofs only in {', '.join(metadata.dpop_algorithms)[:200]}, "
                    f"none of which myapp signs, but {self.settings.settings_prefix}dpop = required."
                )
            raise ProviderMisconfigured(
                "The provider does not offer DPoP (its discovery document has no dpop_signing_alg_values_supported), "
                f"but {self.settings.settings_prefix}dpop = required."
            )
        return alg

    def new_dpop_key(self, metadata: ProviderMetadata | None = None) -> DPoPKey | None:
        """A new session's DPoP key for this provider, or None when its tokens are Bearer tokens."""
        algorithm = self.dpop_algorithm(metadata)
        return DPoPKey.generate(algorithm) if algorithm else None

    def client_auth(self, endpoint_metadata: ProviderMetadata | None = None):
        """How this client authenticates (an Authlib client-auth callable), for every endpoint."""
        method = self.settings.token_endpoint_auth_method
        if method == "client_secret_post":
            return client_secret_post
        if method == "private_key_jwt":
            metadata = endpoint_metadata or self.metadata()
            return private_key_jwt(
                self.client_keys,
                audience=assertion_audience(self.settings, metadata.token_endpoint),
                alg=self.client_keys.algorithm_for(metadata.assertion_algorithms),
            )
        return client_secret_basic

    def _post(
        self, endpoint: str, form: list, *, role: str, timeout: float | None = None, dpop: DPoPKey | None = None
    ) -> requests.Response:
        """POST ``form`` (repeated names kept) to one of the provider's endpoints, authenticated as
        this client; with ``dpop``, with a proof, sent once more when the provider asks for a nonce.
        Its span is ``provider <role>`` (``par``, ``token``, ``revocation``), whatever the path."""
        session = self.http.oauth2_session(client_id=self.settings.client_id, client_secret=self.settings.client_secret)
        with tracing.outgoing_span(f"provider {role}", kind_of="provider", target=self.settings.name, method="POST") as span:

            def send() -> tuple[requests.Response, str | None]:
                headers = {"Accept": "application/json"}
                tracing.inject(headers)
                nonce = None
                if dpop is not None:
                    nonce = self.nonces.get(endpoint)
                    headers["DPoP"] = dpop.proof("POST", endpoint, nonce=nonce)
                # Made first: it may read the provider's discovery document, a call of its own.
                auth = session.client_auth(self.client_auth())
                with self.http.bounded(timeout or self.settings.http_timeout) as left:
                    response = session.post(
                        endpoint,
                        data=form,
                        auth=auth,
                        headers=headers,
                        withhold_token=True,
                        timeout=left,
                    )
                return response, nonce

            response, sent = send()
            if dpop is not None and self.nonces.retry_with(
                endpoint, response.headers.get("DPoP-Nonce"), sent=sent, asked=_asks_for_nonce(response)
            ):
                # RFC 9449 section 8: once more, with the nonce it gave (a fresh proof, a new jti).
                log.info("the provider's %s asked for a DPoP nonce; sending again with it", role)
                response, _ = send()
                self.nonces.remember(endpoint, response.headers.get("DPoP-Nonce"))
            span.set_attribute("http.response.status_code", response.status_code)
            return response

    def _call_token_endpoint(self, call, dpop: DPoPKey | None) -> dict:
        try:
            token = call()
        except OAuthError as e:
            raise TokenRequestRefused(error_code(e.error), e.description) from None
        except requests.RequestException as e:
            failure = describe(e)
            if failure.unavailable:
                # Only a call that waited out its own timeout says the provider held it up.
                held_up = None if isinstance(e, NoTimeLeft | CutShort | NoTimer) else isinstance(e, requests.Timeout)
                raise ProviderUnavailable(f"The provider's token endpoint {failure}.", held_up=held_up) from None
            raise OIDCError("token_endpoint_error", f"The provider's token endpoint {failure}.") from None
        except ValueError:
            raise OIDCError("token_endpoint_error", "The provider's token endpoint answered with something that is not JSON.") from None
        token = dict(token)
        # A refresh token that is not printable ASCII (RFC 6749 appendix A.17) can be neither kept
        # nor sent back to revoke it (helper-125: a lone surrogate was a 500 at the callback and at
        # every refresh, the old refresh token spent): refused below, and not among those revoked.
        refresh = token.get("refresh_token")
        unusable_refresh = isinstance(refresh, str) and refresh != "" and not VSCHARS.fullmatch(refresh)
        # The tokens of an answer refused below are live at the provider: the caller keeps (a
        # rotated refresh token) or revokes them. An access token only once it could be sent.
        issued = TokenSet.issued_in({**token, "refresh_token": None} if unusable_refresh else token)
        if not isinstance(token.get("access_token"), str) or not token["access_token"]:
            raise TokenResponseInvalid("The provider's token response has no access token.", issued)
        if not TOKEN68.fullmatch(token["access_token"]):
            # It goes into an Authorization header (and a proof's ath): RFC 6750's b64token only.
            refresh_only = TokenSet(refresh_token=issued.refresh_token)
            raise TokenResponseInvalid("The provider's access token has characters no header may carry.", refresh_only)
        # "" is no refresh token (a refresh keeps the stored one), not one of another type.
        if not isinstance(token.get("refresh_token"), str | None):
            raise TokenResponseInvalid("The provider's refresh token is not a string.", issued)
        if unusable_refresh:
            raise TokenResponseInvalid("The provider's refresh token has characters other than printable ASCII.", issued)
        token_type = token.get("token_type")
        token_type = token_type.lower() if isinstance(token_type, str) else None
        if token_type == "bearer":
            if dpop is not None and self.settings.dpop == "required":
                raise DPoPNotBound(token)
        elif token_type != "dpop" or dpop is None:
            expected = "a DPoP or Bearer token" if dpop is not None else "a Bearer token"
            raise TokenResponseInvalid(f"The provider's token response is not {expected}.", issued)
        return token

    def exchange_code(self, code: str, code_verifier: str, *, dpop: DPoPKey | None = None) -> dict:
        """Trade the authorization code (and the PKCE verifier) for tokens, on the server."""
        form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("code_verifier", code_verifier),
            ("redirect_uri", self.settings.redirect_uri),
        ]
        return self._token_request(form, scope=None, resources=(), params=None, dpop=dpop, gated=False)

    def refresh(
        self,
        refresh_token: str,
        *,
        scope: str | None = None,
        resources: tuple[str, ...] = (),
        params: Mapping[str, str] | None = None,
        dpop: DPoPKey | None = None,
    ) -> dict:
        """The refresh_token grant: for the session's own tokens, or, with ``scope``, ``resources``
        (RFC 8707) or extra ``params``, for an access token meant for one upstream. With ``dpop``,
        the request carries a proof and the new access token is bound to that key."""
        form = [("grant_type", "refresh_token"), ("refresh_token", refresh_token)]
        return self._token_request(form, scope=scope, resources=resources, params=params, dpop=dpop)

    def exchange_token(
        self,
        subject_token: str,
        *,
        scope: str | None = None,
        resources: tuple[str, ...] = (),
        params: Mapping[str, str] | None = None,
        dpop: DPoPKey | None = None,
    ) -> dict:
        """RFC 8693 token exchange of an access token for one with another target."""
        form = [
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", subject_token),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
        ]
        return self._token_request(form, scope=scope, resources=resources, params=params, dpop=dpop)

    def _token_request(self, form: list, *, scope, resources, params, dpop: DPoPKey | None, gated: bool = True) -> dict:
        """POST ``form`` (repeated names kept: Authlib's fetch_token folds them into one) to the
        token endpoint, authenticated as this client; when ``gated``, not while it rests
        (:class:`TokenEndpointRest`, :class:`ProviderResting`). A code exchange is not gated (a
        person who just signed in at the provider would have to start again, and its call is
        the best probe there is), but what becomes of it counts all the same."""
        rest = self.token_endpoint_rest
        probe = rest.ask() if gated else False
        if probe is None:
            raise ProviderResting()
        held_up = None
        try:
            endpoint = self.metadata().token_endpoint
            form = list(form)
            if scope:
                form.append(("scope", scope))
            form.extend(("resource", resource) for resource in resources)
            form.extend((params or {}).items())
            token = self._call_token_endpoint(
                lambda: _parse_token_response(self._post(endpoint, form, role="token", dpop=dpop)), dpop
            )
            held_up = False
            return token
        except ProviderUnavailable as e:
            held_up = e.held_up
            raise
        except OIDCError as e:
            # A refusal, or an answer it could not use: it answers. Not so a provider whose
            # discovery cannot be used (its token endpoint was not asked).
            held_up = None if isinstance(e, ProviderMisconfigured) else False
            raise
        finally:
            rest.ended(probe, held_up)

    def revoke(self, token: str, token_type_hint: str, *, timeout: float | None = None) -> "Revocation":
        """RFC 7009 revocation, client-authenticated; never raises."""
        try:
            endpoint = self.metadata().revocation_endpoint
        except ProviderUnavailable:
            return Revocation.FAILED
        except OIDCError as e:
            # Unusable now (a bad deployment of the provider, an issuer changed) is not "no
            # endpoint": tried again later, up to the revoker's bound, not dropped.
            log.warning("token revocation failed: %s", e.message)
            return Revocation.FAILED
        if endpoint is None:
            return Revocation.NOT_OFFERED
        try:
            response = self._post(
                endpoint, [("token", token), ("token_type_hint", token_type_hint)], role="revocation", timeout=timeout
            )
        except requests.RequestException as e:
            log.warning("token revocation failed: %s", describe(e))
            return Revocation.FAILED
        except OIDCError as e:  # a key the provider's algorithms cannot use, discovery gone
            log.warning("token revocation failed: %s", e.message)
            return Revocation.FAILED
        if response.status_code == 200:
            return Revocation.REVOKED
        log.warning("token revocation answered HTTP %s", response.status_code)
        # 400: the provider will never take this token (RFC 7009 section 2.2.1); anything else may pass.
        return Revocation.REFUSED if response.status_code == 400 else Revocation.FAILED

    def userinfo(self, access_token: str, *, subject: str, dpop: DPoPKey | None = None) -> dict | None:
        """Userinfo claims, or None when unavailable or naming another subject (then logged). A
        token bound to ``dpop`` goes with a proof (and once more with the nonce, if asked for one)."""
        endpoint = self.metadata().userinfo_endpoint
        if endpoint is None:
            return None

        def get(nonce: str | None) -> dict:
            if dpop is None:
                return self.http.get_json(endpoint, document="userinfo", headers={"Authorization": f"Bearer {access_token}"})
            proof = dpop.proof("GET", endpoint, access_token=access_token, nonce=nonce)
            return self.http.get_json(
                endpoint, document="userinfo", headers={"Authorization": f"DPoP {access_token}", "DPoP": proof},
                # A nonce given with the claims is the one the next proof to this server needs (RFC 9449 section 8.2).
                answered=lambda headers: self.nonces.remember(endpoint, headers.get("DPoP-Nonce")),
            )

        sent = self.nonces.get(endpoint) if dpop is not None else None
        try:
            try:
                claims = get(sent)
            except HTTPFailure as e:
                asked = challenge_error(e.headers.get("WWW-Authenticate")) == "use_dpop_nonce"
                nonce = self.nonces.retry_with(endpoint, e.headers.get("DPoP-Nonce"), sent=sent, asked=asked) if dpop else None
                if nonce is None:
                    raise
                claims = get(nonce)
        except HTTPFailure as e:
            reason = challenge_error(e.headers.get("WWW-Authenticate")) if dpop is not None else None
            log.info("userinfo unavailable (%s%s); keeping the ID token's claims", e, f", {reason}" if reason else "")
            return None
        if claims.get("sub") != subject:
            log.warning("userinfo names another subject than the ID token; discarding it")
            return None
        return claims

    def form_action_origins(self) -> set[str]:
        """Where this app's forms may end up at this provider: its issuer (sign-in) and, once
        discovery has been read, its end-session endpoint (sign-out). Never waits for the
        provider: discovery not read yet is read on a thread of its own, for the next page."""
        origins = {origin(self.settings.issuer)}
        metadata = self.documents.cached_metadata
        if metadata is None:
            self.documents.read_soon()
        elif metadata.end_session_endpoint is not None:
            origins.add(origin(metadata.end_session_endpoint))
        return origins

    def end_session_url(self, *, id_token_hint: str | None) -> str | None:
        """RP-initiated logout at the provider, when it offers it."""
        try:
            endpoint = self.metadata().end_session_endpoint
        except OIDCError:
            return None
        if endpoint is None:
            return None
        params = {"client_id": self.settings.client_id, "post_logout_redirect_uri": self.settings.post_logout_redirect_uri}
        if id_token_hint:
            params["id_token_hint"] = id_token_hint
        separator = "&" if urlsplit(endpoint).query else "?"
        return endpoint + separator + urlencode(params)
