"""A session's tokens in the clear (:class:`TokenSet`) and at rest (:class:`TokenCipher`)."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from myapp.services.dpop import DPoPKey

DPOP = "DPoP"
BEARER = "Bearer"


def token_type_of(response: dict) -> str:
    """A token response's ``token_type`` as stored: "DPoP" or "Bearer" (the provider checked it is one)."""
    return DPOP if str(response.get("token_type", "")).lower() == "dpop" else BEARER


def token_type_column(token_type: str) -> str | None:
    """How a token type is stored: "DPoP", or NULL for Bearer (what every row from before DPoP holds)."""
    return DPOP if token_type == DPOP else None


def token_type_from_column(value: str | None) -> str:
    return DPOP if value == DPOP else BEARER


@dataclass(frozen=True)
class TokenSet:
    access_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    id_token: str | None = field(default=None, repr=False)
    access_token_expires_at: datetime | None = None
    # "DPoP" when the access token is bound to the session's key (RFC 9449), else "Bearer".
    token_type: str = BEARER
    # The session's DPoP key pair as stored (myapp.services.dpop.DPoPKey.to_json); None without DPoP.
    dpop_key: str | None = field(default=None, repr=False)

    @property
    def bound(self) -> bool:
        return self.token_type == DPOP

    @classmethod
    def issued_in(cls, answer: Mapping) -> "TokenSet":
        """The tokens of a token endpoint's answer that could be used at the provider (its access and
        refresh tokens, where they are strings): what to revoke when the answer is not kept."""
        return cls(**{name: answer[name] for name in ("access_token", "refresh_token") if isinstance(answer.get(name), str) and answer[name]})

    @classmethod
    def from_response(
        cls, token: dict, now: datetime, *, previous: "TokenSet | None" = None, dpop_key: str | None = None
    ) -> "TokenSet":
        """The tokens of a token-endpoint response; a refresh without a new refresh token (or ID
        token) keeps the previous one, and the session's DPoP key."""
        lifetime = _lifetime(token.get("expires_in"))
        try:
            expires_at = now + timedelta(seconds=lifetime) if lifetime is not None else None
        except OverflowError:
            expires_at = None
        return cls(
            access_token=token["access_token"],
            refresh_token=token.get("refresh_token") or (previous.refresh_token if previous else None),
            id_token=token.get("id_token") or (previous.id_token if previous else None),
            access_token_expires_at=expires_at,
            token_type=token_type_of(token),
            dpop_key=dpop_key or (previous.dpop_key if previous else None),
        )


def _lifetime(expires_in) -> int | None:
    """``expires_in`` in seconds; None (unknown: the token is used until an upstream refuses it)
    for anything but a positive number. A bool is no number, and 0 or less would have every call
    refresh."""
    if isinstance(expires_in, bool):
        return None
    try:
        seconds = int(expires_in)
    except (TypeError, ValueError, OverflowError):
        return None
    return seconds if seconds > 0 else None


@dataclass(frozen=True)
class Credential:
    """An access token as it is sent: with the session's DPoP key when the token is bound to it
    (``Authorization: DPoP`` and a proof), else as a Bearer token."""

    token: str = field(repr=False)
    dpop: DPoPKey | None = field(default=None, repr=False)

    @classmethod
    def of(cls, token: str, token_type: str, key: DPoPKey | None) -> "Credential":
        """``token`` as issued (``token_type``): with ``key`` when the provider bound it to that key."""
        return cls(token, key if token_type == DPOP else None)

    @property
    def scheme(self) -> str:
        return DPOP if self.dpop is not None else BEARER


class TokenCipher:
    """Fernet encryption of tokens at rest; the first key encrypts, every key decrypts."""

    def __init__(self, keys):
        self._fernet = MultiFernet([Fernet(key) for key in keys])

    def encrypt(self, value: str | None) -> bytes | None:
        return None if value is None else self._fernet.encrypt(value.encode("utf-8"))

    def decrypt(self, value: bytes | None) -> str | None:
        """The plaintext, or None when no key in use can read it (a retired key, say)."""
        if value is None:
            return None
        try:
            return self._fernet.decrypt(bytes(value)).decode("utf-8")
        except InvalidToken:
            return None
