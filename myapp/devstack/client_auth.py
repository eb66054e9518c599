"""How the development provider checks a client's ``private_key_jwt`` assertion (RFC 7523,
OpenID Connect Core section 9): signed by one of the client's registered keys, ``iss`` = ``sub``
= client id, ``aud`` the issuer or the token endpoint, unexpired, not before its ``nbf`` nor issued later than
now, a ``jti`` never seen before."""

import base64
import json
import math
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from myapp.settings import SettingsError

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ["PS256", "RS256", "ES256"]
MAX_LIFETIME = 300
CLOCK_SKEW = 60


def load_client_keys(paths: tuple[Path, ...]) -> list:
    """The public keys of PEM files (a private key file is read for its public part)."""
    keys = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise SettingsError(f"devstack client_keys: cannot read {path}: {e.strerror or e}") from None
        try:
            key = (load_pem_private_key(data, password=None).public_key() if b"PRIVATE KEY" in data
                   else load_pem_public_key(data))
            pem = key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
            imported = (RSAKey if "RSA" in type(key).__name__ else ECKey).import_key(pem)
        except (ValueError, TypeError, JoseError):
            raise SettingsError(f"devstack client_keys: {path} is not a PEM key") from None
        imported.ensure_kid()
        keys.append(imported)
    return keys


class ClientAssertions:
    def __init__(self, *, client_id: str, keys: list, audiences: tuple[str, ...], clock=time.time):
        self.client_id = client_id
        self.keys = keys
        self.audiences = audiences
        self.clock = clock
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def verify(self, form) -> bool:
        """Whether the form carries a valid assertion of this client."""
        if not self.keys or form.get("client_assertion_type") != ASSERTION_TYPE:
            return False
        token = form.get("client_assertion") or ""
        try:
            header = json.loads(_b64decode(token.split(".")[0]))
        except (ValueError, IndexError, RecursionError):
            return False
        if not isinstance(header, dict):
            return False
        candidates = [k for k in self.keys if k.kid == header.get("kid")] or (self.keys if "kid" not in header else [])
        for key in candidates:
            try:
                claims = jwt.decode(token, key, algorithms=ALGORITHMS).claims
            # TypeError: joserfc reads a header's "crit" as a list of names (1, null, [1] raise it).
            except (JoseError, ValueError, TypeError, RecursionError):
                continue
            return self._claims_ok(claims, form.get("client_id"))
        return False

    def _claims_ok(self, claims: dict, client_id: str | None) -> bool:
        now = self.clock()
        if claims.get("iss") != self.client_id or claims.get("sub") != self.client_id:
            return False
        if client_id is not None and client_id != self.client_id:
            return False
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if not any(a in self.audiences for a in audiences):
            return False
        exp, jti = claims.get("exp"), claims.get("jti")
        # _is_number: json reads NaN, which every comparison lets through, and out of the replay cache.
        if not _is_number(exp) or exp < now or exp - now > MAX_LIFETIME or not isinstance(jti, str):
            return False
        # RFC 7523 section 3: not before its nbf, and issued no later than now (a minute of clock skew each).
        for name in ("nbf", "iat"):
            when = claims.get(name)
            if when is not None and (not _is_number(when) or when > now + CLOCK_SKEW):
                return False
        with self._lock:
            self._seen = {k: v for k, v in self._seen.items() if v >= now}
            if jti in self._seen:
                return False  # replayed
            self._seen[jti] = exp
        return True

    def authenticate(self, query_client, request):
        """Authlib's client-auth hook for ``private_key_jwt``."""
        form = request.payload.data if hasattr(request, "payload") else request.form
        if not self.verify(form):
            return None
        return query_client(self.client_id)


def _is_number(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool)


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
