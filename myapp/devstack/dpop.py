"""DPoP (RFC 9449) as the development provider and demo API check it: proofs, replays, nonces.

A proof is accepted only when it is a JWT of type ``dpop+jwt`` signed with an asymmetric algorithm
by the public key in its own ``jwk`` header (no private member), naming this request's method and
URL (``htm``, ``htu`` compared after RFC 9449 section 4.3's normalisation), issued within the window
(``iat``), with a ``jti`` not seen before in that window, the hash of the access token it
accompanies (``ath``) and, when the server demands one, its current nonce. joserfc does the JOSE.
"""

import base64
import contextlib
import contextvars
import hashlib
import json
import math
import secrets
import threading
import time
from collections.abc import Callable
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

ALGORITHMS = ("ES256", "ES384", "PS256", "RS256")
_CURVES = {"ES256": "P-256", "ES384": "P-384"}
PROOF_TYPE = "dpop+jwt"
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
WINDOW = 60  # default seconds a proof's iat may lie in the past or the future
MAX_PROOF_BYTES = 8 * 1024
NONCE_LIFETIME = 300
MAX_JTIS = 100_000
# joserfc's default header limit (512 bytes) is too small for an RSA public key in ``jwk``.
_REGISTRY = jws.JWSRegistry(algorithms=list(ALGORITHMS))
_REGISTRY.max_header_length = 4096


class _Binding:
    """The key thumbprint the token request being answered proved (None: no proof): Authlib's
    grants and token generator are not given the request, so the token view sets it here."""

    def __init__(self):
        self._value = contextvars.ContextVar("devstack_dpop_jkt", default=None)

    @contextlib.contextmanager
    def using(self, jkt: str | None):
        token = self._value.set(jkt)
        try:
            yield
        finally:
            self._value.reset(token)

    def get(self) -> str | None:
        return self._value.get()


BINDING = _Binding()


def proofs_of(headers) -> list[str]:
    """Every ``DPoP`` header value of a request (a WSGI server joins repeated ones with commas,
    which no compact JWS contains)."""
    value = headers.get("DPoP")
    return [] if value is None else [part.strip() for part in value.split(",")]


def challenge(error: "ProofRefused | str", description: str | None = None) -> str:
    """A ``WWW-Authenticate: DPoP`` challenge (RFC 9449 section 7.1)."""
    if isinstance(error, ProofRefused):
        error, description = error.error, error.reason
    value = f'DPoP algs="{" ".join(ALGORITHMS)}", error="{error}"'
    return value + (f', error_description="{description}"' if description else "")


class ProofRefused(Exception):
    """``error`` is the RFC 9449 code (``invalid_dpop_proof`` or ``use_dpop_nonce``)."""

    def __init__(self, reason: str, *, error: str = "invalid_dpop_proof"):
        super().__init__(reason)
        self.reason = reason
        self.error = error


def thumbprint(jwk: dict) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK: the ``jkt`` a bound token names."""
    return _public_key(jwk).thumbprint()


def access_token_hash(token: str) -> str:
    digest = hashlib.sha256(token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def normalised_uri(url: str) -> str:
    """RFC 9449 section 4.3 (RFC 3986 section 6.2.2 and 6.2.3): scheme and host in lower case, no
    default port, percent-encoding in upper case and unreserved characters decoded; no query or
    fragment."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and (scheme, parts.port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{parts.port}"
    segments = [quote(unquote(segment), safe="!$&'()*+,;=:@") for segment in (parts.path or "/").split("/")]
    return urlunsplit((scheme, host, "/".join(segments), "", ""))


def _public_key(jwk) -> ECKey | RSAKey:
    if not isinstance(jwk, dict) or PRIVATE_MEMBERS & set(jwk):
        raise ProofRefused("the jwk header must be a public key")
    try:
        if jwk.get("kty") == "EC":
            return ECKey.import_key(jwk)
        if jwk.get("kty") == "RSA":
            return RSAKey.import_key(jwk)
    except (JoseError, ValueError, TypeError):
        pass
    raise ProofRefused("the jwk header is not a usable EC or RSA public key")


class ServerNonces:
    """The nonce a server demands: a new one every ``lifetime`` seconds, the previous one still
    accepted for one more (so a request in flight at the change is not refused)."""

    def __init__(self, *, lifetime: int = NONCE_LIFETIME, clock: Callable[[], float] = time.time):
        self.lifetime = lifetime
        self.clock = clock
        self._lock = threading.Lock()
        self._current, self._previous, self._since = secrets.token_urlsafe(24), None, clock()

    def current(self) -> str:
        with self._lock:
            return self._rotated()[0]

    def accepts(self, nonce) -> bool:
        with self._lock:
            return isinstance(nonce, str) and nonce in self._rotated()

    def _rotated(self) -> tuple[str, ...]:
        """The nonces accepted now, current first; called with the lock held."""
        now = self.clock()
        if now - self._since >= 2 * self.lifetime:
            self._previous, self._current, self._since = None, secrets.token_urlsafe(24), now
        elif now - self._since >= self.lifetime:
            self._previous, self._current, self._since = self._current, secrets.token_urlsafe(24), now
        return (self._current,) if self._previous is None else (self._current, self._previous)


