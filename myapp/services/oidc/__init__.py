"""The conversation with an OpenID provider, in four parts:

- ``errors``: what can go wrong, each with a reason code;
- ``metadata``: discovery and the key set, fetched and cached (:class:`ProviderDocuments`);
- ``jose``: every check on ID tokens and logout tokens (:class:`TokenValidator`);
- ``client``: the calls to its endpoints, through Authlib (:class:`OIDCClient`);
- ``providers``: every configured provider by name (:class:`Providers`).
"""

from myapp.services.oidc.client import OIDCClient, Revocation
from myapp.services.oidc.errors import (
    DPoPNotBound,
    OIDCError,
    ProviderMisconfigured,
    ProviderResting,
    ProviderUnavailable,
    TokenRequestRefused,
    TokenResponseInvalid,
    error_code,
)
from myapp.services.oidc.jose import (
    BACKCHANNEL_LOGOUT_EVENT,
    CLOCK_SKEW,
    MAX_TOKEN_AGE,
    TokenValidator,
    at_hash,
    unverified_issuer,
)
from myapp.services.oidc.metadata import ProviderDocuments, ProviderMetadata
from myapp.services.oidc.providers import Providers, UnknownProvider

__all__ = [
    "BACKCHANNEL_LOGOUT_EVENT",
    "CLOCK_SKEW",
    "MAX_TOKEN_AGE",
    "DPoPNotBound",
    "OIDCClient",
    "OIDCError",
    "ProviderDocuments",
    "ProviderMetadata",
    "ProviderMisconfigured",
    "ProviderResting",
    "ProviderUnavailable",
    "Providers",
    "Revocation",
    "TokenRequestRefused",
    "TokenResponseInvalid",
    "TokenValidator",
    "UnknownProvider",
    "at_hash",
    "error_code",
    "unverified_issuer",
]
