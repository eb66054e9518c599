"""A DPoP proof checked the way a strict server checks it (RFC 9449 section 4.3), written
independently of the app's proof maker, for the test doubles and the tests' own assertions."""

import base64
import hashlib
import json
import time
from urllib.parse import urlsplit, urlunsplit

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
# joserfc's default allows a 512-byte header: too small for an RSA public key in ``jwk``.
_REGISTRY = jws.JWSRegistry()
_REGISTRY.max_header_length = 4096


class ProofRefused(Exception):
    pass


def b64url_sha256(value: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(value.encode("ascii")).digest()).rstrip(b"=").decode()


def normalised(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port
    netloc = (parts.hostname or "").lower()
    if port and (parts.scheme.lower(), port) not in (("http", 80), ("https", 443)):
        netloc += f":{port}"
    return urlunsplit((parts.scheme.lower(), netloc, parts.path or "/", "", ""))


def verify_proof(proof: str, *, method: str, url: str, access_token: str | None = None, max_age: int = 60):
    """(header, claims, jkt) of a valid proof for this request; raises :class:`ProofRefused`."""
    try:
        signed = jws.extract_compact(proof.encode("ascii"), registry=_REGISTRY)
        header = signed.headers()
        claims = json.loads(signed.payload)
    except (JoseError, ValueError, UnicodeError) as e:
        raise ProofRefused(f"malformed: {e}") from None
    if header.get("typ") != "dpop+jwt":
        raise ProofRefused("typ")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict) or PRIVATE_MEMBERS & set(jwk):
        raise ProofRefused("jwk")
    alg = header.get("alg")
    key = (ECKey if jwk.get("kty") == "EC" else RSAKey).import_key(jwk)
    try:
        if not jws.validate_compact(signed, key, algorithms=[alg]):
            raise ProofRefused("signature")
    except JoseError:
        raise ProofRefused("signature") from None
    if claims.get("htm") != method:
        raise ProofRefused("htm")
    if normalised(claims.get("htu", "")) != normalised(url):
        raise ProofRefused(f"htu {claims.get('htu')!r} != {url!r}")
    if not isinstance(claims.get("iat"), int) or abs(time.time() - claims["iat"]) > max_age:
        raise ProofRefused("iat")
    if not isinstance(claims.get("jti"), str) or len(claims["jti"]) < 16:
        raise ProofRefused("jti")
    if access_token is not None and claims.get("ath") != b64url_sha256(access_token):
        raise ProofRefused("ath")
    return header, claims, key.thumbprint()
