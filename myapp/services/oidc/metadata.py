"""What a provider publishes: its discovery document and its signing keys, fetched and cached.

Discovery is read from ``{issuer}/.well-known/openid-configuration`` and its ``issuer`` must equal
the configured one exactly. Keys come from the discovered ``jwks_uri`` only, never from a token's
header; an unknown ``kid`` refetches them at most once a minute (the first fetch does not count).
"""

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from joserfc.errors import JoseError
from joserfc.jwk import import_key

from myapp.services.http import HttpClient, HTTPFailure, time_left
from myapp.services.oidc.errors import ProviderMisconfigured, ProviderUnavailable

log = logging.getLogger(__name__)

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
DISCOVERY_TTL = 3600.0
JWKS_REFETCH_INTERVAL = 60.0
# How often a process that has not read discovery yet tries to, on a thread of its own, for
# what its pages must name before anyone signs in through it (read_soon).
READ_AHEAD_INTERVAL = 30.0


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
    # RFC 9126: where to push authorization requests, and whether the provider insists.
    par_endpoint: str | None = None
    par_required: bool = False
    # For private_key_jwt: what the provider accepts, in its order (None: it does not say).
    assertion_algorithms: tuple[str, ...] | None = None
    # RFC 9449: the algorithms the provider takes DPoP proofs in (None: it offers no DPoP).
    dpop_algorithms: tuple[str, ...] | None = None

    @classmethod
    def from_document(
        cls, document: dict, expected_issuer: str, issuer_setting: str = "myapp.oidc.issuer"
    ) -> "ProviderMetadata":
        issuer = document.get("issuer")
        if issuer != expected_issuer:
            raise ProviderMisconfigured(
                f"The provider's discovery document names the issuer {str(issuer)[:200]!r}, "
                f"but {issuer_setting} is {expected_issuer!r}; they must be identical."
            )

        schemes = ("https",) if expected_issuer.startswith("https:") else ("https", "http")

        def endpoint(name, required):
            value = document.get(name)
            if value is None and not required:
                return None
            try:
                parts = urlsplit(value) if isinstance(value, str) else None
            except ValueError:  # "https://[idp/authorize" (helper-118: a 500 at /login)
                parts = None
            # A URL is ASCII, without spaces or controls (one beyond Latin-1 could not go into the
            # Location header: helper-125, a 500 from the server at /login).
            # Nor a fragment (RFC 6749 section 3.1): the parameters added after it never reached the
            # provider (helper-127).
            if (
                parts is None or parts.scheme not in schemes or not parts.netloc
                or not URI_CHARS.fullmatch(value) or "#" in value
            ):
                raise ProviderMisconfigured(f"The provider's discovery document has no usable {name}.")
            return value

        advertised = document.get("id_token_signing_alg_values_supported") or ["RS256"]
        if not isinstance(advertised, list):
            raise ProviderMisconfigured("The provider's id_token_signing_alg_values_supported is not a list.")
        # An entry that is no string names no algorithm (a list in it raised TypeError: helper-125,
        # a 500 at /login and, anonymously, at the back-channel logout endpoint).
        algorithms = frozenset(a for a in advertised if isinstance(a, str) and a in ASYMMETRIC_ALGORITHMS | HMAC_ALGORITHMS)
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
            par_endpoint=endpoint("pushed_authorization_request_endpoint", False),
            par_required=document.get("require_pushed_authorization_requests") is True,
            assertion_algorithms=_string_list(document.get("token_endpoint_auth_signing_alg_values_supported")),
            dpop_algorithms=_string_list(document.get("dpop_signing_alg_values_supported")) or None,
        )


# A URI (RFC 3986) is ASCII, without spaces or controls: a discovery endpoint, PAR's request_uri.
URI_CHARS = re.compile(r"[\x21-\x7e]+")


def _string_list(value) -> tuple[str, ...] | None:
    if not isinstance(value, list):
        return None
    return tuple(item for item in value if isinstance(item, str))


