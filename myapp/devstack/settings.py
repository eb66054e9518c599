"""The ``devstack.*`` settings, parsed once into frozen objects.

Values accept the same ``env:NAME`` / ``file:/path`` indirection and durations (``90``, ``30s``,
``2m``, ``8h``, ``14d``) as the BFF's own settings. A missing, malformed or unknown setting raises
:class:`myapp.settings.SettingsError` with one line naming it.
"""

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from myapp.settings import SettingsError, parse_duration, resolve

PREFIX = "devstack."
# The provider's routes live here, so its issuer must end with it (and its cookies are scoped to it).
IDP_PATH = "/_dev/idp"
API_PATH = "/_dev/api"
MAX_API_LEEWAY = 30

KNOWN_SETTINGS = frozenset(
    PREFIX + name
    for name in (
        "idp.issuer",
        "idp.client_id",
        "idp.client_secret",
        "idp.redirect_uris",
        "idp.post_logout_redirect_uris",
        "idp.backchannel_logout_uri",
        "idp.key_file",
        "idp.access_token_lifetime",
        "idp.id_token_lifetime",
        "idp.refresh_token_lifetime",
        "idp.rotate_refresh_tokens",
        "api.issuer",
        "api.audience",
        "api.jwks_uri",
        "api.leeway",
    )
)


@dataclass(frozen=True)
class ClientRegistration:
    client_id: str
    client_secret: str = field(repr=False)
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...]
    backchannel_logout_uri: str | None


@dataclass(frozen=True)
class ProviderSettings:
    issuer: str
    client: ClientRegistration
    key_file: Path
    access_token_lifetime: int
    id_token_lifetime: int
    refresh_token_lifetime: int
    rotate_refresh_tokens: bool
    api_audience: str

    @property
    def secure_cookies(self) -> bool:
        return self.issuer.startswith("https:")


@dataclass(frozen=True)
class APISettings:
    issuer: str
    audience: str
    jwks_uri: str
    leeway: int


@dataclass(frozen=True)
class DevstackSettings:
    idp: ProviderSettings
    api: APISettings


class _Reader:
    def __init__(self, raw: Mapping[str, object]):
        self.raw = raw

    def string(self, name: str, default: str | None = None) -> str | None:
        value = self.raw.get(PREFIX + name)
        if isinstance(value, str):
            value = resolve(PREFIX + name, value.strip()).strip()
        if value is None or value == "":
            return default
        return str(value)

    def required(self, name: str) -> str:
        value = self.string(name)
        if value is None:
            raise SettingsError(f"{PREFIX}{name}: required setting is missing")
        return value

    def url(self, name: str, default: str | None = None) -> str | None:
        value = self.string(name, default)
        return None if value is None else check_url(PREFIX + name, value)

    def urls(self, name: str) -> tuple[str, ...]:
        value = self.string(name)
        return tuple(check_url(PREFIX + name, item) for item in (value or "").split())

    def seconds(self, name: str, default: int, minimum: int = 1, maximum: int | None = None) -> int:
        value = self.string(name)
        if value is None:
            return default
        try:
            seconds = int(parse_duration(value).total_seconds())
        except ValueError as e:
            raise SettingsError(f"{PREFIX}{name}: {e}") from None
        if seconds < minimum or (maximum is not None and seconds > maximum):
            limits = f"between {minimum}s and {maximum}s" if maximum is not None else f"at least {minimum}s"
            raise SettingsError(f"{PREFIX}{name}: must be {limits}, got {value!r}")
        return seconds

    def boolean(self, name: str, default: bool) -> bool:
        value = self.string(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        raise SettingsError(f"{PREFIX}{name}: {value!r} is not a boolean (use true or false)")


def check_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{name}: {value!r} is not an absolute http(s) URL")
    if parts.username or parts.password or parts.fragment:
        raise SettingsError(f"{name}: {value!r} may not carry credentials or a #fragment")
    return value


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _issuer(reader: _Reader) -> str:
    name = PREFIX + "idp.issuer"
    issuer = check_url(name, reader.required("idp.issuer"))
    parts = urlsplit(issuer)
    if parts.query or not parts.path.endswith(IDP_PATH):
        raise SettingsError(f"{name}: must be the externally visible URL ending in {IDP_PATH}, got {issuer!r}")
    # Authlib (both sides) refuses plain http except on loopback, as OAuth 2.0 requires.
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise SettingsError(f"{name}: plain http is only allowed on a loopback address, got {issuer!r}")
    return issuer


def load_devstack_settings(raw: Mapping[str, object]) -> DevstackSettings:
    """Parse the ``devstack.*`` keys of ``raw``; raise :class:`SettingsError` on the first problem."""
    for key in raw:
        if key.startswith(PREFIX) and key not in KNOWN_SETTINGS:
            raise SettingsError(f"{key}: unknown development-stack setting (see docs/devstack.md)")
    reader = _Reader(raw)
    issuer = _issuer(reader)
    origin = origin_of(issuer)

    redirect_uris = reader.urls("idp.redirect_uris")
    if not redirect_uris:
        raise SettingsError(f"{PREFIX}idp.redirect_uris: required setting is missing")
    client = ClientRegistration(
        client_id=reader.string("idp.client_id", "myapp-dev"),
        client_secret=reader.string("idp.client_secret", "development-only-client-secret"),
        redirect_uris=redirect_uris,
        post_logout_redirect_uris=reader.urls("idp.post_logout_redirect_uris"),
        backchannel_logout_uri=reader.url("idp.backchannel_logout_uri"),
    )
    audience = reader.string("api.audience", origin + API_PATH)
    idp = ProviderSettings(
        issuer=issuer,
        client=client,
        key_file=Path(reader.string("idp.key_file", "var/devstack-idp-key.json")),
        access_token_lifetime=reader.seconds("idp.access_token_lifetime", 300),
        id_token_lifetime=reader.seconds("idp.id_token_lifetime", 300),
        refresh_token_lifetime=reader.seconds("idp.refresh_token_lifetime", 30 * 86400),
        rotate_refresh_tokens=reader.boolean("idp.rotate_refresh_tokens", True),
        api_audience=audience,
    )
    api = APISettings(
        issuer=reader.string("api.issuer", issuer),
        audience=audience,
        jwks_uri=reader.url("api.jwks_uri", issuer + "/jwks"),
        leeway=reader.seconds("api.leeway", MAX_API_LEEWAY, minimum=0, maximum=MAX_API_LEEWAY),
    )
    return DevstackSettings(idp=idp, api=api)
