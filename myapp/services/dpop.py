"""Sender-constrained tokens (RFC 9449): a session's own key pair and the proofs made with it.

Each session that signs in with DPoP gets a key pair of its own (:class:`DPoPKey`); its private half
is stored encrypted with the session's tokens and never leaves the server. Every request that
presents a DPoP-bound token, or asks for one, carries a fresh proof: a JWT signed with that key
naming the method (``htm``), the URL without query or fragment (``htu``), when (``iat``), a unique
``jti``, the hash of the access token it accompanies (``ath``) and the server's latest ``nonce``.
joserfc does the JOSE work.
"""

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey
from joserfc.jws import JWSRegistry
from urllib3.util import parse_url

from myapp.memo import remember

# What this app can sign proofs with, in the order it prefers them (RFC 9449 suggests ES256).
ALGORITHMS = ("ES256", "ES384", "PS256", "RS256")
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384"}
RSA_BITS = 2048
PROOF_TYPE = "dpop+jwt"
# Nonces remembered per process; a server beyond this many is asked again (one retry).
MAX_NONCES = 1024
MAX_NONCE_LENGTH = 512


class DPoPKeyUnreadable(Exception):
    """A stored key that cannot be used (no encryption key in use can read it, or it is damaged)."""


_ALGORITHMS = {alg: JWSRegistry.algorithms[alg] for alg in ALGORITHMS}


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def choose_algorithm(advertised: Iterable[str]) -> str | None:
    """The algorithm a new session's key uses: ES256 when the provider takes it, else the first
    of the provider's ``dpop_signing_alg_values_supported`` this app can make; None if none."""
    offered = [alg for alg in advertised if isinstance(alg, str)]
    for alg in ALGORITHMS:
        if alg in offered:
            return alg
    return None


def access_token_hash(access_token: str) -> str:
    """``ath``: base64url of the SHA-256 of the access token's ASCII, unpadded (RFC 9449 section 4.2)."""
    return _b64(hashlib.sha256(access_token.encode("ascii")).digest()).decode("ascii")


