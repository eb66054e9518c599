"""A programmable OpenID provider on a loopback port, for tests that must break one rule at a time.

Unlike the development provider (myapp.devstack), this one does whatever a test tells it to:
publish odd metadata, rotate keys, answer the token endpoint with a 500 or junk, or hang.
Tokens are signed with real keys (joserfc), so every check runs against real signatures.
"""

import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import threading
import time
from urllib.parse import parse_qs, parse_qsl, unquote_plus

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey, import_key

from myapp.services.oidc import BACKCHANNEL_LOGOUT_EVENT
from tests.support.dpop_check import ProofRefused, verify_proof
from tests.support.servers import serve

CLIENT_ID = "myapp-test"
CLIENT_SECRET = "test-client-secret"
REDIRECT_URI = "https://app.example.test/auth/callback"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def s256(verifier: str) -> str:
    return b64(hashlib.sha256(verifier.encode()).digest())


class FakeProvider:
    def __init__(self):
        self.issuer = None
        self.key = RSAKey.generate_key(2048, parameters={"kid": "key-1", "use": "sig"})
        self.stop = threading.Event()
        # One token request at a time, as a provider's database transaction would: a reuse of a
        # rotated refresh token is then always seen as one, whatever the threads do.
        self.token_lock = threading.Lock()
        self.reset()

    def reset(self):
        # Each test's provider state is a new generation: an answer held back by a delay (below)
        # that outlives the test that asked for it records nothing in the next test's state.
        self.generation = getattr(self, "generation", 0) + 1
        self.published_keys = [self.key]
        self.metadata_overrides = {}
        self.discovery_status = 200
        self.token_response = None  # callable(form) -> (status, body dict|str); None: issue tokens
        self.userinfo_response = None  # callable(access_token) -> (status, body)
        self.revocation_status = 200
        self.revocation_delay = 0.0
        self.token_delay = 0.0
        self.codes = {}  # code -> {"challenge", "nonce", "claims"}
        self.requests = []  # (path, form, headers) seen
        self.revoked = []
        self.refresh_tokens = {}  # live refresh token -> claims
        self.used_refresh_tokens = set()
        self.rotate = True
        self.reuse_detected = 0
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self.id_token_claims = {}  # overrides for the next ID tokens
        self.sid = "sid-" + secrets.token_hex(4)
        # Every access token issued -> what it is for: {"aud": ..., "sub": ..., "grant": ...}.
        self.access_tokens = {}
        self.token_forms = []  # each token request's form, repeated names kept: [(name, value), ...]
        self.refused_targets = {}  # resource, audience or scope -> the OAuth error to answer
        self.refresh_uses = []  # each refresh token presented, in order
        self.client_secret = CLIENT_SECRET
        self.offers_par = False  # advertise a pushed authorization request endpoint (it always answers)
        self.client_jwks = []  # public keys a client may sign its assertions with (private_key_jwt)
        self.assertions = []  # (header, claims) of every client assertion accepted
        self.seen_jtis = set()
        self.pushed = {}  # request_uri -> the pushed authorization request's parameters
        self.par_response = None  # callable(form) -> (status, body); None: accept
        self.client_auth_failures = []  # why each refused client authentication was refused
        # DPoP (RFC 9449): the algorithms advertised (None: no DPoP), the nonce the token endpoint
        # demands (None: none), whether to issue Bearer tokens whatever the proof, and every proof
        # accepted at the token and userinfo endpoints: (path, header, claims).
        self.dpop_algorithms = None
        self.dpop_nonce = None
        self.userinfo_dpop_nonce = None  # the nonce the userinfo endpoint demands (None: none)
        # Nonces the userinfo endpoint hands out, one with each answer 200, demanding it from then on
        # (RFC 9449 section 8.2: a new nonce may come with any answer).
        self.userinfo_next_dpop_nonces: list[str] = []
        self.dpop_bearer = False
        # Refresh tokens bound to the key of the proof they were issued with (RFC 9449 section 5, as
        # for public clients): a refresh without that key's proof is invalid_grant, the token unspent.
        self.dpop_bound_refresh = False
        self.refresh_token_jkts = {}
        self.dpop_proofs = []
        self.dpop_refusals = []

    def metadata(self) -> dict:
        document = {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer + "/authorize",
            "token_endpoint": self.issuer + "/token",
            "jwks_uri": self.issuer + "/jwks",
            "userinfo_endpoint": self.issuer + "/userinfo",
            "end_session_endpoint": self.issuer + "/logout",
            "revocation_endpoint": self.issuer + "/revoke",
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": True,
            "pushed_authorization_request_endpoint": self.issuer + "/par" if self.offers_par else None,
            "token_endpoint_auth_signing_alg_values_supported": ["PS256", "RS256", "ES256"],
            "dpop_signing_alg_values_supported": self.dpop_algorithms,
        }
        document.update(self.metadata_overrides)
        return {k: v for k, v in document.items() if v is not None}

    def claims(self, **overrides) -> dict:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "sub": "alice",
            "iat": now,
            "exp": now + 300,
            "name": "Alice Example",
            "email": "alice@example.org",
            "groups": ["staff"],
            "sid": self.sid,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def sign(self, claims: dict, *, key=None, alg="RS256", header=None) -> str:
        key = key or self.key
        protected = {"alg": alg, "typ": "JWT"}
        if key is not None and getattr(key, "kid", None) and alg != "none":
            protected["kid"] = key.kid
        protected.update(header or {})
        protected = {k: v for k, v in protected.items() if v is not None}
        payload = json.dumps(claims).encode()
        if alg == "none" or isinstance(key, bytes):
            # By hand: joserfc rightly refuses to sign with "none" or to HMAC with a public key.
            signing_input = f"{b64(json.dumps(protected).encode())}.{b64(payload)}"
            if alg == "none":
                return signing_input + "."
            digest = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
            return f"{signing_input}.{b64(digest)}"
        return jws.serialize_compact(protected, payload, key, algorithms=[alg])

    def logout_claims(self, **overrides) -> dict:
        """A valid back-channel logout token's claims; None in ``overrides`` removes a claim."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 120,
            "jti": f"jti-{time.monotonic_ns()}",
            "sub": "alice",
            "sid": self.sid,
            "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def logout_token(self, header=None, **overrides) -> str:
        return self.sign(self.logout_claims(**overrides), header={"typ": "logout+jwt", **(header or {})})

    def grant(
        self, *, challenge: str, nonce: str, redirect_uri: str = REDIRECT_URI, dpop_jkt: str | None = None, **claim_overrides
    ) -> str:
        """Issue an authorization code as if the user had signed in (bound to ``dpop_jkt`` when given)."""
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"challenge": challenge, "nonce": nonce, "redirect_uri": redirect_uri, "claims": claim_overrides,
                            "dpop_jkt": dpop_jkt}
        return code

    def __call__(self, environ, start_response):
        path = environ["PATH_INFO"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length).decode()
        form = {k: v[0] for k, v in parse_qs(raw).items()}
        if path == "/token":
            self.token_forms.append(parse_qsl(raw))
        self.requests.append((path, form, {k: v for k, v in environ.items() if k.startswith("HTTP_")}))
        status, body, content_type, *extra = self.route(path, form, environ, raw)
        data = body if isinstance(body, bytes) else (json.dumps(body) if isinstance(body, (dict, list)) else body).encode()
        headers = [("Content-Type", content_type), ("Content-Length", str(len(data)))] + (extra[0] if extra else [])
        start_response(f"{status} X", headers)
        return [data]

    def route(self, path, form, environ, raw=""):
        if path == "/.well-known/openid-configuration":
            self.discovery_fetches += 1
            return self.discovery_status, self.metadata(), "application/json"
        if path == "/jwks":
            self.jwks_fetches += 1
            return 200, {"keys": [k.as_dict(private=False) for k in self.published_keys]}, "application/json"
        if path == "/token":
            if self.token_delay and not self.held_back(self.token_delay):
                return 503, {"error": "temporarily_unavailable"}, "application/json"
            if self.token_response is not None:
                status, body = self.token_response(form)
                return status, body, "application/json"
            if not self.client_authenticated(form, environ):
                return 401, {"error": "invalid_client"}, "application/json"
            jkt = None
            if "HTTP_DPOP" in environ:
                try:
                    _, claims, jkt = verify_proof(environ["HTTP_DPOP"], method="POST", url=self.issuer + "/token")
                except ProofRefused as e:
                    self.dpop_refusals.append(("/token", str(e)))
                    return 400, {"error": "invalid_dpop_proof"}, "application/json"
                if self.dpop_nonce is not None and claims.get("nonce") != self.dpop_nonce:
                    self.dpop_refusals.append(("/token", "nonce"))
                    return 400, {"error": "use_dpop_nonce"}, "application/json", [("DPoP-Nonce", self.dpop_nonce)]
                self.dpop_proofs.append(("/token", environ["HTTP_DPOP"], claims))
            bound_code = self.codes.get(form.get("code"), {}).get("dpop_jkt") if form.get("grant_type") == "authorization_code" else None
            if bound_code is not None and bound_code != jkt:
                # RFC 9449 section 10: a code bound by dpop_jkt is redeemed only with that key's proof.
                self.dpop_refusals.append(("/token", "dpop_jkt"))
                return 400, {"error": "invalid_grant"}, "application/json"
            refreshing = form.get("grant_type") == "refresh_token"
            bound_refresh = self.refresh_token_jkts.get(form.get("refresh_token")) if refreshing else None
            if self.dpop_bound_refresh and bound_refresh is not None and bound_refresh != jkt:
                self.dpop_refusals.append(("/token", "refresh token bound"))
                return 400, {"error": "invalid_grant"}, "application/json"
            with self.token_lock:
                status, body = self.issue_tokens(form, self.token_forms[-1] if self.token_forms else [])
            if status == 200 and jkt is not None and not self.dpop_bearer:
                body["token_type"] = "DPoP"
                self.access_tokens[body["access_token"]]["jkt"] = jkt
                if body.get("refresh_token"):
                    self.refresh_token_jkts[body["refresh_token"]] = jkt
            return status, body, "application/json"
        if path == "/userinfo":
            token = environ.get("HTTP_AUTHORIZATION", "").removeprefix("Bearer ")
            if token.startswith("DPoP "):
                token = token.removeprefix("DPoP ")
                try:
                    _, claims, jkt = verify_proof(
                        environ.get("HTTP_DPOP", ""), method="GET", url=self.issuer + "/userinfo", access_token=token
                    )
                except ProofRefused as e:
                    self.dpop_refusals.append(("/userinfo", str(e)))
                    return 401, {"error": "invalid_dpop_proof"}, "application/json"
                if self.userinfo_dpop_nonce is not None and claims.get("nonce") != self.userinfo_dpop_nonce:
                    self.dpop_refusals.append(("/userinfo", "nonce"))
                    return 401, {"error": "use_dpop_nonce"}, "application/json", [
                        ("WWW-Authenticate", 'DPoP error="use_dpop_nonce"'), ("DPoP-Nonce", self.userinfo_dpop_nonce)]
                if jkt != self.access_tokens.get(token, {}).get("jkt"):
                    return 401, {"error": "invalid_token"}, "application/json"
                self.dpop_proofs.append(("/userinfo", environ["HTTP_DPOP"], claims))
                if self.userinfo_next_dpop_nonces:
                    self.userinfo_dpop_nonce = self.userinfo_next_dpop_nonces.pop(0)
                    claims = {"sub": "alice", "name": "Alice From Userinfo", "groups": ["staff", "readers"]}
                    return 200, claims, "application/json", [("DPoP-Nonce", self.userinfo_dpop_nonce)]
            if self.userinfo_response is not None:
                status, body = self.userinfo_response(token)
                return status, body, "application/json"
            return 200, {"sub": "alice", "name": "Alice From Userinfo", "groups": ["staff", "readers"]}, "application/json"
        if path == "/par":
            if not self.client_authenticated(form, environ):
                return 401, {"error": "invalid_client"}, "application/json"
            if self.par_response is not None:
                status, body = self.par_response(form)
                return status, body, "application/json"
            request_uri = "urn:ietf:params:oauth:request_uri:" + secrets.token_urlsafe(16)
            self.pushed[request_uri] = parse_qsl(raw)
            return 201, {"request_uri": request_uri, "expires_in": 60}, "application/json"
        if path == "/revoke":
            if not self.client_authenticated(form, environ):
                return 401, {"error": "invalid_client"}, "application/json"
            if self.revocation_delay and not self.held_back(self.revocation_delay):
                return 503, b"", "text/plain"
            self.revoked.append(form.get("token"))
            return self.revocation_status, b"", "text/plain"
        return 404, {"error": "not_found"}, "application/json"

    def held_back(self, delay: float) -> bool:
        """Wait ``delay`` seconds before answering; False when the test that asked ended meanwhile
        (the provider was reset or stopped): the answer then goes nowhere and records nothing."""
        generation = self.generation
        self.stop.wait(delay)
        return generation == self.generation and not self.stop.is_set()

    def client_authenticated(self, form, environ) -> bool:
        """As a strict provider checks it: Basic credentials decoded per RFC 6749 section 2.3.1,
        or the secret in the form, or a client assertion (RFC 7523) signed by a registered key."""
        header = environ.get("HTTP_AUTHORIZATION", "")
        if form.get("client_assertion_type"):
            return self.assertion_valid(form)
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode("ascii").partition(":")
            return (unquote_plus(user), unquote_plus(password)) == (CLIENT_ID, self.client_secret)
        return (form.get("client_id"), form.get("client_secret")) == (CLIENT_ID, self.client_secret)

    def assertion_valid(self, form) -> bool:
        def refuse(why):
            self.client_auth_failures.append(why)
            return False

        if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            return refuse("assertion type")
        token = form.get("client_assertion", "")
        try:
            header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
        except (ValueError, IndexError):
            return refuse("malformed")
        keys = [k for k in self.client_jwks if k.get("kid") == header.get("kid")]
        if not keys:
            return refuse("unknown kid")
        try:
            decoded = jwt.decode(token, import_key(keys[0]), algorithms=[header.get("alg")])
        except JoseError:
            return refuse("signature")
        claims, now = decoded.claims, time.time()
        if claims.get("iss") != CLIENT_ID or claims.get("sub") != CLIENT_ID:
            return refuse("iss/sub")
        if claims.get("aud") not in (self.issuer, self.issuer + "/token"):
            return refuse("aud")
        if not isinstance(claims.get("exp"), int) or claims["exp"] < now or claims["exp"] - claims.get("iat", 0) > 60:
            return refuse("exp")
        if claims.get("jti") in self.seen_jtis:
            return refuse("jti replay")
        self.seen_jtis.add(claims.get("jti"))
        self.assertions.append((header, claims))
        return True

    @staticmethod
    def target_of(pairs) -> str:
        """What an access token is for: the resources, audience or scope the request names."""
        resources = sorted(v for k, v in pairs if k == "resource")
        form = dict(pairs)
        if resources:
            return " ".join(resources)
        if form.get("audience"):
            return form["audience"]
        if form.get("scope") and form.get("grant_type") != "authorization_code":
            return "scope:" + form["scope"]
        return "session"

    def refusal_for(self, pairs) -> str | None:
        named = [v for k, v in pairs if k in ("resource", "audience")] + dict(pairs).get("scope", "").split()
        return next((self.refused_targets[n] for n in named if n in self.refused_targets), None)

    def issue_access_token(self, target: str, sub: str, grant: str) -> str:
        token = "at-" + secrets.token_urlsafe(16)
        self.access_tokens[token] = {"aud": target, "sub": sub, "grant": grant}
        return token

    def issue_tokens(self, form, pairs=()) -> tuple[int, dict]:
        """What the token endpoint answers an authenticated client; tests may wrap it."""
        pairs = list(pairs) or list(form.items())
        if form.get("grant_type") == "authorization_code":
            grant = self.codes.pop(form.get("code"), None)
            if (
                grant is None
                or s256(form.get("code_verifier", "")) != grant["challenge"]
                or form.get("redirect_uri") != grant["redirect_uri"]
            ):
                return 400, {"error": "invalid_grant"}
            claims = self.claims(**{"nonce": grant["nonce"], **self.id_token_claims, **grant["claims"]})
        elif form.get("grant_type") == "refresh_token":
            presented = form.get("refresh_token")
            self.refresh_uses.append(presented)
            if presented in self.used_refresh_tokens:
                # Reuse of a rotated token: as production providers do, revoke every live one.
                self.reuse_detected += 1
                self.refresh_tokens.clear()
                return 400, {"error": "invalid_grant"}
            if presented not in self.refresh_tokens:
                return 400, {"error": "invalid_grant"}
            refused = self.refusal_for(pairs)
            if refused:
                return 400, {"error": refused}
            claims = self.refresh_tokens[presented]
            if not self.rotate:
                return 200, {"access_token": self.issue_access_token(self.target_of(pairs), claims.get("sub"), "refresh_token"),
                             "token_type": "Bearer", "expires_in": 300, "id_token": self.sign(self.claims(**self.id_token_claims))}
            claims = self.claims(**self.id_token_claims)
            del self.refresh_tokens[presented]
            self.used_refresh_tokens.add(presented)
        elif form.get("grant_type") == "urn:ietf:params:oauth:grant-type:token-exchange":
            subject = self.access_tokens.get(form.get("subject_token"))
            if form.get("subject_token_type") != "urn:ietf:params:oauth:token-type:access_token":
                return 400, {"error": "invalid_request"}
            if subject is None:
                return 400, {"error": "invalid_grant"}
            refused = self.refusal_for(pairs)
            if refused:
                return 400, {"error": refused}
            return 200, {
                "access_token": self.issue_access_token(self.target_of(pairs), subject["sub"], "token_exchange"),
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "token_type": "Bearer",
                "expires_in": 300,
            }
        else:
            return 400, {"error": "unsupported_grant_type"}
        access_token = self.issue_access_token(self.target_of(pairs), claims.get("sub"), form["grant_type"])
        refresh_token = "rt-" + secrets.token_urlsafe(16)
        self.refresh_tokens[refresh_token] = claims
        return 200, {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": 300,
            "refresh_token": refresh_token,
            "id_token": self.sign(claims),
            "scope": "openid profile email offline_access",
        }

    def serve(self):
        return serve(self)


@contextlib.contextmanager
def served_fake_provider():
    """A :class:`FakeProvider` on a loopback port, its issuer set; stopped afterwards."""
    provider = FakeProvider()
    with provider.serve() as url:
        provider.issuer = url
        try:
            yield provider
        finally:
            provider.stop.set()  # wake any handler still delaying, so the server can stop
