"""The ``devstack.*`` settings, parsed once into frozen objects.

Values accept the same ``env:NAME`` / ``file:/path`` indirection and durations (``90``, ``30s``,
``2m``, ``8h``, ``14d``) as the BFF's own settings. A missing, malformed or unknown setting raises
:class:`myapp.settings.SettingsError` with one line naming it.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from myapp.settings import SettingsError, is_loopback, parse_duration, resolve

PREFIX = "devstack."
# The provider's routes live here, so its issuer must end with it (and its cookies are scoped to it).
IDP_PATH = "/_dev/idp"
API_PATH = "/_dev/api"
# An optional second issuer (its own keys, client and people) and a second demo API audience.
IDP2_PATH = "/_dev/idp2"
API2_PATH = "/_dev/api2"
_PROVIDER_KEYS = (
    "issuer", "client_id", "client_secret", "redirect_uris", "post_logout_redirect_uris", "backchannel_logout_uri",
    "key_file", "access_token_lifetime", "id_token_lifetime", "refresh_token_lifetime", "rotate_refresh_tokens",
    "refresh_token_reuse_interval", "require_par", "client_keys", "dpop", "dpop_nonce",
    "dpop_refresh_requires_proof",
)
# DPoP at the provider: "on" binds tokens to the key of a request's proof; "off" neither advertises
# nor binds; "ignore" advertises it but issues Bearer tokens whatever the proof (a misbehaving provider).
DPOP_MODES = ("on", "off", "ignore")
MAX_API_LEEWAY = 30

KNOWN_SETTINGS = frozenset(
    PREFIX + name
    for name in (
        *(f"idp.{key}" for key in _PROVIDER_KEYS),
        *(f"idp2.{key}" for key in _PROVIDER_KEYS),
        "api.issuer",
        "api.audience",
        "api.jwks_uri",
        "api.leeway",
        "api.dpop_nonce",
        "api2.audience",
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
    # Seconds a rotated refresh token stays usable (Okta's grace period, Auth0's reuse interval).
    refresh_token_reuse_interval: int = 0
    # Every audience this provider mints access tokens for (RFC 8707 resource, or audience).
    audiences: tuple[str, ...] = ()
    path: str = IDP_PATH
    # RFC 9126: refuse authorization requests that were not pushed first.
    require_par: bool = False
    # private_key_jwt: PEM files of the keys the client signs its assertions with (their public parts are used).
    client_keys: tuple[Path, ...] = ()
    # RFC 9449: DPOP_MODES, and whether its endpoints demand a server nonce.
    dpop: str = "on"
    dpop_nonce: bool = False
    # A refresh token bound to a DPoP key is refused without a proof (RFC 9449 section 5's rule for
    # public clients); never set, this confidential client may refresh it without one (for Bearer).
    dpop_refresh_requires_proof: bool = False

    @property
    def secure_cookies(self) -> bool:
        return self.issuer.startswith("https:")


@dataclass(frozen=True)
class APISettings:
    issuer: str
    audience: str
    jwks_uri: str
    leeway: int
    # RFC 9449: whether it demands a server nonce in DPoP proofs.
    dpop_nonce: bool = False


@dataclass(frozen=True)
class DevstackSettings:
    idp: ProviderSettings
    api: APISettings
    idp2: ProviderSettings | None = None
    api2: APISettings | None = None

    @property
    def providers(self) -> dict[str, ProviderSettings]:
        """By the path segment they live under: ``idp``, and ``idp2`` when configured."""
        return {p.path.rsplit("/", 1)[1]: p for p in (self.idp, self.idp2) if p is not None}

    @property
    def apis(self) -> dict[str, APISettings]:
        return {name: api for name, api in (("api", self.api), ("api2", self.api2)) if api is not None}


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

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(name, default).lower()
        if value not in choices:
            raise SettingsError(f"{PREFIX}{name}: {value!r} is not one of {', '.join(choices)}")
        return value

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


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _issuer(reader: _Reader, key: str = "idp", path: str = IDP_PATH) -> str:
    name = PREFIX + key + ".issuer"
    issuer = check_url(name, reader.required(key + ".issuer"))
    parts = urlsplit(issuer)
    if parts.query or not parts.path.endswith(path):
        raise SettingsError(f"{name}: must be the externally visible URL ending in {path}, got {issuer!r}")
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
    audience = reader.string("api.audience", origin + API_PATH)
    audience2 = reader.string("api2.audience")
    audiences = (audience,) + ((audience2,) if audience2 else ())
    idp = _provider(reader, "idp", IDP_PATH, issuer, audience, audiences, "myapp-dev", "var/devstack-idp-key.json")
    idp2 = None
    if reader.string("idp2.issuer") is not None:
        issuer2 = _issuer(reader, "idp2", IDP2_PATH)
        idp2 = _provider(
            reader, "idp2", IDP2_PATH, issuer2, audience, audiences, "myapp-dev-partners", "var/devstack-idp2-key.json"
        )
    else:
        for key in raw:
            if key.startswith(PREFIX + "idp2."):
                raise SettingsError(f"{key}: the second issuer needs {PREFIX}idp2.issuer")
    leeway = reader.seconds("api.leeway", MAX_API_LEEWAY, minimum=0, maximum=MAX_API_LEEWAY)
    api = APISettings(
        issuer=reader.string("api.issuer", issuer),
        audience=audience,
        jwks_uri=reader.url("api.jwks_uri", issuer + "/jwks"),
        leeway=leeway,
        dpop_nonce=reader.boolean("api.dpop_nonce", False),
    )
    api2 = None
    if audience2:
        api2 = APISettings(
            issuer=api.issuer, audience=audience2, jwks_uri=api.jwks_uri, leeway=leeway, dpop_nonce=api.dpop_nonce
        )
    return DevstackSettings(idp=idp, api=api, idp2=idp2, api2=api2)


def _provider(reader, key, path, issuer, audience, audiences, client_id, key_file) -> ProviderSettings:
    redirect_uris = reader.urls(f"{key}.redirect_uris")
    if not redirect_uris:
        raise SettingsError(f"{PREFIX}{key}.redirect_uris: required setting is missing")
    client = ClientRegistration(
        client_id=reader.string(f"{key}.client_id", client_id),
        client_secret=reader.string(f"{key}.client_secret", "development-only-client-secret"),
        redirect_uris=redirect_uris,
        post_logout_redirect_uris=reader.urls(f"{key}.post_logout_redirect_uris"),
        backchannel_logout_uri=reader.url(f"{key}.backchannel_logout_uri"),
    )
    return ProviderSettings(
        issuer=issuer,
        client=client,
        key_file=Path(reader.string(f"{key}.key_file", key_file)),
        access_token_lifetime=reader.seconds(f"{key}.access_token_lifetime", 300),
        id_token_lifetime=reader.seconds(f"{key}.id_token_lifetime", 300),
        refresh_token_lifetime=reader.seconds(f"{key}.refresh_token_lifetime", 30 * 86400),
        rotate_refresh_tokens=reader.boolean(f"{key}.rotate_refresh_tokens", True),
        refresh_token_reuse_interval=reader.seconds(f"{key}.refresh_token_reuse_interval", 0, minimum=0, maximum=300),
        api_audience=audience,
        audiences=audiences,
        path=path,
        require_par=reader.boolean(f"{key}.require_par", False),
        client_keys=tuple(Path(p) for p in (reader.string(f"{key}.client_keys") or "").split()),
        dpop=reader.choice(f"{key}.dpop", "on", DPOP_MODES),
        dpop_nonce=reader.boolean(f"{key}.dpop_nonce", False),
        dpop_refresh_requires_proof=reader.boolean(f"{key}.dpop_refresh_requires_proof", False),
    )
