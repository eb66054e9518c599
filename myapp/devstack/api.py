"""The demo upstream API under /_dev/api: a resource server that trusts only the provider's JWTs.

It knows the provider only as a JWKS URL, fetched over HTTP like any API behind a real provider,
so what the BFF proxies to it is tested end to end. Endpoint bodies are JSON; errors have the
shape ``{"error": CODE, "message": text}``.
"""

import hashlib
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import requests
from joserfc import jws, jwt
from joserfc.errors import ClaimError, ExpiredTokenError, JoseError, MissingClaimError
from joserfc.jwk import KeySet, RSAKey
from pyramid.response import Response
from pyramid.security import NO_PERMISSION_REQUIRED
from pyramid.view import exception_view_config

from myapp.devstack.dpop import ProofChecker, ProofRefused, ServerNonces, challenge, proofs_of
from myapp.devstack.keys import ALGORITHM
from myapp.devstack.models import MFA_ACR
from myapp.devstack.settings import APISettings
from myapp.devstack.web import devstack_view, json_response, method_not_allowed, presented_token
from myapp.text import storable

#: The registry key of the running :class:`DemoAPI` objects, by path segment ("api", "api2").
APIS = "myapp.devstack.apis"

CHUNK = 64 * 1024
MAX_BYTES = 1 << 30
MAX_NOTE_LENGTH = 500
MAX_JSON_BODY = 16 * 1024
JWKS_TIMEOUT = 5.0
JWKS_REFETCH_INTERVAL = 60
REALM = "demo"
WHOLE_NUMBER = re.compile(r"[0-9]{1,10}")
# What GET /_dev/api/bytes streams: byte i of the body is i % 256.
PATTERN = bytes(range(256)) * (CHUNK // 256)

# /_dev/api, and /_dev/api2 (another audience) when devstack.api2.audience is set.
_BASE = "/_dev/{api:api2?}"
ROUTES = {
    "devstack.api.me": _BASE + "/me",
    "devstack.api.notes": _BASE + "/notes",
    "devstack.api.note": _BASE + "/notes/{id}",
    "devstack.api.ping": _BASE + "/ping",
    "devstack.api.sensitive": _BASE + "/sensitive",
    "devstack.api.echo": _BASE + "/echo/*rest",
    "devstack.api.bytes": _BASE + "/bytes",
    "devstack.api.upload": _BASE + "/upload",
}


def includeme(config):
    for name, pattern in ROUTES.items():
        config.add_route(name, pattern)
        config.add_view(method_not_allowed, route_name=name, require_csrf=False, permission=NO_PERMISSION_REQUIRED)


class APIProblem(Exception):
    """An error answer of the demo API, rendered by :func:`api_problem`."""

    def __init__(self, status: int, error: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers or {}


class InvalidAccessToken(Exception):
    """The bearer token is refused; the message is safe to show (and to put in a header)."""


class KeysUnavailable(Exception):
    """The provider's JWKS could not be fetched."""


def key_by_kid(keys: list[RSAKey], kid: str | None) -> RSAKey | None:
    """The key ``kid`` names; a token without kid is verified when the set leaves one candidate."""
    if kid is None:
        return keys[0] if len(keys) == 1 else None
    return next((key for key in keys if key.kid == kid), None)


class RemoteKeySet:
    """The provider's public keys, fetched from ``url`` and cached.

    An unknown ``kid`` refetches the set (key rotation), at most once a minute; the first fetch
    does not count against that.
    """

    def __init__(self, url: str, *, clock=time.monotonic):
        self.url = url
        self.clock = clock
        self._lock = threading.Lock()
        self._keys: list[RSAKey] | None = None
        self._fetched_at = 0.0

    def key_for(self, kid: str | None) -> RSAKey | None:
        # Held during the fetch on purpose: concurrent requests wait for one fetch, not make many.
        with self._lock:
            if self._keys is None:
                self._fetch()
            elif key_by_kid(self._keys, kid) is None and self.clock() - self._fetched_at >= JWKS_REFETCH_INTERVAL:
                self._fetch()
            return key_by_kid(self._keys, kid)

    def _fetch(self) -> None:
        self._fetched_at = self.clock()
        try:
            response = requests.get(self.url, timeout=JWKS_TIMEOUT, allow_redirects=False)
            response.raise_for_status()
            key_set = KeySet.import_key_set(response.json())
        except (requests.RequestException, ValueError, RecursionError, JoseError) as e:
            raise KeysUnavailable(f"cannot fetch the provider's keys from {self.url}: {type(e).__name__}") from None
        self._keys = [
            key
            for key in key_set
            if isinstance(key, RSAKey) and key.get("use", "sig") == "sig" and key.get("alg", ALGORITHM) == ALGORITHM
        ]


class PublishedKeySet:
    """The provider's published keys, read in-process when the API is served beside its provider.

    The keys its JWKS endpoint publishes (the provider signs with one key for its whole life),
    taken as they are: fetching them over HTTP from this very process could wait forever for a
    free thread while every thread waits for the keys, and importing the document again on every
    call cost the demo API a quarter of its time per call.
    """

    def __init__(self, keys: list[RSAKey]):
        self.keys = [key for key in keys if isinstance(key, RSAKey)]

    def key_for(self, kid: str | None) -> RSAKey | None:
        return key_by_kid(self.keys, kid)


def compact_of(token: str) -> jws.CompactSignature:
    """The token split into its header, payload and signature (nothing checked yet); its header
    is a JSON object. JSON nested too deep for Python to read is refused like any other."""
    try:
        compact = jws.extract_compact(token.encode("ascii"))
    except (JoseError, ValueError, UnicodeError, RecursionError):
        raise InvalidAccessToken("The access token is not a JWT.") from None
    if not isinstance(compact.protected, dict):
        raise InvalidAccessToken("The access token is not a JWT.")
    return compact


def claims_of(compact: jws.CompactSignature) -> dict | None:
    """The payload as claims, or None when it is not a JSON object."""
    try:
        claims = json.loads(compact.payload)
    except (ValueError, RecursionError):
        return None
    return claims if isinstance(claims, dict) else None


class AccessTokenVerifier:
    """RFC 9068-style checks: RS256 signature by the provider, ``iss``, ``aud``, ``exp``, ``sub``."""

    def __init__(self, *, keys: "RemoteKeySet | PublishedKeySet", issuer: str, audience: str, leeway: int):
        self.keys = keys
        self.claims = jwt.JWTClaimsRegistry(
            leeway=leeway,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": audience},
            exp={"essential": True},
            sub={"essential": True},
        )

    def verify(self, token: str) -> dict:
        """The token's claims; raises :class:`InvalidAccessToken` or :class:`KeysUnavailable`."""
        return self.verify_compact(compact_of(token))

    def verify_compact(self, compact: jws.CompactSignature, claims: dict | None = None) -> dict:
        """:meth:`verify`, for a token already split into its parts (split once, checked once), and
        its payload already read as ``claims`` when the caller had to read it first (to route it)."""
        header = compact.protected
        # Only the algorithm the provider uses: never none, never an HMAC keyed with a public key.
        if header.get("alg") != ALGORITHM:
            raise InvalidAccessToken(f"The access token must be signed with {ALGORITHM}.")
        key = self.keys.key_for(header.get("kid"))
        if key is None:
            raise InvalidAccessToken("The access token was signed with an unknown key.")
        try:
            # False for a signature that does not verify; it raises only for what it cannot check.
            valid = jws.validate_compact(compact, key, algorithms=[ALGORITHM])
        except (JoseError, TypeError, ValueError):
            # A header joserfc refuses (an unknown or ill-typed crit, a name it does not know), or
            # one it cannot read at all (a crit that is not a list raises TypeError inside it).
            raise InvalidAccessToken("The access token is malformed.") from None
        if not valid:
            raise InvalidAccessToken("The access token signature is invalid.")
        claims = claims if claims is not None else claims_of(compact)
        if claims is None:
            raise InvalidAccessToken("The access token is malformed.")
        try:
            self.claims.validate(claims)
        except ExpiredTokenError:
            raise InvalidAccessToken("The access token has expired.") from None
        except MissingClaimError as e:
            raise InvalidAccessToken(f"The access token lacks the {e.claim} claim.") from None
        except ClaimError as e:
            raise InvalidAccessToken(f"The access token {e.claim} claim is not accepted here.") from None
        return claims


@dataclass(frozen=True)
class Note:
    id: str
    text: str
    created_at: datetime

    def as_json(self) -> dict:
        return {"id": self.id, "text": self.text, "created_at": self.created_at.isoformat()}


class NoteStore:
    """Each user's notes, in memory."""

    def __init__(self):
        self._lock = threading.Lock()
        self._notes: dict[str, dict[str, Note]] = {}

    def list_for(self, subject: str) -> list[Note]:
        with self._lock:
            return list(reversed(self._notes.get(subject, {}).values()))

    def add(self, subject: str, text: str) -> Note:
        note = Note(id=secrets.token_hex(8), text=text, created_at=datetime.now(timezone.utc))
        with self._lock:
            self._notes.setdefault(subject, {})[note.id] = note
        return note

    def delete(self, subject: str, note_id: str) -> bool:
        with self._lock:
            return self._notes.get(subject, {}).pop(note_id, None) is not None


class IssuerVerifiers:
    """One verifier per trusted issuer; a token is checked by the one its ``iss`` names."""

    def __init__(self, verifiers: dict[str, AccessTokenVerifier]):
        self.verifiers = verifiers

    def verify(self, token: str) -> dict:
        compact = compact_of(token)
        claims = claims_of(compact)
        if claims is None:
            raise InvalidAccessToken("The access token is not a JWT.")
        issuer = claims.get("iss")
        verifier = self.verifiers.get(issuer) if isinstance(issuer, str) else None
        if verifier is None:
            raise InvalidAccessToken("The access token iss claim is not accepted here.")
        return verifier.verify_compact(compact, claims)


class DemoAPI:
    def __init__(self, settings: APISettings, *, keys=None, issuers: dict | None = None, nonces: ServerNonces | None = None):
        def verifier(issuer, key_set):
            return AccessTokenVerifier(keys=key_set, issuer=issuer, audience=settings.audience, leeway=settings.leeway)

        if issuers:
            self.verifier = IssuerVerifiers({issuer: verifier(issuer, key_set) for issuer, key_set in issuers.items()})
        else:
            self.verifier = verifier(settings.issuer, keys or RemoteKeySet(settings.jwks_uri))
        self.notes = NoteStore()
        # RFC 9449: DPoP-bound tokens come with proofs, checked here (and a nonce when it demands one).
        self.proofs = ProofChecker.of(demands_nonce=settings.dpop_nonce, nonces=nonces)


def api_of(request) -> DemoAPI:
    api = request.registry[APIS].get(request.matchdict.get("api", "api"))
    if api is None:
        raise APIProblem(404, "not_found", "There is no such API here.")
    return api


def unauthorized(message: str, *, error: str | None = "invalid_token") -> APIProblem:
    challenge = f'Bearer realm="{REALM}"'
    if error is not None:
        challenge += f', error="{error}", error_description="{message}"'
    return APIProblem(401, error or "unauthorized", message, {"WWW-Authenticate": challenge})


def dpop_unauthorized(api: "DemoAPI", error: ProofRefused | str, message: str | None = None) -> APIProblem:
    """401 with a ``DPoP`` challenge (RFC 9449 section 7.1), and the current nonce when it demands one."""
    headers = {"WWW-Authenticate": challenge(error, message), **api.proofs.nonce_header()}
    code = error.error if isinstance(error, ProofRefused) else error
    return APIProblem(401, code, message or error.reason, headers)


def authenticate(request) -> dict:
    """The claims of the request's access token, or a 401: a Bearer token (RFC 6750 3) that is
    bound to no key, or a DPoP-bound one with a valid proof by its key (RFC 9449 section 7)."""
    scheme, token = presented_token(request)
    api = api_of(request)
    if scheme == "dpop" and token is not None:
        try:
            jkt = api.proofs.check(proofs_of(request.headers), method=request.method, url=request.path_url, access_token=token)
        except ProofRefused as e:
            raise dpop_unauthorized(api, e) from None
        try:
            claims = api.verifier.verify(token)
        except InvalidAccessToken as e:
            raise dpop_unauthorized(api, "invalid_token", str(e)) from None
        if _bound_key(claims) != jkt:
            raise dpop_unauthorized(api, "invalid_token", "The access token is not bound to the proof's key.")
        nonce = api.proofs.nonce_header()
        if nonce:
            # RFC 9449 section 9: the current nonce on success too, so the caller keeps up with rotation.
            request.add_response_callback(lambda request, response: response.headers.update(nonce))
        return claims
    if scheme != "bearer" or token is None:
        # No error code when no credentials were sent at all (RFC 6750 3.1).
        raise unauthorized("An access token is required.", error=None)
    try:
        claims = api.verifier.verify(token)
    except InvalidAccessToken as e:
        raise unauthorized(str(e)) from None
    if _bound_key(claims) is not None:
        # RFC 9449 section 7.2: a bound token sent as Bearer is refused, whoever sends it.
        raise unauthorized("The access token is bound to a DPoP key; send it with DPoP and a proof.")
    return claims


def _bound_key(claims: dict) -> str | None:
    cnf = claims.get("cnf")
    return cnf.get("jkt") if isinstance(cnf, dict) and isinstance(cnf.get("jkt"), str) else None


def body_digest(request) -> tuple[int, str]:
    """Length and SHA-256 of the request body, read in chunks, never held whole."""
    length, sha256 = 0, hashlib.sha256()
    body = request.body_file
    while chunk := body.read(CHUNK):
        length += len(chunk)
        sha256.update(chunk)
    return length, sha256.hexdigest()


def pattern_chunks(size: int):
    full, rest = divmod(size, CHUNK)
    for _ in range(full):
        yield PATTERN
    if rest:
        yield PATTERN[:rest]


@exception_view_config(APIProblem)
def api_problem(exc, request):
    return json_response({"error": exc.error, "message": exc.message}, status=exc.status, headers=exc.headers)


@exception_view_config(KeysUnavailable)
def keys_unavailable(exc, request):
    return json_response({"error": "keys_unavailable", "message": str(exc)}, status=503)


@devstack_view(route_name="devstack.api.ping", request_method="GET")
def ping(request):
    authenticate(request)
    return json_response({"pong": True})


@devstack_view(route_name="devstack.api.sensitive", request_method="GET")
def sensitive(request):
    """Something that needs a second factor: without the MFA acr, the RFC 9470 challenge."""
    claims = authenticate(request)
    if claims.get("acr") != MFA_ACR:
        message = "A second factor is required."
        scheme = "DPoP" if _bound_key(claims) else "Bearer"  # the scheme the token came in (RFC 9449 section 7.1)
        authenticate_header = (
            f'{scheme} realm="{REALM}", error="insufficient_user_authentication", '
            f'error_description="{message}", acr_values="{MFA_ACR}"'
        )
        raise APIProblem(401, "insufficient_user_authentication", message, {"WWW-Authenticate": authenticate_header})
    return json_response({"sub": claims["sub"], "secret": "only after a second factor", "acr": claims["acr"]})


@devstack_view(route_name="devstack.api.me", request_method="GET")
def me(request):
    claims = authenticate(request)
    return json_response({"sub": claims["sub"], "claims": claims})


@devstack_view(route_name="devstack.api.notes", request_method="GET")
def list_notes(request):
    claims = authenticate(request)
    return json_response({"notes": [note.as_json() for note in api_of(request).notes.list_for(claims["sub"])]})


@devstack_view(route_name="devstack.api.notes", request_method="POST")
def create_note(request):
    claims = authenticate(request)
    note = api_of(request).notes.add(claims["sub"], note_text(request))
    return json_response(note.as_json(), status=201)


def note_text(request) -> str:
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise APIProblem(413, "payload_too_large", f"A note request is at most {MAX_JSON_BODY} bytes.")
    try:
        data = json.loads(request.body)
    except (ValueError, RecursionError):
        raise APIProblem(400, "invalid_json", 'The body must be JSON such as {"text": "..."}.') from None
    text = data.get("text") if isinstance(data, dict) else None
    # storable: a lone surrogate ("\ud800" in JSON) or a NUL is no text anyone typed.
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_NOTE_LENGTH or not storable(text):
        raise APIProblem(400, "invalid_note", f"A note needs a text of 1 to {MAX_NOTE_LENGTH} characters.")
    return text


@devstack_view(route_name="devstack.api.note", request_method="DELETE")
def delete_note(request):
    claims = authenticate(request)
    if not api_of(request).notes.delete(claims["sub"], request.matchdict["id"]):
        raise APIProblem(404, "not_found", "You have no note with this id.")
    return Response(status=204)


@devstack_view(route_name="devstack.api.echo", request_method=("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"))
def echo(request):
    """What reached the upstream, for proxy tests: never a token or cookie value."""
    headers = {}
    for name, value in request.headers.items():
        name = name.lower()
        if name == "authorization":
            headers[name] = f"{value.partition(' ')[0]} <redacted>"
        elif name != "cookie":
            headers[name] = value
    token_sub = token_error = None
    token = presented_token(request)[1]
    if token is not None:
        try:
            token_sub = api_of(request).verifier.verify(token)["sub"]
        except InvalidAccessToken as e:
            token_error = str(e)
    length, sha256 = body_digest(request)
    return json_response(
        {
            "method": request.method,
            "path": request.path,
            "query_string": request.query_string,
            "headers": headers,
            "cookie_present": "Cookie" in request.headers,
            "token_sub": token_sub,
            "token_error": token_error,
            "body": {"length": length, "sha256": sha256},
        }
    )


@devstack_view(route_name="devstack.api.bytes", request_method="GET")
def send_bytes(request):
    authenticate(request)
    size = request.GET.get("n", "")
    if not WHOLE_NUMBER.fullmatch(size) or int(size) > MAX_BYTES:
        raise APIProblem(400, "invalid_size", f"n must be a whole number of bytes from 0 to {MAX_BYTES}.")
    response = Response(
        app_iter=pattern_chunks(int(size)), content_length=int(size), content_type="application/octet-stream"
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@devstack_view(route_name="devstack.api.upload", request_method="POST")
def upload(request):
    authenticate(request)
    length, sha256 = body_digest(request)
    return json_response({"bytes": length, "sha256": sha256})