def target_uri(url: str) -> str:
    """``htu``: the request's URL without query and fragment (RFC 9449 section 4.2), its scheme and
    host lower-cased and a default port dropped, as section 4.3's comparison normalises them."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    port = parts.port
    if port is not None and (scheme, port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    # The path exactly as urllib3 (the proxy's client, and requests' underneath) puts it on the
    # wire: escapes in upper case, anything outside RFC 3986's path characters encoded as UTF-8.
    path = parse_url(url).path or "/"
    return urlunsplit((scheme, host, path, "", ""))


@dataclass(frozen=True)
class DPoPKey:
    """One session's key pair; ``alg`` is what its proofs are signed with."""

    alg: str
    key: ECKey | RSAKey = field(repr=False)
    public_jwk: Mapping = field(repr=False, compare=False)
    # The proof header is the same for every proof of this key: encoded once.
    _header: bytes = field(repr=False, compare=False, default=b"")

    @classmethod
    def generate(cls, alg: str = "ES256") -> "DPoPKey":
        if alg in _EC_CURVES:
            key = ECKey.generate_key(_EC_CURVES[alg], private=True)
        elif alg in ("PS256", "RS256"):
            key = RSAKey.generate_key(RSA_BITS, private=True)
        else:
            raise ValueError(f"DPoP proofs cannot be signed with {alg!r}")
        return cls._of(alg, key)

    @classmethod
    def _of(cls, alg: str, key) -> "DPoPKey":
        public_jwk = key.as_dict(private=False)
        header = {"typ": PROOF_TYPE, "alg": alg, "jwk": public_jwk}
        return cls(alg=alg, key=key, public_jwk=public_jwk, _header=_b64(json.dumps(header, separators=(",", ":")).encode()))

    @classmethod
    def from_json(cls, text: str | None) -> "DPoPKey":
        """A key as :meth:`to_json` stored it; raises :class:`DPoPKeyUnreadable` for anything else."""
        try:
            document = json.loads(text)
            alg, jwk = document["alg"], document["jwk"]
            if alg in _EC_CURVES:
                key = ECKey.import_key(jwk)
                if key.curve_name != _EC_CURVES[alg]:
                    raise ValueError("curve does not match the algorithm")
            elif alg in ("PS256", "RS256"):
                key = RSAKey.import_key(jwk)
            else:
                raise ValueError("unknown algorithm")
            if not key.is_private:
                raise ValueError("not a private key")
        except (TypeError, ValueError, KeyError, JoseError):
            raise DPoPKeyUnreadable() from None
        return cls._of(alg, key)

    def to_json(self) -> str:
        """The private key as stored (encrypted) with the session's tokens."""
        return json.dumps({"alg": self.alg, "jwk": self.key.as_dict(private=True)}, separators=(",", ":"))

    def thumbprint(self) -> str:
        """The public key's RFC 7638 thumbprint: the ``jkt`` a bound token's ``cnf`` names."""
        return self.key.thumbprint()

    def proof(
        self,
        method: str,
        url: str,
        *,
        access_token: str | None = None,
        nonce: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> str:
        """A fresh proof for one HTTP request (never reused: each has its own ``jti``): a compact
        JWS of the key's constant header and these claims, signed by joserfc's algorithm (for EC
        keys, the raw r||s signature JWS requires)."""
        claims = {"jti": secrets.token_urlsafe(18), "htm": method, "htu": target_uri(url), "iat": int(clock())}
        if access_token is not None:
            claims["ath"] = access_token_hash(access_token)
        if nonce is not None:
            claims["nonce"] = nonce
        signing_input = self._header + b"." + _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = _ALGORITHMS[self.alg].sign(signing_input, self.key)
        return (signing_input + b"." + _b64(signature)).decode("ascii")


def origin_of(url: str) -> str:
    """The server a nonce belongs to: scheme, host and port."""
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def usable_nonce(value: str | None) -> str | None:
    """A ``DPoP-Nonce`` header worth keeping: visible ASCII (RFC 9449 section 8.1's NQCHAR), bounded."""
    if not value or len(value) > MAX_NONCE_LENGTH or not all("\x21" <= c <= "\x7e" and c not in '"\\' for c in value):
        return None
    return value


class Nonces:
    """The latest ``DPoP-Nonce`` each server gave, in this process (a process that has not heard it
    yet pays one retry; docs/dpop.md says why this is not shared across processes)."""

    def __init__(self):
        self._nonces: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, url: str) -> str | None:
        return self._nonces.get(origin_of(url))

    def remember(self, url: str, value: str | None) -> str | None:
        """Keep the server's nonce, when it sent a usable one; return it."""
        nonce = usable_nonce(value)
        if nonce is None:
            return None
        origin = origin_of(url)
        with self._lock:
            if self._nonces.get(origin) != nonce:
                remember(self._nonces, origin, nonce, MAX_NONCES)
        return nonce

    def retry_with(self, url: str, value: str | None, *, sent: str | None, asked: bool) -> str | None:
        """Keep the nonce an answer carried; return it when the server ``asked`` for one
        (``use_dpop_nonce``) and it is not the one the refused proof already had: the request is
        then worth sending once more with it (RFC 9449 sections 8 and 9)."""
        nonce = self.remember(url, value)
        return nonce if asked and nonce is not None and nonce != sent else None


def challenge_error(header: str | None) -> str | None:
    """The ``error`` of a ``DPoP`` challenge in a ``WWW-Authenticate`` header (``use_dpop_nonce``,
    ``invalid_dpop_proof``, ``invalid_token``...), or None when there is none."""
    from myapp.services.oidc.errors import error_code
    from myapp.services.stepup import challenges

    for scheme, params in challenges(header):
        if scheme == "dpop" and params.get("error"):
            return error_code(params["error"])  # it is logged: a code, or "invalid"
    return None
