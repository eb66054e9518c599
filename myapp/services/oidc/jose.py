"""Every check on the JWTs a provider sends: ID tokens and back-channel logout tokens.

The ID-token algorithm follows Authlib's ``sync_openid.parse_id_token`` and OpenID Connect Core
3.1.3.7, stricter where the conformance tests are (an untrusted extra audience, an HMAC keyed with
public material, a key named by the token's own header), and each failure has its own reason code
so that audit records and tests can tell them apart. joserfc does the cryptography.
"""

import base64
import hashlib
import hmac
import json
import math
from collections.abc import Callable

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from myapp.services.oidc.errors import OIDCError
from myapp.services.oidc.metadata import HMAC_ALGORITHMS, ProviderDocuments
from myapp.text import storable

_KEY_TYPES = {"RS": RSAKey, "PS": RSAKey, "ES": ECKey, "Ed": OKPKey}
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}

CLOCK_SKEW = 60
MAX_TOKEN_AGE = 24 * 3600
MAX_TOKEN_BYTES = 64 * 1024
BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"


def at_hash(access_token: str, alg: str) -> str:
    """at_hash: the left half of the hash the signing algorithm uses (SHA-512 for EdDSA)."""
    hash_function = {"256": hashlib.sha256, "384": hashlib.sha384}.get(alg[-3:], hashlib.sha512)
    digest = hash_function(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode("ascii")


class TokenValidator:
    """Checks one provider's JWTs for one client; the keys come from that provider's documents."""

    def __init__(
        self,
        *,
        issuer: str,
        client_id: str,
        client_secret: str,
        documents: ProviderDocuments,
        clock: Callable[[], float],
    ):
        self.issuer = issuer
        self.client_id = client_id
        self.client_secret = client_secret
        self.documents = documents
        self.clock = clock

    def verify_signature(self, token: str) -> tuple[dict, dict]:
        """Verify a signed JWT from the provider; return (header, claims). Never ``none``."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
            raise OIDCError("malformed_token", "The token is not a signed JWT.")
        try:
            signed = jws.extract_compact(token.encode("ascii"))
            header = signed.headers()
        # RecursionError: JSON nested past Python's limit ("[" * 5000), before any signature check.
        except (JoseError, ValueError, UnicodeError, RecursionError):
            raise OIDCError("malformed_token", "The token is not a signed JWT.") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.documents.metadata().signing_algorithms:
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
        except (ValueError, RecursionError):
            raise OIDCError("malformed_token", "The token's claims are not JSON.") from None
        if not isinstance(claims, dict):
            raise OIDCError("malformed_token", "The token's claims are not a JSON object.")
        return header, claims

    def _verification_key(self, header: dict, alg: str):
        if alg in HMAC_ALGORITHMS:
            # OIDC Core 10.1: an HMAC token is keyed with the client secret, never with public material.
            if not self.client_secret:  # private_key_jwt, tls_client_auth, a public client
                raise OIDCError("bad_algorithm", f"The token is signed with {alg}, which needs a client secret, and this client has none.")
            return OctKey.import_key(self.client_secret.encode("utf-8"))
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise OIDCError("unknown_key", "The token names its key oddly.")
        candidates = self._candidates(self.documents.signing_keys(), kid, alg)
        if not candidates and kid is not None:
            candidates = self._candidates(self.documents.signing_keys(refetch=True), kid, alg)
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
        if claims.get("iss") != self.issuer:
            raise OIDCError("bad_issuer", f"The {label} was issued by someone else.")
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise OIDCError("bad_audience", f"The {label} has no valid audience.")
        if self.client_id not in audiences:
            raise OIDCError("bad_audience", f"The {label} is meant for another application.")
        if set(audiences) - {self.client_id}:
            raise OIDCError("untrusted_audience", f"The {label} is also meant for applications this one does not trust.")
        if "azp" in claims and claims["azp"] != self.client_id:
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
        # The subject keys the person: never changed to fit the database, so one it cannot keep
        # as it is names nobody here.
        if not isinstance(sub, str) or not sub or len(sub) > 255 or not storable(sub):
            raise OIDCError("missing_sub", "The ID token does not name the user.")
        exp = claims.get("exp")
        if not _is_number(exp):
            raise OIDCError("missing_exp", "The ID token has no expiry.")
        if exp <= self.clock() - CLOCK_SKEW:
            raise OIDCError("expired", "The ID token has expired.")
        if nonce is not None:
            sent = claims.get("nonce")
            # Compared as UTF-8, a lone surrogate kept (helper-125: str.encode() raised on one, a 500).
            if not isinstance(sent, str) or not hmac.compare_digest(_utf8(sent), _utf8(nonce)):
                raise OIDCError("bad_nonce", "The ID token does not answer this sign-in (nonce mismatch).")
        claimed_hash = claims.get("at_hash")
        if claimed_hash is not None and access_token is not None:
            if not isinstance(claimed_hash, str) or not hmac.compare_digest(
                _utf8(claimed_hash), at_hash(access_token, header["alg"]).encode()
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
        # A sid is compared by its stored form (sessions.stored_sid); a subject as it is.
        if (sub is not None and (not isinstance(sub, str) or not sub or not storable(sub))) or (
            sid is not None and (not isinstance(sid, str) or not sid)
        ):
            raise OIDCError("bad_sub_or_sid", "The logout token's user or session is malformed.")
        if "nonce" in claims:
            raise OIDCError("nonce_present", "A logout token must not carry a nonce.")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 255 or not storable(jti):
            raise OIDCError("missing_jti", "The logout token has no identifier (jti).")
        return claims


def unverified_issuer(token: str) -> str | None:
    """The ``iss`` a JWT claims, read before any check, only to pick the provider whose keys and
    rules then check it (back-channel logout). None for anything that is not a JWT with a string ``iss``."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
        return None
    try:
        claims = json.loads(jws.extract_compact(token.encode("ascii")).payload)
    except (JoseError, ValueError, UnicodeError, RecursionError):  # "[" * 5000: helper-116
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer if isinstance(issuer, str) else None


def _media_type(typ) -> str | None:
    """A JOSE ``typ`` compared as RFC 7515 says: case-insensitive, ``application/`` optional."""
    if typ is None:
        return None
    if not isinstance(typ, str):
        return "?"
    return typ.lower().removeprefix("application/")


def _is_number(value) -> bool:
    """A time claim's number: finite (json reads NaN and Infinity, and no comparison with NaN is true)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool)  # any int: math.isfinite overflows on 10**400


def _utf8(text: str) -> bytes:
    """``text`` as UTF-8 to compare, whatever a token holds: a lone surrogate as its own bytes."""
    return text.encode("utf-8", "surrogatepass")
