"""Authlib's grants and endpoints, filled in for the development provider.

Each class only answers the questions Authlib asks (where is this code, who is this user, how is
this token signed); the protocol itself is Authlib's. ``self.server`` is the
:class:`myapp.devstack.server.AuthorizationServer` that registered them.
"""

import time

from authlib.oauth2 import rfc7009
from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidRequestError, grants
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7636.challenge import compare_s256_code_challenge
from authlib.oidc.core import grants as oidc_grants
from authlib.oidc.core.errors import RequestNotSupportedError, RequestURINotSupportedError
from authlib.oidc.rpinitiated import EndSessionEndpoint as _EndSessionEndpoint
from joserfc.jwk import KeySet

from myapp.devstack.dpop import BINDING
from myapp.devstack.keys import ALGORITHM
from myapp.devstack.models import CLIENT_AUTH_METHODS, AuthorizationCode
from myapp.devstack.storage import CODE_LIFETIME, TokenRejected


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = list(CLIENT_AUTH_METHODS)

    def save_authorization_code(self, code, request):
        data = request.payload.data
        record = AuthorizationCode(
            client_id=request.client.get_client_id(),
            redirect_uri=request.payload.redirect_uri,
            scope=request.scope,
            nonce=data.get("nonce"),
            code_challenge=data["code_challenge"],
            code_challenge_method=data["code_challenge_method"],
            login=request.user,
            expires_at=time.time() + CODE_LIFETIME,
            # Only a provider that binds tokens (dpop = on) binds codes: one that does not (off,
            # ignore) takes dpop_jkt for a parameter it does not know.
            dpop_jkt=data.get("dpop_jkt") if self.server.settings.dpop == "on" else None,
        )
        self.server.store.save_code(code, record)

    def query_authorization_code(self, code, client):
        # Spent here, before PKCE is checked: a code is good for one attempt, right or wrong.
        record = self.server.store.redeem_code(code, client.get_client_id())
        if record is not None and record.dpop_jkt is not None and record.dpop_jkt != BINDING.get():
            # RFC 9449 section 10: the code is redeemed only with a proof by the key dpop_jkt named.
            raise InvalidGrantError("The code is bound to another DPoP key (dpop_jkt).")
        return record

    def delete_authorization_code(self, authorization_code):
        """Nothing to do: the code was spent atomically when it was looked up, and is kept
        until it expires so that a replay can be recognised."""

    def authenticate_user(self, authorization_code):
        return self.server.store.start_family(authorization_code)


class RefreshTokenGrant(grants.RefreshTokenGrant):
    """A provider that keeps refresh tokens: the same one stays valid until it expires."""

    TOKEN_ENDPOINT_AUTH_METHODS = list(CLIENT_AUTH_METHODS)
    INCLUDE_NEW_REFRESH_TOKEN = False

    def authenticate_refresh_token(self, refresh_token):
        try:
            record = self.server.store.find_refresh_token(refresh_token)
        except TokenRejected as e:
            raise InvalidGrantError(str(e)) from None
        bound, proved = record.family.jkt, BINDING.get()
        # Checked before the token is spent, so a refused attempt leaves it to its holder.
        if bound is not None and proved is not None and proved != bound:
            raise InvalidGrantError("The refresh token is bound to another DPoP key.")
        if bound is not None and proved is None and self.server.settings.dpop_refresh_requires_proof:
            raise InvalidGrantError("The refresh token is bound to a DPoP key: refresh with a proof by that key.")
        return record

    def authenticate_user(self, refresh_token):
        try:
            return self.server.store.use_refresh_token(refresh_token, rotate=self.INCLUDE_NEW_REFRESH_TOKEN)
        except TokenRejected as e:
            raise InvalidGrantError(str(e)) from None

    def revoke_old_credential(self, refresh_token):
        """Nothing to do: ``use_refresh_token`` already spent a rotated token, under the lock."""


class RotatingRefreshTokenGrant(RefreshTokenGrant):
    """Each refresh returns a new refresh token and spends the old one (reuse is detected)."""

    INCLUDE_NEW_REFRESH_TOKEN = True