class ProofChecker:
    """One server's proof checks, with its replay cache and (optionally) its nonces.

    ``window`` is how many seconds a proof's ``iat`` may lie in the past or the future; a ``jti``
    is remembered (per key) for twice that, the longest a proof stays acceptable, and at most
    ``max_jtis`` of them are held: when that many live ones are remembered, proofs are refused
    rather than a replay risked.
    """

    def __init__(
        self,
        *,
        nonces: ServerNonces | None = None,
        window: int = WINDOW,
        max_jtis: int = MAX_JTIS,
        clock: Callable[[], float] = time.time,
    ):
        self.nonces = nonces
        self.window = window
        self.max_jtis = max_jtis
        self.clock = clock
        self._seen: dict[tuple[str, str], float] = {}
        self._next_purge = 0.0
        self._lock = threading.Lock()

    @classmethod
    def of(cls, *, demands_nonce: bool, nonces: ServerNonces | None) -> "ProofChecker":
        """A server's checker: with the origin's shared ``nonces`` (or its own) when it demands one."""
        return cls(nonces=(nonces or ServerNonces()) if demands_nonce else None)

    def nonce_header(self) -> dict[str, str]:
        """``DPoP-Nonce`` with the current nonce for every answer (RFC 9449 sections 8.2 and 9), when
        this server demands one."""
        return {} if self.nonces is None else {"DPoP-Nonce": self.nonces.current()}

    def check(self, headers: list[str], *, method: str, url: str, access_token: str | None = None) -> str:
        """The proof's key thumbprint (``jkt``) when ``headers`` (every ``DPoP`` header the request
        carried) hold exactly one valid proof for this request; raises :class:`ProofRefused`."""
        if len(headers) != 1:
            raise ProofRefused("exactly one DPoP header is required")
        proof = headers[0]
        if len(proof) > MAX_PROOF_BYTES:
            raise ProofRefused("the proof is too large")
        if proof.count(".") != 2:
            raise ProofRefused("the proof is not a compact JWS")
        try:
            signed = jws.extract_compact(proof.encode("ascii"), registry=_REGISTRY)
            header = signed.headers()
            claims = json.loads(signed.payload)
        except (JoseError, ValueError, UnicodeError, RecursionError):
            raise ProofRefused("the proof is not a compact JWS") from None
        if header.get("typ") != PROOF_TYPE:
            raise ProofRefused("typ must be dpop+jwt")
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise ProofRefused(f"alg {str(alg)[:16]!r} is not accepted")
        key = _public_key(header.get("jwk"))
        if alg in _CURVES and (not isinstance(key, ECKey) or key.curve_name != _CURVES[alg]):
            raise ProofRefused("the key does not match alg")
        if alg not in _CURVES and not isinstance(key, RSAKey):
            raise ProofRefused("the key does not match alg")
        try:
            valid = jws.validate_compact(signed, key, registry=_REGISTRY)
        except (JoseError, ValueError, TypeError):
            valid = False
        if not valid:
            raise ProofRefused("the signature is not valid")
        if not isinstance(claims, dict):
            raise ProofRefused("the claims are not a JSON object")
        if claims.get("htm") != method:
            raise ProofRefused("htm does not match the request method")
        htu = claims.get("htu")
        if not isinstance(htu, str) or normalised_uri(htu) != normalised_uri(url):
            raise ProofRefused("htu does not match the request URL")
        iat, now = claims.get("iat"), self.clock()
        # json reads NaN, which every comparison below lets through (isfinite: floats only, 10**400 overflows it).
        if isinstance(iat, float) and not math.isfinite(iat):
            raise ProofRefused("iat is missing")
        if not isinstance(iat, int | float) or isinstance(iat, bool):
            raise ProofRefused("iat is missing")
        if iat < now - self.window:
            raise ProofRefused("iat is too old")
        if iat > now + self.window:
            raise ProofRefused("iat is in the future")
        if access_token is not None:
            if "ath" not in claims:
                raise ProofRefused("ath is missing")
            if claims["ath"] != access_token_hash(access_token):
                raise ProofRefused("ath does not match the access token")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 8 <= len(jti) <= 256:
            raise ProofRefused("jti is missing or not 8 to 256 characters")
        if self.nonces is not None:
            if "nonce" not in claims:
                raise ProofRefused("a nonce is required", error="use_dpop_nonce")
            if not self.nonces.accepts(claims["nonce"]):
                raise ProofRefused("the nonce is not a current one", error="use_dpop_nonce")
        jkt = key.thumbprint()
        self._remember(jkt, jti, now)
        return jkt

    def _remember(self, jkt: str, jti: str, now: float) -> None:
        with self._lock:
            if now >= self._next_purge or len(self._seen) >= self.max_jtis:
                # A proof can be accepted until its iat (at most ``window`` after it was first seen)
                # is ``window`` old: a jti seen longer ago than twice the window cannot come back.
                self._seen = {k: t for k, t in self._seen.items() if t > now - 2 * self.window}
                self._next_purge = now + self.window
            if (jkt, jti) in self._seen:
                raise ProofRefused("the proof was used before (jti replay)")
            if len(self._seen) >= self.max_jtis:
                raise ProofRefused("too many proofs in the replay window; try again later")
            self._seen[(jkt, jti)] = now
