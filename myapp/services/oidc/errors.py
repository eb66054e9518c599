"""What can go wrong talking to a provider, each with a short ``reason`` code for audit records."""

import re

from myapp.services.tokenset import TokenSet
from myapp.text import shown_text

_ERROR_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def error_code(value) -> str:
    """A provider's OAuth ``error`` as it may be logged, audited and shown: the codes of RFC 6749 and
    its extensions are short ASCII words; anything else (a line feed that would forge a log line,
    markup, a page of text) is ``invalid``."""
    return value if isinstance(value, str) and _ERROR_CODE.fullmatch(value) else "invalid"


class OIDCError(Exception):
    """A check failed. ``reason`` is a short code for audit records; ``message`` is plain words,
    shown on a page and logged: what a provider wrote into it (an algorithm's name, an issuer) is
    kept on one line and made encodable (``shown_text``: a lone surrogate was a 500 on the error
    page, a line feed a forged log line; helper-127)."""

    def __init__(self, reason: str, message: str):
        message = shown_text(message)
        super().__init__(message)
        self.reason = reason
        self.message = message


class ProviderUnavailable(OIDCError):
    """The provider is down or slow: trying again later may work. ``held_up``: it kept the call
    until it timed out (True), failed it at once (False), or was not asked (None)."""

    def __init__(self, message: str, reason: str = "provider_unavailable", *, held_up: bool | None = None):
        super().__init__(reason, message)
        self.held_up = held_up


class ProviderResting(ProviderUnavailable):
    """Not asked: its token endpoint held a call up moments ago (oidc.client.TokenEndpointRest)."""

    def __init__(self):
        super().__init__("The provider's token endpoint did not answer moments ago; it is asked again in a few seconds.")


class ProviderMisconfigured(OIDCError):
    """The provider's metadata cannot be used with this configuration; nobody can sign in."""

    def __init__(self, message: str):
        super().__init__("provider_misconfigured", message)


class DPoPNotBound(OIDCError):
    """DPoP is required, but the provider issued Bearer tokens (``tokens``: its answer, so that
    what it issued can be revoked rather than left live)."""

    def __init__(self, tokens: dict):
        super().__init__(
            "dpop_not_bound",
            "The sign-in provider issued a plain Bearer token, but this app requires tokens bound to "
            "its own key (DPoP), so that a leaked token is useless to anyone else.",
        )
        self.tokens = tokens

    def issued(self) -> TokenSet:
        """What to revoke: the refresh token when there is one, else the access token."""
        return TokenSet.issued_in(self.tokens)


class TokenResponseInvalid(OIDCError):
    """A token response this app will not use. ``issued``: the tokens it carried all the same that
    the provider would take (its refresh token, which a rotating provider spent the old one on; its
    access token, when it could be sent), so that the caller can keep or revoke them."""

    def __init__(self, message: str, issued: TokenSet = TokenSet()):
        super().__init__("token_response_invalid", message)
        self._issued = issued

    def issued(self) -> TokenSet:
        """What could be used at the provider: to revoke when nothing of the answer is kept."""
        return self._issued

    @property
    def refresh_token(self) -> str | None:
        return self._issued.refresh_token


class TokenRequestRefused(OIDCError):
    """The token endpoint answered with an OAuth error such as ``invalid_grant``."""

    def __init__(self, error: str, description: str | None):
        super().__init__(f"token_error:{error}"[:64], f"The provider refused the request ({error}).")
        self.error = error
        self.description = description