class ProviderDocuments:
    """One provider's discovery document and key set, cached; shared by every thread."""

    def __init__(
        self,
        *,
        issuer: str,
        http: HttpClient,
        monotonic: Callable[[], float] = time.monotonic,
        issuer_setting: str = "myapp.oidc.issuer",
    ):
        self.issuer = issuer
        # Where the issuer is configured (myapp.oidc.<name>.issuer for a listed provider), for messages.
        self.issuer_setting = issuer_setting
        self.http = http
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._read_ahead_lock = threading.Lock()
        self._metadata: ProviderMetadata | None = None
        self._metadata_fetched_at = 0.0
        self._keys: list | None = None
        self._keys_uri: str | None = None
        self._last_key_refetch = float("-inf")
        self._read_ahead_at = float("-inf")

    @contextlib.contextmanager
    def _documents(self) -> Iterator[None]:
        """The documents, held while one is read or fetched. Inside :func:`~myapp.services.http.within`
        (the refresh lock's holder) waited for no longer than its deadline: another thread may hold
        them for a whole fetch, and the holder must not outlive its lock's lease."""
        left = time_left()
        if not self._lock.acquire(timeout=-1 if left is None else max(left, 0)):
            raise ProviderUnavailable("The sign-in provider's documents are being fetched; try again.")
        try:
            yield
        finally:
            self._lock.release()

    @property
    def cached_metadata(self) -> ProviderMetadata | None:
        """The discovery document if it has been read (never fetches)."""
        return self._metadata

    def read_soon(self) -> None:
        """Read discovery on a thread of its own, unless it has been read, or tried in the last
        ``READ_AHEAD_INTERVAL`` seconds. For what a page must know without waiting for the
        provider: a process that has just started serves pages to sessions signed in through
        another, and their sign-out form's redirect needs the end-session endpoint's origin in
        the page's ``form-action``."""
        now = self.monotonic()
        with self._read_ahead_lock:
            if self._metadata is not None or now - self._read_ahead_at < READ_AHEAD_INTERVAL:
                return
            self._read_ahead_at = now
        try:
            threading.Thread(target=self._read_ahead, name="myapp-discovery", daemon=True).start()
        except RuntimeError as e:  # no thread to be had: the page goes out all the same
            log.warning("discovery not read ahead for %s: %s", self.issuer, e)

    def _read_ahead(self) -> None:
        try:
            self.metadata()
        except Exception as e:  # any: a thread of its own must not end in a traceback; tried again later
            log.warning("discovery not read ahead for %s: %s", self.issuer, e)

    def metadata(self) -> ProviderMetadata:
        """The provider's discovery document, fetched once and refreshed hourly."""
        with self._documents():
            fresh = self._metadata is not None and self.monotonic() - self._metadata_fetched_at < DISCOVERY_TTL
            if fresh:
                return self._metadata
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                document = self.http.get_json(url, document="discovery")
            except HTTPFailure as e:
                if self._metadata is not None and e.unavailable:
                    log.warning("discovery refresh failed (%s); keeping the cached document", e)
                    self._metadata_fetched_at = self.monotonic()
                    return self._metadata
                if e.unavailable:
                    raise ProviderUnavailable(f"The sign-in provider could not be reached ({e}).") from None
                raise ProviderMisconfigured(f"The provider's discovery document is unusable: it {e}.") from None
            self._metadata = ProviderMetadata.from_document(document, self.issuer, self.issuer_setting)
            self._metadata_fetched_at = self.monotonic()
            return self._metadata

    def signing_keys(self, *, refetch: bool = False) -> list:
        """The provider's keys, from the discovered jwks_uri only; a refetch at most once a minute."""
        jwks_uri = self.metadata().jwks_uri
        with self._documents():
            first = self._keys is None or self._keys_uri != jwks_uri
            if not first and not refetch:
                return self._keys
            if not first and self.monotonic() - self._last_key_refetch < JWKS_REFETCH_INTERVAL:
                return self._keys
            try:
                document = self.http.get_json(jwks_uri, document="jwks")
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
        entries = document.get("keys")
        # A key set whose keys are no list ({"keys": 5}) has none: it was a 500 at the callback (helper-118).
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                keys.append(import_key(entry))
            except (JoseError, ValueError, TypeError, KeyError):
                log.warning("ignoring a key the provider published that cannot be read (kid %r)", entry.get("kid"))
        return keys
