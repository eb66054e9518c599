"""The identity providers this app trusts, by name (``myapp.providers``), each its own client."""

from collections.abc import Iterator, Mapping

from myapp.services.http import HttpClient
from myapp.services.oidc.client import OIDCClient
from myapp.settings import OIDCSettings


class UnknownProvider(LookupError):
    """No provider of that name is configured."""


class Providers(Mapping[str, OIDCClient]):
    """Every configured provider's :class:`OIDCClient`, in the order the settings list them.

    Nothing here is "the" provider: a sign-in names its provider, a session records it, and a
    logout token's ``iss`` picks one.
    """

    def __init__(self, clients: Mapping[str, OIDCClient]):
        if not clients:
            raise ValueError("at least one provider is needed")
        self._clients = dict(clients)
        self._by_issuer = {client.settings.issuer: client for client in self._clients.values()}

    @classmethod
    def build(cls, settings: Mapping[str, OIDCSettings]) -> "Providers":
        return cls(
            {
                name: OIDCClient(settings=s, http=HttpClient(timeout=s.http_timeout, provider=s.name))
                for name, s in settings.items()
            }
        )

    def __getitem__(self, name: str) -> OIDCClient:
        return self._clients[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._clients)

    def __len__(self) -> int:
        return len(self._clients)

    def named(self, name: str | None) -> OIDCClient:
        """The provider a request names; raises :class:`UnknownProvider`."""
        client = self._clients.get(name) if isinstance(name, str) else None
        if client is None:
            raise UnknownProvider(name)
        return client

    @property
    def first(self) -> OIDCClient:
        """The one a script means when it names none: the first listed."""
        return next(iter(self._clients.values()))

    def by_issuer(self, issuer: str | None) -> OIDCClient | None:
        return self._by_issuer.get(issuer) if isinstance(issuer, str) else None

    def of_session(self, provider: str, issuer: str) -> OIDCClient | None:
        """The provider a session signed in with: by the name it recorded while that provider
        still has its user's issuer, else by that issuer (a provider renamed since), else None."""
        client = self._clients.get(provider)
        if client is not None and client.settings.issuer == issuer:
            return client
        return self._by_issuer.get(issuer)

    @property
    def http_timeout(self) -> float:
        """The longest any provider call may take."""
        return max(client.settings.http_timeout for client in self._clients.values())

    def form_action_origins(self) -> set[str]:
        origins: set[str] = set()
        for client in self._clients.values():
            origins |= client.form_action_origins()
        return origins

    def close(self) -> None:
        for client in self._clients.values():
            client.http.close()
