"""Everything myapp asks of one provider: the authorization URL, the token endpoint (code exchange,
refresh), revocation, userinfo and the end-session URL, through Authlib's client on the shared
HTTP pool; and the checks on the JWTs it sends (:class:`TokenValidator`)."""

import logging
import time
from collections.abc import Callable, Mapping
from enum import StrEnum
from urllib.parse import urlencode, urlsplit

import requests
from authlib.integrations.base_client import OAuthError

from myapp.services.http import HttpClient, HTTPFailure, describe
from myapp.services.oidc.errors import OIDCError, ProviderUnavailable, TokenRequestRefused
from myapp.services.oidc.jose import TokenValidator
from myapp.services.oidc.metadata import ProviderDocuments, ProviderMetadata
from myapp.settings import OIDCSettings

log = logging.getLogger(__name__)


TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


class Revocation(StrEnum):
    """What became of a token sent to the provider's revocation endpoint."""

    REVOKED = "revoked"
    NOT_OFFERED = "not_offered"  # the provider has no revocation endpoint: nothing to do
    REFUSED = "refused"  # the provider will not revoke it (400): trying again will not help
    FAILED = "failed"  # unreachable, slow or failing: try again later


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


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
        self.documents = ProviderDocuments(issuer=settings.issuer, http=http, monotonic=monotonic)
        self.validator = TokenValidator(
            issuer=settings.issuer,
            client_id=settings.client_id,
            client_secret=settings.client_secret,
            documents=self.documents,
            clock=clock,
        )

    def metadata(self) -> ProviderMetadata:
        return self.documents.metadata()

    def validate_id_token(self, id_token: str, *, nonce: str | None, access_token: str | None = None) -> dict:
        return self.validator.validate_id_token(id_token, nonce=nonce, access_token=access_token)

    def validate_logout_token(self, logout_token: str) -> dict:
        return self.validator.validate_logout_token(logout_token)

    def authorization_url(
        self, *, state: str, nonce: str, code_verifier: str, prompt: str | None = None, resources: tuple[str, ...] = ()
    ) -> str:
        metadata = self.metadata()
        session = self.http.oauth2_session(
            client_id=self.settings.client_id,
            redirect_uri=self.settings.redirect_uri,
            scope=self.settings.scope,
            code_challenge_method="S256",
        )
        extra = dict(self.settings.authorize_params)
        if prompt:
            extra["prompt"] = prompt
        url, _ = session.create_authorization_url(
            metadata.authorization_endpoint, state=state, nonce=nonce, code_verifier=code_verifier, **extra
        )
        if resources:  # RFC 8707: one resource parameter for each
            url += "&" + urlencode([("resource", resource) for resource in resources])
        return url

    def _authenticated_session(self, **kwargs):
        """An Authlib client that authenticates as this app (token and revocation endpoints)."""
        return self.http.oauth2_session(
            client_id=self.settings.client_id,
            client_secret=self.settings.client_secret,
            token_endpoint_auth_method=self.settings.token_endpoint_auth_method,
            **kwargs,
        )

    def _call_token_endpoint(self, call) -> dict:
        try:
            token = call()
        except OAuthError as e:
            raise TokenRequestRefused(str(e.error)[:64], e.description) from None
        except requests.RequestException as e:
            failure = describe(e)
            if failure.unavailable:
                raise ProviderUnavailable(f"The provider's token endpoint {failure}.") from None
            raise OIDCError("token_endpoint_error", f"The provider's token endpoint {failure}.") from None
        except ValueError:
            raise OIDCError("token_endpoint_error", "The provider's token endpoint answered with something that is not JSON.") from None
        token = dict(token)
        if not isinstance(token.get("access_token"), str) or not token["access_token"]:
            raise OIDCError("token_response_invalid", "The provider's token response has no access token.")
        token_type = token.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise OIDCError("token_response_invalid", "The provider's token response is not a Bearer token.")
        return token

    def exchange_code(self, code: str, code_verifier: str) -> dict:
        """Trade the authorization code (and the PKCE verifier) for tokens, on the server."""
        endpoint = self.metadata().token_endpoint
        session = self._authenticated_session(redirect_uri=self.settings.redirect_uri)
        return self._call_token_endpoint(
            lambda: session.fetch_token(
                endpoint,
                grant_type="authorization_code",
                code=code,
                code_verifier=code_verifier,
                redirect_uri=self.settings.redirect_uri,
            )
        )

    def refresh(
        self,
        refresh_token: str,
        *,
        scope: str | None = None,
        resources: tuple[str, ...] = (),
        params: Mapping[str, str] | None = None,
    ) -> dict:
        """The refresh_token grant: for the session's own tokens, or, with ``scope``, ``resources``
        (RFC 8707) or extra ``params``, for an access token meant for one upstream."""
        form = [("grant_type", "refresh_token"), ("refresh_token", refresh_token)]
        return self._token_request(form, scope=scope, resources=resources, params=params)

    def exchange_token(
        self,
        subject_token: str,
        *,
        scope: str | None = None,
        resources: tuple[str, ...] = (),
        params: Mapping[str, str] | None = None,
    ) -> dict:
        """RFC 8693 token exchange of an access token for one with another target."""
        form = [
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", subject_token),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
        ]
        return self._token_request(form, scope=scope, resources=resources, params=params)

    def _token_request(self, form: list, *, scope, resources, params) -> dict:
        """POST ``form`` (repeated names kept: Authlib's fetch_token folds them into one) to the
        token endpoint, authenticated as this client."""
        endpoint = self.metadata().token_endpoint
        form = list(form)
        if scope:
            form.append(("scope", scope))
        form.extend(("resource", resource) for resource in resources)
        form.extend((params or {}).items())
        session = self._authenticated_session()
        auth = session.client_auth(self.settings.token_endpoint_auth_method)
        return self._call_token_endpoint(
            lambda: session.parse_response_token(
                session.post(endpoint, data=form, auth=auth, headers={"Accept": "application/json"}, withhold_token=True)
            )
        )

    def revoke(self, token: str, token_type_hint: str, *, timeout: float | None = None) -> "Revocation":
        """RFC 7009 revocation, client-authenticated; never raises."""
        try:
            endpoint = self.metadata().revocation_endpoint
        except ProviderUnavailable:
            return Revocation.FAILED
        except OIDCError:
            return Revocation.NOT_OFFERED
        if endpoint is None:
            return Revocation.NOT_OFFERED
        session = self._authenticated_session(revocation_endpoint_auth_method=self.settings.token_endpoint_auth_method)
        try:
            response = session.revoke_token(
                endpoint, token=token, token_type_hint=token_type_hint, timeout=timeout or self.settings.http_timeout
            )
        except requests.RequestException as e:
            log.warning("token revocation failed: %s", describe(e))
            return Revocation.FAILED
        if response.status_code == 200:
            return Revocation.REVOKED
        log.warning("token revocation answered HTTP %s", response.status_code)
        # 400: the provider will never take this token (RFC 7009 section 2.2.1); anything else may pass.
        return Revocation.REFUSED if response.status_code == 400 else Revocation.FAILED

    def userinfo(self, access_token: str, *, subject: str) -> dict | None:
        """Userinfo claims, or None when unavailable or naming another subject (then logged)."""
        endpoint = self.metadata().userinfo_endpoint
        if endpoint is None:
            return None
        try:
            claims = self.http.get_json(endpoint, headers={"Authorization": f"Bearer {access_token}"})
        except HTTPFailure as e:
            log.info("userinfo unavailable (%s); keeping the ID token's claims", e)
            return None
        if claims.get("sub") != subject:
            log.warning("userinfo names another subject than the ID token; discarding it")
            return None
        return claims

    def form_action_origins(self) -> set[str]:
        """Where this app's forms may end up at this provider: its issuer (sign-in) and, once
        discovery has been read, its end-session endpoint (sign-out). Never fetches."""
        origins = {origin(self.settings.issuer)}
        metadata = self.documents.cached_metadata
        if metadata is not None and metadata.end_session_endpoint is not None:
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
