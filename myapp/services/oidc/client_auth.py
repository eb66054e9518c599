"""How this app proves who it is to a provider's token, revocation and pushed-authorization
endpoints: a shared secret (``client_secret_basic``, ``client_secret_post``) or a key
(``private_key_jwt``, RFC 7523 and OpenID Connect Core section 9).

Each method is a callable of Authlib's client-auth shape, ``(auth, method, uri, headers, body)``
returning ``(uri, headers, body)``, used through ``OAuth2Session.client_auth(callable)``.
"""

import base64
import hashlib
import secrets
import time
from collections.abc import Callable
from urllib.parse import parse_qsl, quote_plus

from authlib.common.urls import add_params_to_qs
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from myapp.services.oidc.errors import ProviderMisconfigured
from myapp.settings import OIDCSettings

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 60  # seconds; SPEC.md: exp at most 60 s after iat
# What each kind of key can make, in the order tried when the provider does not say.
ALGORITHMS = {"RSA": ("PS256", "RS256"), "EC": ("ES256",)}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def client_secret_basic(auth, method, uri, headers, body):
    """RFC 6749 section 2.3.1: id and secret each form-urlencoded, then joined and base64-encoded
    (Authlib's own method skips the encoding: a secret with ``:``, ``%``, ``+`` or non-ASCII
    characters is then misread by providers that decode as the RFC says)."""
    pair = f"{quote_plus(auth.client_id, safe='')}:{quote_plus(auth.client_secret or '', safe='')}"
    headers["Authorization"] = "Basic " + base64.b64encode(pair.encode("ascii")).decode("ascii")
    return uri, headers, body


def _with_client_id(body: str, client_id: str, more: list) -> str:
    """``body`` with ``more`` added, and ``client_id`` unless it is there already (a pushed
    authorization request carries it; a parameter twice is refused by strict providers)."""
    present = any(name == "client_id" for name, _ in parse_qsl(body or "", keep_blank_values=True))
    return add_params_to_qs(body or "", ([] if present else [("client_id", client_id)]) + more)


def client_secret_post(auth, method, uri, headers, body):
    body = _with_client_id(body, auth.client_id, [("client_secret", auth.client_secret or "")])
    if "Content-Length" in headers:
        headers["Content-Length"] = str(len(body))
    return uri, headers, body


class ClientKeys:
    """The keys of ``client_keys``: the first signs, every one is published at /auth/jwks.json."""

    def __init__(self, pems: tuple[str, ...], certificate: str | None = None):
        self.keys = [self._import(pem) for pem in pems]
        self.thumbprints = {}
        if certificate is not None:
            der = x509.load_pem_x509_certificate(certificate.encode("utf-8")).public_bytes(Encoding.DER)
            self.thumbprints = {
                "x5t#S256": _b64(hashlib.sha256(der).digest()),
                "x5t": _b64(hashlib.sha1(der).digest()),  # noqa: S324 - the header Entra ID reads, not a security check
            }

    @staticmethod
    def _import(pem: str):
        private = load_pem_private_key(pem.encode("utf-8"), password=None)
        key = (RSAKey if isinstance(private, rsa.RSAPrivateKey) else ECKey).import_key(pem)
        key.ensure_kid()  # the RFC 7638 thumbprint: stable, and changes with the key
        return key

    def __bool__(self) -> bool:
        return bool(self.keys)

    @property
    def signing_key(self):
        return self.keys[0]

    def public_jwks(self) -> list[dict]:
        return [{**key.as_dict(private=False), "use": "sig"} for key in self.keys]

    def algorithm_for(self, advertised: tuple[str, ...] | None) -> str:
        """The first algorithm the provider advertises that the signing key can make."""
        mine = ALGORITHMS[self.signing_key.key_type]
        if advertised is None:
            return mine[0] if self.signing_key.key_type == "EC" else "RS256"
        for alg in advertised:
            if alg in mine:
                return alg
        raise ProviderMisconfigured(
            f"The provider accepts client assertions signed with {', '.join(advertised) or 'nothing'}; "
            f"the configured key can make only {', '.join(mine)}."
        )

    def assertion(self, *, client_id: str, audience: str, alg: str, now: Callable[[], float] = time.time) -> str:
        issued = int(now())
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "jti": secrets.token_urlsafe(24),
            "iat": issued,
            "nbf": issued,
            "exp": issued + ASSERTION_LIFETIME,
        }
        header = {"alg": alg, "typ": "JWT", "kid": self.signing_key.kid, **self.thumbprints}
        return jwt.encode(header, claims, self.signing_key, algorithms=[alg])


def private_key_jwt(keys: ClientKeys, *, audience: str, alg: str):
    """A client-auth callable that adds a fresh assertion to each request it signs."""

    def sign(auth, method, uri, headers, body):
        assertion = keys.assertion(client_id=auth.client_id, audience=audience, alg=alg)
        body = _with_client_id(body, auth.client_id, [("client_assertion_type", ASSERTION_TYPE), ("client_assertion", assertion)])
        if "Content-Length" in headers:
            headers["Content-Length"] = str(len(body))
        return uri, headers, body

    return sign


def assertion_audience(settings: OIDCSettings, token_endpoint: str) -> str:
    return token_endpoint if settings.client_assertion_audience == "token_endpoint" else settings.issuer
