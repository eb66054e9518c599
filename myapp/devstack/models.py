"""What the development provider knows: its client, users, browser sessions, codes and tokens.

The objects implement the small model interfaces Authlib's server side calls
(``ClientMixin``, ``AuthorizationCodeMixin``, ``check_client``/``get_scope`` on tokens).
"""

import hmac
import re
from dataclasses import dataclass, field

from authlib.oauth2.rfc6749 import ClientMixin
from authlib.oidc.core import AuthorizationCodeMixin

from myapp.devstack.settings import ClientRegistration

USER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
ADMIN_PREFIX = "admin"
CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")
# The acr of a sign-in confirmed with the sign-in page's second factor, and of one without.
MFA_ACR = "urn:myapp:mfa"
PASSWORD_ACR = "urn:myapp:pwd"
GRANT_TYPES = ("authorization_code", "refresh_token")
SCOPES = ("openid", "profile", "email", "offline_access")


@dataclass(frozen=True)
class Client(ClientMixin):
    """The one confidential client registered through the settings."""

    client_id: str
    client_secret: str = field(repr=False)
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...]
    backchannel_logout_uri: str | None

    @classmethod
    def from_registration(cls, registration: ClientRegistration) -> "Client":
        return cls(
            client_id=registration.client_id,
            client_secret=registration.client_secret,
            redirect_uris=registration.redirect_uris,
            post_logout_redirect_uris=registration.post_logout_redirect_uris,
            backchannel_logout_uri=registration.backchannel_logout_uri,
        )

    @property
    def client_metadata(self) -> dict:
        return {"post_logout_redirect_uris": list(self.post_logout_redirect_uris)}

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        # OpenID Connect requires redirect_uri on every authorization request: no default.
        return None

    def get_allowed_scope(self, scope):
        return " ".join(dict.fromkeys((scope or "").split()))

    def check_redirect_uri(self, redirect_uri):
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret):
        return hmac.compare_digest(self.client_secret.encode(), client_secret.encode("utf-8", "surrogateescape"))

    def check_endpoint_auth_method(self, method, endpoint):
        return method in CLIENT_AUTH_METHODS

    def check_response_type(self, response_type):
        return response_type == "code"

    def check_grant_type(self, grant_type):
        return grant_type in GRANT_TYPES


@dataclass(frozen=True)
class User:
    """A development user: everything follows from the name typed on the sign-in page."""

    subject: str

    @property
    def name(self) -> str:
        return self.subject.title()

    @property
    def email(self) -> str:
        return f"{self.subject}@example.org"

    @property
    def groups(self) -> list[str]:
        return ["staff", "admins"] if self.subject.lower().startswith(ADMIN_PREFIX) else ["staff"]

    def claims(self, scope: str) -> dict:
        """The user's claims that ``scope`` releases, as ID tokens and userinfo carry them."""
        scopes = scope.split()
        claims = {"sub": self.subject}
        if "profile" in scopes:
            claims.update(name=self.name, groups=self.groups)
        if "email" in scopes:
            claims.update(email=self.email, email_verified=True)
        return claims


def user_name_problem(name: str) -> str | None:
    """Why ``name`` cannot sign in, in words for the sign-in page; None when it can."""
    if not name:
        return "Enter a user name."
    if not USER_NAME.fullmatch(name):
        return "A user name is 1 to 64 letters, digits, dots, dashes or underscores."
    return None


@dataclass(eq=False)
class ProviderSession:
    """A browser signed in at the provider; ``sid`` is its public name in tokens."""

    key_hash: str
    sid: str
    user: User
    auth_time: int
    client_ids: set[str] = field(default_factory=set)
    acr: str = PASSWORD_ACR
    amr: tuple[str, ...] = ("pwd",)


@dataclass(frozen=True)
class Login:
    """One authentication, as it is bound into an authorization code."""

    user: User
    sid: str
    auth_time: int
    acr: str = PASSWORD_ACR
    amr: tuple[str, ...] = ("pwd",)

    def get_user_id(self):
        return self.user.subject


@dataclass(eq=False)
class TokenFamily:
    """Every token descending from one authorization code; revoked as a whole.

    Authlib's token endpoint sees this as the ``user`` of the grant.
    """

    client_id: str
    login: Login
    scope: str
    revoked: bool = False
    # The key of the first DPoP proof its tokens were issued with: its refresh tokens are bound to it.
    jkt: str | None = None

    def get_user_id(self):
        return self.login.user.subject


@dataclass(eq=False)
class AuthorizationCode(AuthorizationCodeMixin):
    client_id: str
    redirect_uri: str
    scope: str
    nonce: str | None
    code_challenge: str
    code_challenge_method: str
    login: Login
    expires_at: float
    used: bool = False
    family: TokenFamily | None = None
    # RFC 9449 section 10: the thumbprint of the only key whose proof may redeem it.
    dpop_jkt: str | None = None

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope

    def get_nonce(self):
        return self.nonce

    def get_auth_time(self):
        return self.login.auth_time


@dataclass(eq=False)
class IssuedToken:
    """An access or refresh token the provider issued, found by the hash of its value."""

    kind: str
    family: TokenFamily
    scope: str
    expires_at: float
    rotated: bool = False
    rotated_at: float = 0.0
    revoked: bool = False
    # An access token bound to a DPoP key (RFC 9449 cnf.jkt): usable only with that key's proofs.
    jkt: str | None = None

    def check_client(self, client) -> bool:
        return client.get_client_id() == self.family.client_id

    def get_scope(self) -> str:
        return self.scope
