"""The conversation with the OpenID provider: discovery, keys, and every check on its tokens.

The ID-token algorithm follows Authlib's ``sync_openid.parse_id_token`` and OpenID Connect Core
3.1.3.7, with the checks Authlib leaves to the caller done here, each with its own reason code
(``OIDCError.reason``) so that audit records and tests can tell them apart.
"""

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import requests
from authlib.integrations.base_client import OAuthError
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey, import_key
from joserfc.jws import JWSRegistry

from myapp.services.http import HttpClient, HTTPFailure, describe
from myapp.settings import OIDCSettings

log = logging.getLogger(__name__)

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_KEY_TYPES = {"RS": RSAKey, "PS": RSAKey, "ES": ECKey, "Ed": OKPKey}
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}

DISCOVERY_TTL = 3600.0
JWKS_REFETCH_INTERVAL = 60.0
CLOCK_SKEW = 60
MAX_TOKEN_AGE = 24 * 3600
MAX_TOKEN_BYTES = 64 * 1024
BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"


class OIDCError(Exception):
    """A check failed. ``reason`` is a short code for audit records; ``message`` is plain words."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class ProviderUnavailable(OIDCError):
    """The provider is down or slow: trying again later may work."""

    def __init__(self, message: str):
        super().__init__("provider_unavailable", message)


class ProviderMisconfigured(OIDCError):
    """The provider's metadata cannot be used with this configuration; nobody can sign in."""

    def __init__(self, message: str):
        super().__init__("provider_misconfigured", message)


class TokenRequestRefused(OIDCError):
    """The token endpoint answered with an OAuth error such as ``invalid_grant``."""

    def __init__(self, error: str, description: str | None):
        super().__init__(f"token_error:{error}"[:64], f"The provider refused the request ({error}).")
        self.error = error
        self.description = description


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    end_session_endpoint: str | None
    revocation_endpoint: str | None
    signing_algorithms: frozenset[str]
    iss_parameter_supported: bool

    @classmethod
    def from_document(cls, document: dict, expected_issuer: str) -> "ProviderMetadata":
        issuer = document.get("issuer")
        if issuer != expected_issuer:
            raise ProviderMisconfigured(
                f"The provider's discovery document names the issuer {str(issuer)[:200]!r}, "
                f"but myapp.oidc.issuer is {expected_issuer!r}; they must be identical."
            )

        schemes = ("https",) if expected_issuer.startswith("https:") else ("https", "http")

        def endpoint(name, required):
            value = document.get(name)
            if value is None and not required:
                return None
            parts = urlsplit(value) if isinstance(value, str) else None
            if parts is None or parts.scheme not in schemes or not parts.netloc:
                raise ProviderMisconfigured(f"The provider's discovery document has no usable {name}.")
            return value

        advertised = document.get("id_token_signing_alg_values_supported") or ["RS256"]
        if not isinstance(advertised, list):
            raise ProviderMisconfigured("The provider's id_token_signing_alg_values_supported is not a list.")
        algorithms = frozenset(a for a in advertised if a in ASYMMETRIC_ALGORITHMS | HMAC_ALGORITHMS)
        if not algorithms:
            raise ProviderMisconfigured(
                f"The provider signs ID tokens with none of the algorithms myapp accepts ({sorted(map(str, advertised))})."
            )
        return cls(
            issuer=issuer,
            authorization_endpoint=endpoint("authorization_endpoint", True),
            token_endpoint=endpoint("token_endpoint", True),
            jwks_uri=endpoint("jwks_uri", True),
            userinfo_endpoint=endpoint("userinfo_endpoint", False),
            end_session_endpoint=endpoint("end_session_endpoint", False),
            revocation_endpoint=endpoint("revocation_endpoint", False),
            signing_algorithms=algorithms,
            iss_parameter_supported=document.get("authorization_response_iss_parameter_supported") is True,
        )