class S256CodeChallenge(CodeChallenge):
    """PKCE required of every client, S256 only (RFC 7636; OAuth 2.0 Security BCP 2.1.1)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    CODE_CHALLENGE_METHODS = {"S256": compare_s256_code_challenge}

    def validate_code_challenge(self, grant, redirect_uri):
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge with code_challenge_method=S256.")
        # Without a method RFC 7636 means "plain", which this provider refuses.
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("Only code_challenge_method=S256 is supported.")
        super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant, result):
        if not grant.request.form.get("code_verifier"):
            raise InvalidGrantError("Missing 'code_verifier'.")
        try:
            super().validate_code_verifier(grant, result)
        except InvalidRequestError as e:
            raise InvalidGrantError(e.description) from None


class IDTokenClaims:
    """How the provider's ID tokens are signed and what they hold (OpenID Connect Core 2)."""

    def __init__(self, server):
        self.server = server

    def resolve_client_private_key(self, client):
        return self.server.signer.key

    def get_client_algorithm(self, client):
        return ALGORITHM

    def get_encode_header(self, client):
        return {"alg": ALGORITHM, "kid": self.server.signer.kid, "typ": "JWT"}

    def get_client_claims(self, client):
        now = int(time.time())
        return {
            "iss": self.server.issuer,
            "aud": client.get_client_id(),
            "iat": now,
            "exp": now + self.server.settings.id_token_lifetime,
        }

    def generate_user_info(self, user, scope):
        login = user.login
        # auth_time is the original sign-in, also in ID tokens from a refresh (Core 12.2).
        return {
            **login.user.claims(scope), "sid": login.sid, "auth_time": login.auth_time,
            "acr": login.acr, "amr": list(login.amr),
        }


class OpenIDCode(IDTokenClaims, oidc_grants.OpenIDCode):
    def __init__(self, server):
        oidc_grants.OpenIDCode.__init__(self, require_nonce=False)
        IDTokenClaims.__init__(self, server)

    def exists_nonce(self, nonce, request):
        return self.server.store.nonce_in_use(request.payload.client_id, nonce)

    def validate_openid_authorization_request(self, grant, redirect_uri):
        data = grant.request.payload.data
        if "request" in data:
            raise RequestNotSupportedError()
        if "request_uri" in data:  # a pushed request is unpacked by the view before Authlib sees it
            raise RequestURINotSupportedError()
        super().validate_openid_authorization_request(grant, redirect_uri)


class OpenIDRefresh(IDTokenClaims, oidc_grants.OpenIDToken):
    """A new ID token in every refresh response: same iss, sub and sid, no nonce (Core 12.2)."""


class RevocationEndpoint(rfc7009.RevocationEndpoint):
    CLIENT_AUTH_METHODS = list(CLIENT_AUTH_METHODS)

    def query_token(self, token_string, token_type_hint):
        return self.server.store.find_token(token_string, token_type_hint)

    def revoke_token(self, token, request):
        self.server.store.revoke(token)


class EndSessionEndpoint(_EndSessionEndpoint):
    """Validates RP-initiated logout requests (id_token_hint, client, post_logout_redirect_uri).

    The view performs the logout itself, because ending the browser's session and clearing its
    cookie are Pyramid matters.
    """

    def get_server_jwks(self):
        return KeySet([self.server.signer.public_key])

    def get_algorithms(self):
        return [ALGORITHM]

    def validate_request(self, request):
        end_request = super().validate_request(request)
        claims = end_request.id_token_claims
        if claims is not None and claims.get("iss") != self.server.issuer:
            raise InvalidRequestError("The id_token_hint was not issued by this provider.")
        redirect_uri = request.payload.data.get("post_logout_redirect_uri")
        if redirect_uri:
            client = end_request.client
            if client is None:
                raise InvalidRequestError("post_logout_redirect_uri needs client_id or id_token_hint.")
            if redirect_uri not in client.post_logout_redirect_uris:
                raise InvalidRequestError("post_logout_redirect_uri is not registered for this client.")
        return end_request
