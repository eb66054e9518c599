"""What can go wrong talking to a provider, each with a short ``reason`` code for audit records."""


class OIDCError(Exception):
    """A check failed. ``reason`` is a short code for audit records; ``message`` is plain words."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class ProviderUnavailable(OIDCError):
    """The provider is down or slow: trying again later may work."""

    def __init__(self, message: str):
        super().__init__("provider_unavailable", message)


class ProviderMisconfigured(OIDCError):
    """The provider's metadata cannot be used with this configuration; nobody can sign in."""

    def __init__(self, message: str):
        super().__init__("provider_misconfigured", message)


class TokenRequestRefused(OIDCError):
    """The token endpoint answered with an OAuth error such as ``invalid_grant``."""

    def __init__(self, error: str, description: str | None):
        super().__init__(f"token_error:{error}"[:64], f"The provider refused the request ({error}).")
        self.error = error
        self.description = description