def _b64url_sha_half(value: str, alg: str) -> str:
    """at_hash: the left half of the hash the signing algorithm uses (SHA-512 for EdDSA)."""
    hash_function = {"256": hashlib.sha256, "384": hashlib.sha384}.get(alg[-3:], hashlib.sha512)
    digest = hash_function(value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode("ascii")


class OIDCClient:
    """Everything myapp asks of the provider. One instance per process, shared by threads."""

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
        self.clock = clock
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._metadata: ProviderMetadata | None = None
        self._metadata_fetched_at = 0.0
        self._keys: list | None = None
        self._keys_uri: str | None = None
        self._last_key_refetch = float("-inf")

    def metadata(self) -> ProviderMetadata:
        """The provider's discovery document, fetched once and refreshed hourly."""
        with self._lock:
            fresh = self._metadata is not None and self.monotonic() - self._metadata_fetched_at < DISCOVERY_TTL
            if fresh:
                return self._metadata
            url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                document = self.http.get_json(url)
            except HTTPFailure as e:
                if self._metadata is not None and e.unavailable:
                    log.warning("discovery refresh failed (%s); keeping the cached document", e)
                    self._metadata_fetched_at = self.monotonic()
                    return self._metadata
                if e.unavailable:
                    raise ProviderUnavailable(f"The sign-in provider could not be reached ({e}).") from None
                raise ProviderMisconfigured(f"The provider's discovery document is unusable: it {e}.") from None
            self._metadata = ProviderMetadata.from_document(document, self.settings.issuer)
            self._metadata_fetched_at = self.monotonic()
            return self._metadata

    def _signing_keys(self, *, refetch: bool = False) -> list:
        """The provider's keys, from the discovered jwks_uri only; a refetch at most once a minute."""
        jwks_uri = self.metadata().jwks_uri
        with self._lock:
            first = self._keys is None or self._keys_uri != jwks_uri
            if not first and not refetch:
                return self._keys
            if not first and self.monotonic() - self._last_key_refetch < JWKS_REFETCH_INTERVAL:
                return self._keys
            try:
                document = self.http.get_json(jwks_uri)
            except HTTPFailure as e:
                if not first:
                    log.warning("key set refresh failed (%s); keeping the cached keys", e)
                    return self._keys
                if e.unavailable:
                    raise ProviderUnavailable(f"The provider's keys could not be fetched ({e}).") from None
                raise ProviderMisconfigured(f"The provider's key set is unusable: it {e}.") from None
            if not first:
                self._last_key_refetch = self.monotonic()
            self._keys = self._import_keys(document)
            self._keys_uri = jwks_uri
            return self._keys

    @staticmethod
    def _import_keys(document: dict) -> list:
        keys = []
        for entry in document.get("keys") or []:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                keys.append(import_key(entry))
            except (JoseError, ValueError, TypeError, KeyError):
                log.warning("ignoring a key the provider published that cannot be read (kid %r)", entry.get("kid"))
        return keys

    def authorization_url(self, *, state: str, nonce: str, code_verifier: str, prompt: str | None = None) -> str:
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
        return url

    def _token_session(self):
        return self.http.oauth2_session(
            client_id=self.settings.client_id,
            client_secret=self.settings.client_secret,
            token_endpoint_auth_method=self.settings.token_endpoint_auth_method,
            redirect_uri=self.settings.redirect_uri,
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
        session = self._token_session()
        return self._call_token_endpoint(
            lambda: session.fetch_token(
                endpoint,
                grant_type="authorization_code",
                code=code,
                code_verifier=code_verifier,
                redirect_uri=self.settings.redirect_uri,
            )
        )

    def refresh(self, refresh_token: str) -> dict:
        endpoint = self.metadata().token_endpoint
        session = self._token_session()
        return self._call_token_endpoint(
            lambda: session.fetch_token(endpoint, grant_type="refresh_token", refresh_token=refresh_token)
        )

    def revoke(self, token: str, token_type_hint: str, *, timeout: float | None = None) -> bool:
        """RFC 7009 revocation, client-authenticated. False when the provider offers none or fails."""
        try:
            endpoint = self.metadata().revocation_endpoint
        except OIDCError:
            return False
        if endpoint is None:
            return False
        session = self.http.oauth2_session(
            client_id=self.settings.client_id,
            client_secret=self.settings.client_secret,
            token_endpoint_auth_method=self.settings.token_endpoint_auth_method,
            revocation_endpoint_auth_method=self.settings.token_endpoint_auth_method,
        )
        try:
            response = session.revoke_token(
                endpoint, token=token, token_type_hint=token_type_hint, timeout=timeout or self.settings.http_timeout
            )
        except requests.RequestException as e:
            log.warning("token revocation failed: %s", describe(e))
            return False
        if response.status_code != 200:
            log.warning("token revocation answered HTTP %s", response.status_code)
            return False
        return True

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

    def cached_logout_origin(self) -> str | None:
        """The origin of the end-session endpoint, if discovery has been read (never fetches)."""
        metadata = self._metadata
        if metadata is None or metadata.end_session_endpoint is None:
            return None
        parts = urlsplit(metadata.end_session_endpoint)
        return f"{parts.scheme}://{parts.netloc}"

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

    def verify_signature(self, token: str) -> tuple[dict, dict]:
        """Verify a signed JWT from the provider; return (header, claims). Never ``none``."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
            raise OIDCError("malformed_token", "The token is not a signed JWT.")
        try:
            signed = jws.extract_compact(token.encode("ascii"))
            header = signed.headers()
        except (JoseError, ValueError, UnicodeError):
            raise OIDCError("malformed_token", "The token is not a signed JWT.") from None
        alg = header.get("alg")
        metadata = self.metadata()
        if not isinstance(alg, str) or alg not in metadata.signing_algorithms:
            raise OIDCError("bad_algorithm", f"The token is signed with {str(alg)[:20]!r}, which the provider does not advertise.")
        key = self._verification_key(header, alg)
        try:
            registry = JWSRegistry(algorithms=[alg], strict_check_header=False)
            valid = jws.validate_compact(signed, key, registry=registry)
        except (JoseError, ValueError, TypeError):
            valid = False
        if not valid:
            raise OIDCError("bad_signature", "The token's signature is not valid.")
        try:
            claims = json.loads(signed.payload)
        except ValueError:
            raise OIDCError("malformed_token", "The token's claims are not JSON.") from None
        if not isinstance(claims, dict):
            raise OIDCError("malformed_token", "The token's claims are not a JSON object.")
        return header, claims

    def _verification_key(self, header: dict, alg: str):
        if alg in HMAC_ALGORITHMS:
            # OIDC Core 10.1: an HMAC token is keyed with the client secret, never with public material.
            return OctKey.import_key(self.settings.client_secret.encode("utf-8"))
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise OIDCError("unknown_key", "The token names its key oddly.")
        candidates = self._candidates(self._signing_keys(), kid, alg)
        if not candidates and kid is not None:
            candidates = self._candidates(self._signing_keys(refetch=True), kid, alg)
        if not candidates:
            raise OIDCError("unknown_key", "The token is signed with a key the provider does not publish.")
        if len(candidates) > 1:
            raise OIDCError("ambiguous_key", "The token names no key and the provider publishes several.")
        return candidates[0]

    @staticmethod
    def _candidates(keys: list, kid: str | None, alg: str) -> list:
        key_type = _KEY_TYPES[alg[:2]]
        found = []
        for key in keys:
            if not isinstance(key, key_type) or (kid is not None and key.kid != kid):
                continue
            if key.get("alg") not in (None, alg):
                continue
            if alg in _EC_CURVES and key.get("crv") != _EC_CURVES[alg]:
                continue
            found.append(key)
        return found

    def _check_common_claims(self, claims: dict, *, label: str) -> None:
        now = self.clock()
        if claims.get("iss") != self.settings.issuer:
            raise OIDCError("bad_issuer", f"The {label} was issued by someone else.")
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise OIDCError("bad_audience", f"The {label} has no valid audience.")
        if self.settings.client_id not in audiences:
            raise OIDCError("bad_audience", f"The {label} is meant for another application.")
        if set(audiences) - {self.settings.client_id}:
            raise OIDCError("untrusted_audience", f"The {label} is also meant for applications this one does not trust.")
        if "azp" in claims and claims["azp"] != self.settings.client_id:
            raise OIDCError("bad_authorized_party", f"The {label} was issued to another application.")
        iat = claims.get("iat")
        if not _is_number(iat):
            raise OIDCError("missing_iat", f"The {label} does not say when it was issued.")
        if iat > now + CLOCK_SKEW or iat < now - MAX_TOKEN_AGE:
            raise OIDCError("bad_iat", f"The {label}'s issue time is too far from now; check the clocks.")
        if "nbf" in claims and (not _is_number(claims["nbf"]) or claims["nbf"] > now + CLOCK_SKEW):
            raise OIDCError("not_yet_valid", f"The {label} is not valid yet.")

    def validate_id_token(self, id_token: str, *, nonce: str | None, access_token: str | None = None) -> dict:
        """Every check of OIDC Core 3.1.3.7 and 3.1.3.8; returns the claims.

        ``nonce`` is the one sent with the authorization request; pass None only for an ID token
        that arrived in a refresh response, which carries none (OIDC Core 12.2).
        """
        header, claims = self.verify_signature(id_token)
        if _media_type(header.get("typ")) not in (None, "jwt"):
            raise OIDCError("bad_type", "This is not an ID token.")
        self._check_common_claims(claims, label="ID token")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 255:
            raise OIDCError("missing_sub", "The ID token does not name the user.")
        exp = claims.get("exp")
        if not _is_number(exp):
            raise OIDCError("missing_exp", "The ID token has no expiry.")
        if exp <= self.clock() - CLOCK_SKEW:
            raise OIDCError("expired", "The ID token has expired.")
        if nonce is not None:
            sent = claims.get("nonce")
            if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), nonce.encode()):
                raise OIDCError("bad_nonce", "The ID token does not answer this sign-in (nonce mismatch).")
        at_hash = claims.get("at_hash")
        if at_hash is not None and access_token is not None:
            if not isinstance(at_hash, str) or not hmac.compare_digest(
                at_hash.encode(), _b64url_sha_half(access_token, header["alg"]).encode()
            ):
                raise OIDCError("bad_at_hash", "The ID token does not belong with the access token.")
        return claims

    def validate_logout_token(self, logout_token: str) -> dict:
        """OpenID Connect Back-Channel Logout 1.0, section 2.6."""
        header, claims = self.verify_signature(logout_token)
        if _media_type(header.get("typ")) not in (None, "logout+jwt", "jwt"):
            raise OIDCError("bad_type", "This is not a logout token.")
        self._check_common_claims(claims, label="logout token")
        if "exp" in claims and (not _is_number(claims["exp"]) or claims["exp"] <= self.clock() - CLOCK_SKEW):
            raise OIDCError("expired", "The logout token has expired.")
        events = claims.get("events")
        if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_LOGOUT_EVENT), dict):
            raise OIDCError("bad_events", "The logout token does not carry the back-channel logout event.")
        sub, sid = claims.get("sub"), claims.get("sid")
        if sub is None and sid is None:
            raise OIDCError("missing_sub_and_sid", "The logout token names neither a user nor a session.")
        if (sub is not None and (not isinstance(sub, str) or not sub)) or (
            sid is not None and (not isinstance(sid, str) or not sid)
        ):
            raise OIDCError("bad_sub_or_sid", "The logout token's user or session is malformed.")
        if "nonce" in claims:
            raise OIDCError("nonce_present", "A logout token must not carry a nonce.")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 255:
            raise OIDCError("missing_jti", "The logout token has no identifier (jti).")
        return claims


def _media_type(typ) -> str | None:
    """A JOSE ``typ`` compared as RFC 7515 says: case-insensitive, ``application/`` optional."""
    if typ is None:
        return None
    if not isinstance(typ, str):
        return "?"
    return typ.lower().removeprefix("application/")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
