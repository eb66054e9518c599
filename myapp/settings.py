"""Every setting myapp reads, parsed once at start-up into frozen, typed objects.

A value may be written as ``env:NAME`` (read from the environment) or ``file:/path`` (read from a
file, trailing newline stripped). A missing or malformed setting raises :class:`SettingsError`
whose message is one line naming the setting; :func:`myapp.main` turns it into a clean exit.
"""

import base64
import difflib
import functools
import hashlib
import inspect
import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from urllib.parse import parse_qsl, urlsplit

import idna
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

PREFIX = "myapp."
DEVSTACK_MODULE = "myapp.devstack"
DEVSTACK_PREFIX = "devstack."
ENVIRONMENTS = ("production", "development")

# Published in development.ini on purpose; a production start-up refuses them.
DEVELOPMENT_ENCRYPTION_KEYS = frozenset({"REVWRUxPUE1FTlQtT05MWS1LRVktbm90LXNlY3JldCE="})
DEVELOPMENT_CLIENT_SECRETS = frozenset({"development-only-client-secret"})

DEFAULT_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
KNOWN_METHODS = DEFAULT_METHODS | {"OPTIONS"}
PROMPTS = frozenset({"login", "consent", "select_account"})
ACR_VALUE = re.compile(r"^[\x21-\x7e]{1,255}$")  # a printable token, as acr values are
# What a sign-in may ask for in acr_values (/login's, a step-up rule's, an upstream's challenge's): at
# most this many values, this many characters in all with the spaces between them, which is what
# login_transactions.acr_values keeps (tests/unit/test_settings.py checks its length).
MAX_ACR_VALUES = 10
MAX_ACR_VALUES_LENGTH = 1000
# The longest issuer: users, token_revocations and seen_logout_tokens keep it in 512 characters
# (tests/unit/test_settings.py checks their length).
MAX_ISSUER_LENGTH = 512
# Headers the proxy sets itself or must never pass on, whatever a deployer asks.
NEVER_FORWARDED = frozenset(
    {"cookie", "cookie2", "authorization", "host", "content-length", "forwarded", "x-real-ip", "x-request-id",
     "x-csrf", "x-csrf-token", "connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer",
     "transfer-encoding", "upgrade", "x-http-method-override", "x-method-override", "x-original-url", "x-rewrite-url",
     "dpop",
     # The client's address as proxies and CDNs write it, and a request's method or host rewritten
     # (an upstream that honours X-HTTP-Method would take a method its `methods` refuses: helper-117).
     "x-forwarded", "true-client-ip", "x-client-ip", "client-ip", "cf-connecting-ip", "fastly-client-ip",
     "x-cluster-client-ip", "x-proxyuser-ip", "x-envoy-external-address", "x-original-forwarded-for", "via",
     "x-http-method", "x-original-method", "x-original-host", "x-host", "x-forwarded-host-original",
     "x-azure-socketip", "x-appengine-user-ip", "x-original-uri", "x-envoy-original-path"}
)
# And any name that says it carries the client's address (CF-Connecting-IPv6, X-Azure-ClientIP, Fly-Client-IP).
_CLIENT_ADDRESS_WORDS = ("client-ip", "clientip", "connecting-ip", "user-ip")

# ASCII digits only: \d and int() also take other scripts' digits ("٦٠"), and int() a sign.
_DURATION = re.compile(r"([0-9]+)[ \t]*([smhd]?)")
# A whole number as an ini file writes it: ASCII digits, in groups an underscore may part ("10_485_760").
_WHOLE_NUMBER = re.compile(r"[0-9]+(?:_[0-9]+)*")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# The longest any duration setting takes (about 1,900 years): now plus it, and now minus it (an
# audit retention), are still dates for centuries to come, and no ini file that ran before is refused
# (a "keep for ever" 99999d among them); 3000000d made every sign-in a 500.
MAX_DURATION = timedelta(days=700_000)
# The longest a timeout or an interval waits: Python's own waits end at threading.TIMEOUT_MAX (about
# 106,752 days), past which the revoker's thread and every call to an upstream failed (helper-49).
MAX_WAIT = timedelta(days=100_000)
# A provider call's timeout: the refresh lock waits twice it and 5 s more, and PostgreSQL's
# lock_timeout takes at most about 24.8 days.
MAX_HTTP_TIMEOUT = timedelta(days=10)
# Of the refresh lock's timeout, what its holder keeps for its own reads and writes: its calls to
# the provider end this long before the timeout (myapp.services.tokens._holding), when a Redis
# lock's lease runs out and another process could take it (and spend the same refresh token).
REFRESH_LOCK_MARGIN = 5.0
# A step-up rule's max_age: /login refuses a longer one (myapp.services.stepup.MAX_MAX_AGE, which imports this module).
MAX_STEPUP_MAX_AGE = timedelta(days=3650)
# myapp.metrics.allow: waitress gives clients of its unix socket this REMOTE_ADDR.
LOCALHOST = "localhost"
LOOPBACK_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
_UPSTREAM_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_PROVIDER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
DEFAULT_PROVIDER = "default"
# The keys of one provider: ``myapp.oidc.<key>`` for the one provider named ``default``, or
# ``myapp.oidc.<name>.<key>`` for each provider ``myapp.providers`` lists.
PROVIDER_KEYS = (
    "issuer", "client_id", "client_secret", "token_endpoint_auth_method", "scope", "redirect_uri",
    "post_logout_redirect_uri", "authorize_params", "groups_claim", "fetch_userinfo", "http_timeout",
    "client_keys", "client_certificate", "client_assertion_audience", "par", "dpop",
)
CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")
PAR_MODES = ("auto", "always", "never")
DPOP_MODES = ("off", "auto", "required")
ASSERTION_AUDIENCES = ("issuer", "token_endpoint")
MIN_RSA_BITS = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}
# Authorization parameters myapp sets itself.
RESERVED_AUTHORIZE_PARAMS = frozenset({
    "response_type", "client_id", "redirect_uri", "scope", "state", "nonce", "code_challenge",
    "code_challenge_method", "prompt", "request_uri", "request", "dpop_jkt",
})
# Token request parameters myapp sets itself (an upstream's token_params may add others, such as audience).
RESERVED_TOKEN_PARAMS = frozenset({
    "grant_type", "refresh_token", "client_id", "client_secret", "client_assertion", "client_assertion_type",
    "scope", "resource", "code", "code_verifier", "redirect_uri", "subject_token", "subject_token_type",
    "actor_token", "actor_token_type", "requested_token_type",
})
_PARAM_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_COOKIE_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_REQUIRED = object()


def acr_values_fit(values: tuple[str, ...]) -> bool:
    """Whether a sign-in may ask for ``values`` (SPEC.md "Step-up authentication"): each an
    :data:`ACR_VALUE`, at most :data:`MAX_ACR_VALUES` of them, :data:`MAX_ACR_VALUES_LENGTH`
    characters in all."""
    return (
        len(values) <= MAX_ACR_VALUES
        and all(ACR_VALUE.match(value) for value in values)
        and len(" ".join(values)) <= MAX_ACR_VALUES_LENGTH
    )


class SettingsError(ValueError):
    """Settings are missing, malformed or unknown: one line for each, each naming its setting."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class OIDCSettings:
    """One identity provider: ``name`` in URLs and the database, ``display_name`` on the sign-in page."""

    name: str
    display_name: str
    issuer: str
    client_id: str
    client_secret: str
    token_endpoint_auth_method: str
    scope: str
    redirect_uri: str
    post_logout_redirect_uri: str
    authorize_params: Mapping[str, str]
    # None: no groups from this provider (``groups_claim = none``), whatever its tokens say.
    groups_claim: str | None
    fetch_userinfo: bool
    http_timeout: float
    # private_key_jwt (RFC 7523): PEM private keys, the first signs; the first key's certificate.
    client_keys: tuple[str, ...] = field(default=(), repr=False)
    client_certificate: str | None = field(default=None, repr=False)
    client_assertion_audience: str = "issuer"
    # Pushed authorization requests (RFC 9126): auto, always or never.
    par: str = "auto"
    # Sender-constrained tokens (RFC 9449): off, auto or required.
    dpop: str = "off"
    # Where its settings are, for messages: myapp.oidc. or myapp.oidc.<name>.
    settings_prefix: str = field(default=PREFIX + "oidc.", compare=False)


@dataclass(frozen=True)
class StepUpRule:
    """``<path prefix> = acr=<value>[,<value>...] [max_age=<duration>]`` of ``myapp.stepup.rules``."""

    prefix: str
    acr_values: tuple[str, ...] = ()
    max_age: timedelta | None = None

    def covers(self, path: str) -> bool:
        if self.prefix.endswith("/"):
            return path.startswith(self.prefix) or path == self.prefix.rstrip("/")
        return path == self.prefix or path.startswith(self.prefix + "/")


@dataclass(frozen=True)
class SessionSettings:
    cookie_name: str
    cookie_secure: bool
    cookie_samesite: str
    idle_timeout: timedelta
    absolute_timeout: timedelta


@dataclass(frozen=True)
class TokenSettings:
    encryption_keys: tuple[str, ...] = field(repr=False)
    refresh_leeway: timedelta


@dataclass(frozen=True)
class Upstream:
    name: str
    base_url: str
    timeout: float
    methods: frozenset[str]
    forward_headers: frozenset[str] = frozenset()
    # A token of its own (SPEC.md "Tokens for each upstream"): asked for with the session's refresh
    # token and these parameters, or by token exchange of the session's access token.
    scope: str | None = None
    resources: tuple[str, ...] = ()
    token_params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    exchange: bool = False
    # The providers whose sessions may call it; None: all.
    providers: frozenset[str] | None = None
    # False: a Bearer token (and no DPoP proof), which only a token the provider issued as Bearer can be.
    dpop: bool = True
    # What /api/{name} with nothing below it calls: the base URL as written, "/" and all or not
    # (SPEC.md: the path below it passes through, and there is none); "": ``base_url``.
    bare_url: str = ""

    @property
    def has_own_token(self) -> bool:
        return self.exchange or bool(self.scope or self.resources or self.token_params)

    @functools.cached_property
    def minted_for(self) -> str:
        """What a token of its own is asked for with and sent to, as one digest: stored with each
        token minted for it, so that a token minted before a restart that changed any of it (the
        server's URL, the scope, resources, parameters, exchange) is never sent, whatever the
        upstream is still called; SPEC.md: "An upstream never receives a token minted for another
        upstream". Not ``dpop``: a bound token is refused by its type already (TokenManager._takes)."""
        what = ["minted_for/1", self.base_url, self.scope, list(self.resources), sorted(self.token_params.items()),
                self.exchange]
        return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:32]

    def accepts(self, provider: str) -> bool:
        return self.providers is None or provider in self.providers


@dataclass(frozen=True)
class ProxySettings:
    max_body_bytes: int


@dataclass(frozen=True)
class RevocationSettings:
    # Seconds between the revoker's passes in each process; 0: none (myapp-purge does them).
    interval: float


@dataclass(frozen=True)
class OTelSettings:
    enabled: bool = False
    exporter: str = "otlp"  # or console
    endpoint: str | None = None
    service_name: str = "myapp"


@dataclass(frozen=True)
class AuditSettings:
    # Records older than this are deleted by myapp-purge.
    retention: timedelta


@dataclass(frozen=True)
class LockSettings:
    backend: str
    redis_url: str | None


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool
    # As written: IP addresses, networks (CIDR) and localhost, each checked at start-up.
    allow: tuple[str, ...]

    def __post_init__(self):
        networks = tuple(network for word in self.allow for network in _allowed_networks(word))
        object.__setattr__(self, "_networks", networks)

    def allows(self, address: str | None) -> bool:
        """Whether a client at ``address`` (the ``REMOTE_ADDR`` waitress computes) may read /metrics."""
        if address == LOCALHOST:
            return LOCALHOST in self.allow
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is 127.0.0.1
        return any(ip in network or (mapped is not None and mapped in network) for network in self._networks)


def _allowed_networks(word: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """One word of myapp.metrics.allow: an address or a network; ``localhost``, this machine (its
    loopback addresses, and waitress's unix socket). Raises ValueError for anything else."""
    if word == LOCALHOST:
        return LOOPBACK_NETWORKS
    return (ipaddress.ip_network(word),)


@dataclass(frozen=True)
class Settings:
    environment: str
    # Upstreams serving the demo API's /notes, one dashboard card each (the first is ``dashboard_upstream``).
    dashboard_upstreams: tuple[str, ...]
    login_rate_limit: int
    database_url: str = field(repr=False)
    public_url: str
    admin_group: str
    # In the order myapp.providers lists them; the first is the default of scripts and the chooser.
    providers: Mapping[str, OIDCSettings]
    session: SessionSettings
    tokens: TokenSettings
    upstreams: Mapping[str, Upstream]
    proxy: ProxySettings
    lock: LockSettings
    revocation: RevocationSettings
    metrics: MetricsSettings
    devstack_included: bool
    # The most specific rule first (see StepUpRule.covers).
    stepup_rules: tuple[StepUpRule, ...] = ()
    audit: AuditSettings = AuditSettings(retention=timedelta(days=400))
    # text or json (one object a line, with the request id and the trace id).
    log_format: str = "text"
    otel: OTelSettings = OTelSettings()

    @property
    def refresh_lock_timeout(self) -> float:
        """How long a refresh waits for the session's lock (and a Redis lock's lease): room for two
        calls to the provider (a refresh and its DPoP nonce retry), each over within its timeout,
        and REFRESH_LOCK_MARGIN for the holder's own reads and writes."""
        return max(p.http_timeout for p in self.providers.values()) * 2 + REFRESH_LOCK_MARGIN

    @property
    def dashboard_upstream(self) -> str | None:
        return self.dashboard_upstreams[0] if self.dashboard_upstreams else None

    @property
    def is_development(self) -> bool:
        return self.environment == "development"


def resolve(name: str, value: str, environ: Mapping[str, str] = os.environ) -> str:
    """Apply ``env:`` / ``file:`` indirection to one raw value."""
    if value.startswith("env:"):
        var = value[4:].strip()
        if not var:
            raise SettingsError(f"{name}: 'env:' needs the name of an environment variable")
        if any(c.isspace() or not c.isprintable() for c in var):
            # "env:KEYS <old key>": what follows the name may be a secret, and is not repeated (helper-142).
            raise SettingsError(
                f"{name}: 'env:' takes the name of one environment variable, and nothing after it "
                "(what was written is not repeated here: it may hold a secret)"
            )
        if var not in environ:
            raise SettingsError(f"{name}: environment variable {var} is not set")
        return environ[var]
    if value.startswith("file:"):
        path = value[5:].strip()
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().rstrip("\r\n")
        except OSError as e:
            raise SettingsError(f"{name}: cannot read {path}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise SettingsError(f"{name}: {path} is not UTF-8 text") from None
    return value


class DurationTooLong(ValueError):
    """A well-formed duration beyond the longest allowed."""


def parse_duration(text: str, maximum: timedelta = MAX_DURATION) -> timedelta:
    match = _DURATION.fullmatch(text.strip().lower())
    if not match:
        raise ValueError(f"{text!r} is not a duration (use seconds, or 30s, 15m, 8h, 14d)")
    digits, unit = match.groups()
    digits = digits.lstrip("0") or "0"
    # More digits than any duration up to the maximum has: no need to make a huge number first.
    seconds = int(digits) * _DURATION_UNITS[unit] if len(digits) <= 12 else None
    if seconds is None or seconds > maximum.total_seconds():
        years = f" ({maximum.days // 365} years)" if maximum.days >= 365 else ""
        raise DurationTooLong(f"{text.strip()!r} is longer than {maximum.days}d{years}")
    return timedelta(seconds=seconds)


def _reports(placeholder):
    """A reader method that records its setting's problem and carries on with ``placeholder(default)``,
    so that one start reports every problem, not the first."""

    def decorate(method):
        signature = inspect.signature(method)

        @functools.wraps(method)
        def read(self, name, *args, **kwargs):
            self.known.add(name)
            try:
                return method(self, name, *args, **kwargs)
            except SettingsError as e:
                self.problems.extend(e.problems)
                call = signature.bind(self, name, *args, **kwargs)
                call.apply_defaults()
                default = call.arguments.get("default", _REQUIRED)
                return placeholder(None if default is _REQUIRED else default)

        return read

    return decorate


_SAME = lambda default: default  # noqa: E731
# Where the settings part a list: spaces, tabs, line ends and commas.
_LIST_WORD = re.compile(r"[\s,]+")
_SOME_URL = lambda default: default or "https://invalid.invalid"  # noqa: E731


class _Reader:
    """Reads raw ini values by name, each method one kind of value; remembers the names it read
    (every other ``myapp.*`` key is unknown) and the problems it found."""

    def __init__(self, raw: Mapping[str, object], environ: Mapping[str, str]):
        self.raw = raw
        self.environ = environ
        self.known: set[str] = set()
        self.problems: list[str] = []
        # What each env:/file: reference read (and what the app rewrote it as, also_read): a problem
        # names the reference, never the value.
        self._read_from: list[tuple[str, str]] = []

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def read_cleanly(self, read: Callable, *args, **kwargs) -> tuple[object, bool]:
        """``read(*args, **kwargs)`` (a reading of this reader's), and whether it found nothing
        wrong: what depends on a value that could not be read is not checked against it."""
        known_problems = len(self.problems)
        value = read(*args, **kwargs)
        return value, len(self.problems) == known_problems

    def _get(self, name, default):
        value = self.raw.get(name)
        if isinstance(value, str):
            reference = value.strip()
            value = resolve(name, reference, self.environ).strip()
            if value and reference.startswith(("env:", "file:")):
                self._read_from.append((reference, value))
        if value is None or value == "":
            if default is _REQUIRED:
                raise SettingsError(f"{name}: required setting is missing")
            return default
        return value

    @_reports(_SAME)
    def string(self, name, default=_REQUIRED):
        return self._get(name, default)

    def reported(self) -> list[str]:
        """The problems, each without any value an ``env:``/``file:`` reference read: such a
        value may be a secret named in the wrong setting (``issuer = file:/run/secrets/...``),
        and the problems go to the log. It is spelled as where it came from instead."""
        problems = self.problems
        # The value, its lines, and its words as the settings split lists (at spaces and commas):
        # a problem names one word of a list (two Fernet keys read as an upstream's name, helper-117).
        # And each side of a map's "=" (an error quotes a line's name: a base64 secret read as a
        # map names its part before the "=" padding, helper-119).
        pieces = {
            (piece, reference)
            for reference, value in self._read_from
            for piece in (
                value, *value.splitlines(), *_LIST_WORD.split(value),
                *(side for line in value.splitlines() for side in line.split("=", 1)),
            )
            if piece.strip()
        }
        # Longest first, as written and as repr() escapes it, in any case (a method is shown in
        # capitals, a header in lower case). A piece of 8 characters or more wherever it stands but
        # inside a setting's dotted name (myapp.upstream.payments.methods keeps the upstream's name,
        # helper-119); a shorter one where a problem quotes it ('hunter2'), so that the words of a
        # message stay whole.
        for piece, reference in sorted(pieces, key=lambda p: len(p[0]), reverse=True):
            piece = piece.strip()
            said = f"the value of {reference}"
            for spelling in {piece, repr(piece)[1:-1]}:
                escaped = re.escape(spelling)
                pattern = rf"(?<!\w)(?<!\w\.){escaped}(?!\w)(?!\.\w)" if len(piece) >= 8 else f"(?P<q>['\"]){escaped}(?P=q)"
                found = re.compile(pattern, re.IGNORECASE)
                problems = [found.sub(lambda _: said, problem) for problem in problems]
        # Two that read alike once spelled so (two words of one file: value, each refused) are one.
        return list(dict.fromkeys(problems))

    def also_read(self, name: str, value: str) -> None:
        """``value`` is setting ``name``'s as the app rewrote it (the public URL as an origin): when
        ``name`` was read through ``env:``/``file:``, a problem spells it as that reference too."""
        reference = self.raw.get(name)
        if isinstance(reference, str) and reference.strip().startswith(("env:", "file:")) and value:
            self._read_from.append((reference.strip(), value))

    @_reports(_SAME)
    def boolean(self, name, default):
        value = self._get(name, None)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        lowered = str(value).lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise SettingsError(f"{name}: {value!r} is not a boolean (use true or false)")

    @_reports(_SAME)
    def integer(self, name, default, minimum=1):
        value = self._get(name, None)
        if value is None:
            return default
        text = str(value).strip()
        if not _WHOLE_NUMBER.fullmatch(text):
            # int() would also take "+60", "1__0", "_1" and other scripts' digits.
            raise SettingsError(f"{name}: {value!r} is not a whole number (digits 0-9, such as 300)")
        digits = text.replace("_", "").lstrip("0") or "0"
        if len(digits) > 18:  # more than any count or size here needs; int() refuses past 4,300 digits
            raise SettingsError(f"{name}: {value!r} is too large")
        number = int(digits)
        if number < minimum:
            raise SettingsError(f"{name}: must be at least {minimum}, got {number}")
        return number

    def seconds(self, name, default, maximum=MAX_WAIT):
        return self.duration(name, timedelta(seconds=default), maximum=maximum).total_seconds()

    @_reports(_SAME)
    def duration(self, name, default, minimum=timedelta(seconds=1), maximum=MAX_DURATION):
        value = self._get(name, None)
        if value is None:
            return default
        try:
            result = parse_duration(str(value), maximum)
        except ValueError as e:
            raise SettingsError(f"{name}: {e}") from None
        if result < minimum:
            raise SettingsError(f"{name}: must be at least {int(minimum.total_seconds())}s")
        return result

    @_reports(_SAME)
    def choice(self, name, default, choices, *, casefold=False):
        value = self._get(name, default)
        key = value.lower() if casefold else value
        for candidate in choices:
            if (candidate.lower() if casefold else candidate) == key:
                return candidate
        raise SettingsError(f"{name}: {value!r} is not one of {', '.join(choices)}")

    @_reports(_SOME_URL)
    def url(self, name, default=_REQUIRED, *, allow_path=True):
        value = self._get(name, default)
        if value is None:
            return None
        return _check_url(name, value, allow_path=allow_path)

    @_reports(_SAME)
    def words(self, name, default=()):
        value = self._get(name, None)
        return tuple(str(value).split()) if value else tuple(default)

    @_reports(lambda default: {})
    def mapping(self, name):
        """One ``key = value`` a line; blank lines and ``#`` comments ignored."""
        value = self._get(name, None)
        if not value:
            return {}
        result = {}
        for lineno, line in enumerate(str(value).splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, item = line.partition("=")
            key, item = key.strip(), item.strip()
            if not sep or not key or not item:
                raise SettingsError(f"{name}: line {lineno} is not 'key = value': {line!r}")
            if key in result:
                raise SettingsError(f"{name}: {key!r} is given twice")
            result[key] = item
        return result


def _shown_url(value: str) -> str:
    """``value`` as an error about it repeats it: not at all when it may hold a secret (a query,
    as a collector's ?api_key=, or userinfo), which the line would put in the journal (helper-147)."""
    if any(c in value for c in "?@#;"):
        return "the URL (not repeated here: its query, fragment or user part may hold a secret)"
    return repr(value)


def _check_url(name, value, *, allow_path=True):
    shown = _shown_url(value)
    try:
        parts = urlsplit(value)
    except ValueError:  # an unclosed [ or a bracketed host that is no IP address
        raise SettingsError(f"{name}: {shown} is not a valid URL (a host in [brackets] must be an IPv6 address)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{name}: {shown} is not an absolute http(s) URL")
    if parts.username is not None:  # even empty, as in https://@host or https://:@host
        raise SettingsError(f"{name}: credentials do not belong in the URL; use the secret settings")
    if parts.fragment:
        raise SettingsError(f"{name}: a URL here may not have a #fragment")
    if not allow_path and parts.path not in ("", "/"):
        raise SettingsError(f"{name}: must be an origin such as https://app.example.com, without a path")
    if not allow_path and ("?" in value or "#" in value):
        raise SettingsError(f"{name}: must be an origin such as https://app.example.com, without a query or fragment")
    ascii_host = None if allow_path else _ascii_host(_written_host(parts))
    if not allow_path and ascii_host is None:
        raise SettingsError(f"{name}: {value!r} has a host with no ASCII (IDNA) form, as browsers would send it")
    if not allow_path and not _is_host(ascii_host):
        # No browser sends such an Origin: every form and sign-out would be refused (helper-117).
        raise SettingsError(
            f"{name}: {value!r} has no host a browser could send (names of letters, digits, hyphens "
            "and dots, or an IP address)"
        )
    try:
        port = parts.port
    except ValueError:
        raise SettingsError(f"{name}: {shown} has an invalid port") from None
    if port == 0:
        raise SettingsError(f"{name}: {shown} has an invalid port")
    return value


UPSTREAM_KEYS = (
    "timeout", "methods", "forward_headers", "scope", "resource", "token_params", "exchange", "providers", "dpop",
)


def _resource_uris(reader: _Reader, name: str) -> tuple[str, ...]:
    """RFC 8707 resource indicators: absolute URIs without a fragment."""
    uris = reader.words(name)
    for uri in uris:
        try:
            parts = urlsplit(uri)
        except ValueError:
            reader.problem(f"{name}: {_shown_url(uri)} is not a valid URI")
            continue
        if not parts.scheme or "#" in uri or not (parts.netloc or parts.path):
            reader.problem(f"{name}: {_shown_url(uri)} is not an absolute URI without a #fragment")
    return uris


def _upstream_token(reader: _Reader, key: str, providers: Mapping[str, "OIDCSettings"]) -> dict:
    """The settings that give an upstream a token of its own, and the providers it accepts."""
    scope = reader.string(key + "scope", None)
    resources = _resource_uris(reader, key + "resource")
    token_params = reader.mapping(key + "token_params")
    for param in token_params:
        if param in RESERVED_TOKEN_PARAMS or not _PARAM_NAME.match(param):
            reader.problem(f"{key}token_params: {param!r} cannot be set here")
    exchange = reader.boolean(key + "exchange", False)
    if exchange and not (scope or resources or "audience" in token_params):
        reader.problem(f"{key}exchange: token exchange needs a target: {key}resource, {key}scope or an audience in {key}token_params")
    accepted = None
    names = reader.words(key + "providers")
    if names:
        accepted = frozenset(names)
        for provider in names:
            if provider not in providers:
                reader.problem(f"{key}providers: no provider named {provider!r} in myapp.providers")
    return {
        "scope": " ".join(scope.split()) if scope else None,
        "resources": resources,
        "token_params": MappingProxyType(token_params),
        "exchange": exchange,
        "providers": accepted,
    }


def _upstreams(reader: _Reader, providers: Mapping[str, "OIDCSettings"]) -> tuple[dict[str, Upstream], set[str] | None]:
    """The upstreams, and the names myapp.upstreams gives that could not be read (None: which it
    meant is not known, the setting or a name in it refused). The settings that name one are not
    checked against it: each would say there is no such upstream, which was not so (one line per
    problem, helper-136); they are, once it reads."""
    upstreams = {}
    listed, read = reader.read_cleanly(reader.mapping, PREFIX + "upstreams")
    unread: set[str] | None = set() if read else None
    for upstream_name, base_url in listed.items():
        where = f"myapp.upstreams ({upstream_name})"
        if not _UPSTREAM_NAME.match(upstream_name):
            reader.problem(
                f"myapp.upstreams: {upstream_name!r} is not a valid upstream name "
                "(lower-case letters, digits, '-' and '_')"
            )
            unread = None
            continue
        try:
            base = _check_url(where, base_url)
        except SettingsError as e:
            reader.problem(str(e))
            if unread is not None:
                unread.add(upstream_name)
            continue
        # Even empty: "https://host/base?" (or "#") became the base ".../base?/", whose path is
        # "/base", so a call's path was appended to "/base" (a sibling path) and its proof named "/base".
        if "?" in base:
            reader.problem(f"{where}: a base URL may not have a query")
        elif "#" in base:
            reader.problem(f"{where}: a base URL may not have a #fragment")
        key = f"{PREFIX}upstream.{upstream_name}."
        methods = frozenset(m.upper() for m in reader.words(key + "methods", DEFAULT_METHODS))
        unknown = methods - KNOWN_METHODS
        if unknown:
            reader.problem(f"{key}methods: unknown HTTP method {sorted(unknown)[0]!r}")
        forward_headers = frozenset(h.lower() for h in reader.words(key + "forward_headers"))
        for header in sorted(forward_headers):
            if (
                not _COOKIE_NAME.match(header)
                or header in NEVER_FORWARDED
                or header.startswith("x-forwarded-")
                or any(word in header for word in _CLIENT_ADDRESS_WORDS)
            ):
                reader.problem(f"{key}forward_headers: {header!r} cannot be forwarded")
        base_url = base.rstrip("/") + "/"
        upstreams[upstream_name] = Upstream(
            name=upstream_name,
            base_url=base_url,
            # A host's root is "/" either way; "https://host/v1" is itself, without the "/".
            bare_url=base if urlsplit(base).path.strip("/") and not base.endswith("/") else base_url,
            timeout=reader.seconds(key + "timeout", 30),
            methods=methods,
            forward_headers=forward_headers,
            dpop=reader.boolean(key + "dpop", True),
            **_upstream_token(reader, key, providers),
        )
    for upstream in upstreams.values():
        binding = sorted(
            name for name, provider in providers.items() if provider.dpop != "off" and upstream.accepts(name)
        )
        if not upstream.dpop and not upstream.has_own_token and binding:
            reader.problem(
                f"{PREFIX}upstream.{upstream.name}.dpop = false needs a token of its own for that upstream "
                f"({PREFIX}upstream.{upstream.name}.scope, .resource or .token_params): the session's own token "
                f"is bound to its DPoP key at provider {binding[0]!r}, and a bound token is never sent as Bearer"
            )
    for key in reader.raw:
        if key.startswith(PREFIX + "upstream."):
            upstream_name = key[len(PREFIX + "upstream.") :].rpartition(".")[0]
            if upstream_name not in upstreams:
                reader.known.add(key)
                if unread is not None and upstream_name not in unread:
                    reader.problem(f"{key}: no upstream named {upstream_name!r} in myapp.upstreams")
    return upstreams, unread


def _providers(reader: _Reader, public_url: str) -> dict[str, OIDCSettings]:
    """``myapp.providers`` and each one's ``myapp.oidc.<name>.*``; without it, ``myapp.oidc.*`` is
    the one provider, ``default``."""
    listed, read = reader.read_cleanly(reader.mapping, PREFIX + "providers")
    providers_refused = not read
    if not listed:
        listed = {DEFAULT_PROVIDER: "Sign in"}
        prefixes = {DEFAULT_PROVIDER: PREFIX + "oidc."}
    else:
        prefixes = {}
        for name in listed:
            if not _PROVIDER_NAME.match(name):
                reader.problem(
                    f"myapp.providers: {name!r} is not a valid provider name (lower-case letters, digits and '-', "
                    "starting with a letter or digit, at most 63 characters)"
                )
                # What it was meant to name is not known: the settings of providers it does not
                # list are not each refused as well (one line per problem, helper-136).
                providers_refused = True
                continue
            prefixes[name] = f"{PREFIX}oidc.{name}."
        # The provider named default may keep the plain myapp.oidc.* keys of a one-provider setup.
        plain = [key for key in reader.raw if key.count(".") == 2 and key.startswith(PREFIX + "oidc.")]
        nested = any(key.startswith(f"{PREFIX}oidc.{DEFAULT_PROVIDER}.") for key in reader.raw)
        if DEFAULT_PROVIDER in prefixes and plain and not nested:
            prefixes[DEFAULT_PROVIDER] = PREFIX + "oidc."
        elif DEFAULT_PROVIDER in prefixes:
            # Both ways at once: the provider's own keys win, and each plain one says what to write.
            for key in plain:
                setting = key.rpartition(".")[2]
                if setting in PROVIDER_KEYS:
                    reader.known.add(key)
                    reader.problem(
                        f"{key}: the provider 'default' is set by myapp.oidc.default.* keys here; "
                        f"write myapp.oidc.default.{setting} instead"
                    )
        else:
            for key in plain:
                reader.known.add(key)
                if not providers_refused:
                    reader.problem(
                        f"{key}: myapp.providers lists no provider named 'default'; "
                        f"give each provider its own myapp.oidc.<name>.{key.rpartition('.')[2]}"
                    )
    _refuse_unlisted_providers(reader, listed, prefixes, quietly=providers_refused)
    providers = {name: _provider(reader, name, listed[name], prefix, public_url) for name, prefix in prefixes.items()}
    seen: dict[str, str] = {}
    for provider in providers.values():
        if provider.issuer == _SOME_URL(None):
            continue  # missing or malformed, and already reported
        other = seen.setdefault(provider.issuer, provider.name)
        if other != provider.name:
            reader.problem(
                f"{provider.settings_prefix}issuer: provider {other!r} has the same issuer; back-channel logout "
                "and revocation could not tell them apart"
            )
    return providers


def _refuse_unlisted_providers(reader: _Reader, listed: Mapping[str, str], prefixes: Mapping[str, str], *,
                               quietly: bool) -> None:
    """``myapp.oidc.<name>.<key>`` for a provider ``myapp.providers`` does not list (as for upstreams);
    ``quietly`` when myapp.providers itself is refused already: what it lists is not known then."""
    nested = {name for name, prefix in prefixes.items() if prefix != PREFIX + "oidc."}
    for key in reader.raw:
        if not key.startswith(PREFIX + "oidc.") or key.count(".") < 3:
            continue
        name, _, setting = key.removeprefix(PREFIX + "oidc.").partition(".")
        if name in nested:
            continue  # a listed provider's key, or a typo in one
        reader.known.add(key)
        if quietly or (name in listed and name not in prefixes):
            continue  # myapp.providers, or the name it lists, is refused already
        if name == DEFAULT_PROVIDER and prefixes.get(name) == PREFIX + "oidc.":  # no myapp.providers
            reader.problem(f"{key}: without myapp.providers, the provider 'default' is set by myapp.oidc.{setting}")
            continue
        hint = f"; did you mean {PREFIX}oidc.{name.lower()}.{setting}?" if name.lower() in nested else ""
        reader.problem(f"{key}: no provider named {name!r} in myapp.providers{hint}")


def _groups_claim(value: str) -> str | None:
    """The claim naming a user's groups, or None for ``none``: a provider trusted to sign people
    in but not with this site's groups (its users have none). A claim's name would not do: the
    provider writes its own tokens, and could fill whatever claim was named."""
    return None if value.lower() == "none" else value


def _provider(reader: _Reader, name: str, display_name: str, prefix: str, public_url: str) -> OIDCSettings:
    callback_path = "/auth/callback" if name == DEFAULT_PROVIDER else f"/auth/callback/{name}"
    auth_method = reader.choice(prefix + "token_endpoint_auth_method", "client_secret_basic", CLIENT_AUTH_METHODS)
    client_keys, read = reader.read_cleanly(_client_keys, reader, prefix + "client_keys")
    # Present but empty (or only comments) is as missing; a key that could not be read is reported already.
    if auth_method == "private_key_jwt" and not client_keys and read:
        reader.problem(f"{prefix}client_keys: required by token_endpoint_auth_method = private_key_jwt")
    client_certificate = _client_certificate(reader, prefix + "client_certificate", client_keys)
    authorize_params = reader.mapping(prefix + "authorize_params")
    for key in authorize_params:
        if key in RESERVED_AUTHORIZE_PARAMS or not _PARAM_NAME.match(key):
            reader.problem(f"{prefix}authorize_params: {key!r} cannot be set here")
    response_mode = authorize_params.get("response_mode", "query")
    if response_mode != "query":
        reader.problem(
            f"{prefix}authorize_params: response_mode = {response_mode!r} cannot be read by /auth/callback, which takes "
            "the provider's answer in a GET query string; leave response_mode out (or write query)"
        )
    scope = reader.string(prefix + "scope", "openid profile email offline_access")
    # A comma may be part of a scope (RFC 6749 section 3.3): only 'openid' shows a list written with commas.
    listed = next((token for token in scope.split() if "," in token and "openid" in token.split(",")), None)
    if listed:
        reader.problem(f"{prefix}scope: scopes are separated by spaces, not commas ({listed!r})")
    elif "openid" not in scope.split():
        commas = " (scopes are separated by spaces, not commas)" if "," in scope else ""
        reader.problem(f"{prefix}scope: must include 'openid'{commas}")
    redirect_uri = reader.url(prefix + "redirect_uri", public_url + callback_path)
    # The callback's own route, on the origin whose cookie holds the login transaction.
    callbacks = [public_url + callback_path]
    if name == DEFAULT_PROVIDER:
        callbacks.append(public_url + "/auth/callback/default")
    if public_url != _SOME_URL(None) and not any(_same_url(redirect_uri, callback) for callback in callbacks):
        also = f" (or {callbacks[1]})" if len(callbacks) > 1 else ""
        reader.problem(
            f"{prefix}redirect_uri: {_shown_url(redirect_uri)} is not {callbacks[0]}{also}, myapp.public_url and the callback "
            f"of provider {name!r} (each provider has its own, a defence against mix-up attacks)"
        )
    issuer = reader.url(prefix + "issuer")
    if "?" in issuer or "#" in issuer:
        # OpenID Connect Discovery 1.0 section 3: no query nor fragment, not even a bare '?' or '#'
        # (urlsplit reads no fragment in a trailing '#'); discovery would be read from
        # {issuer}/.well-known/openid-configuration, after the query or fragment, and never be found.
        reader.problem(
            f"{prefix}issuer: an issuer has no query or fragment; write it as the provider's discovery document "
            "names it, without '?' or '#'"
        )
    if len(issuer) > MAX_ISSUER_LENGTH:
        reader.problem(f"{prefix}issuer: at most {MAX_ISSUER_LENGTH} characters (users are keyed by it), not {len(issuer)}")
    return OIDCSettings(
        name=name,
        display_name=display_name,
        issuer=issuer,
        client_id=reader.string(prefix + "client_id"),
        # Not needed when the client authenticates with a key.
        client_secret=reader.string(prefix + "client_secret", "" if auth_method == "private_key_jwt" else _REQUIRED),
        token_endpoint_auth_method=auth_method,
        scope=" ".join(scope.split()),
        redirect_uri=redirect_uri,
        post_logout_redirect_uri=reader.url(prefix + "post_logout_redirect_uri", public_url + "/"),
        authorize_params=MappingProxyType(authorize_params),
        groups_claim=_groups_claim(reader.string(prefix + "groups_claim", "groups")),
        fetch_userinfo=reader.boolean(prefix + "fetch_userinfo", True),
        http_timeout=reader.seconds(prefix + "http_timeout", 10, MAX_HTTP_TIMEOUT),
        client_keys=client_keys,
        client_certificate=client_certificate,
        client_assertion_audience=reader.choice(prefix + "client_assertion_audience", "issuer", ASSERTION_AUDIENCES),
        par=reader.choice(prefix + "par", "auto", PAR_MODES),
        dpop=reader.choice(prefix + "dpop", "off", DPOP_MODES),
        settings_prefix=prefix,
    )


def _origin(url: str) -> str:
    """``url`` written as browsers write an origin (RFC 6454 section 6.2), in ``Origin`` and ``Referer``
    alike: scheme and host in lower case, the scheme's default port left out, no trailing slash."""
    parts = urlsplit(url)
    mapped = _ascii_host(_written_host(parts)) or parts.hostname
    host = _canonical_ip(mapped) or mapped
    if ":" in host:
        host = f"[{host}]"
    port = "" if parts.port in (None, DEFAULT_PORTS[parts.scheme]) else f":{parts.port}"
    return f"{parts.scheme}://{host}{port}"


_HOST_LABEL = re.compile(r"[a-z0-9_-]{1,63}")


def _is_host(host: str) -> bool:
    """Whether ``host`` (in its ASCII form) is one a browser would put in ``Origin``: an IP address,
    or a name of labels of letters, digits, hyphens and underscores (a trailing dot allowed), each
    ``xn--`` label a punycode one, and one whose last label is a number an IPv4 address."""
    if ":" in host or "%" in host:
        return "%" not in host and _canonical_ip(host) is not None  # no zone id: browsers refuse one
    name = host.removesuffix(".")
    labels = name.lower().split(".")
    if len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return False
    if labels[-1].isdigit() or labels[-1].startswith("0x"):
        return _canonical_ip(name) is not None
    for label in labels:
        if label.startswith("xn--"):
            try:
                decoded = label[4:].encode("ascii").decode("punycode")
            except UnicodeError:
                return False
            if not decoded or decoded.isascii() or not _unicode_label_ok(decoded) or _remapped(decoded) != decoded:
                return False  # xn-- alone, punycode of nothing a name needs it for, or of a label browsers refuse
    return True


def _unicode_label_ok(label: str) -> bool:
    """The checks of UTS 46 that the WHATWG URL standard keeps on (helper-121: a label starting
    with a combining mark, a joiner out of its context, mixed directions): browsers refuse such a
    host, so a public URL with one could never be reached."""
    try:
        idna.check_initial_combiner(label)
        idna.check_bidi(label)
        return all(idna.valid_contextj(label, i) for i, c in enumerate(label) if c in "\u200c\u200d")
    except (idna.IDNAError, ValueError):
        return False


def _remapped(label: str) -> str | None:
    """A label as UTS 46 maps it; a punycode label must come back unchanged (``xn--a-ecp`` is
    ``a⒈``, which maps to ``a1.``)."""
    try:
        return idna.uts46_remap(label, std3_rules=False, transitional=False)
    except idna.IDNAError:
        return None


def _written_host(parts) -> str:
    """The host of ``parts`` as written: urlsplit's ``hostname`` is put in lower case by Python's
    ``str.lower()``, whose final-sigma rule makes ``ΟΔΟΣ`` ``οδος``, where UTS 46 maps ``Σ`` to
    ``σ`` as browsers do (helper-121). An IPv6 address without its brackets."""
    host = parts.netloc.rpartition("@")[2]
    if host.startswith("["):
        return host[1 : host.find("]")].lower()
    name, colon, port = host.rpartition(":")
    return name if colon and (port.isdigit() or not port) else host


def _canonical_ip(host: str) -> str | None:
    """An IP address as browsers serialize it in an origin (``[0:0:0:0:0:0:0:1]`` is ``[::1]``,
    ``127.0.0.1.`` is ``127.0.0.1``, an IPv4-mapped address in hexadecimal), or None for a name."""
    try:
        address = ipaddress.ip_address(host.removesuffix(".") if ":" not in host else host)
    except ValueError:
        return None
    return str(address)


def _ascii_host(host: str) -> str | None:
    """``host`` as browsers send it in ``Origin`` (an internationalized name in its xn-- form,
    RFC 6454 section 4), or None when it has none."""
    if host.isascii():
        return host.lower()
    try:
        # UTS 46's mapping, as the WHATWG URL standard has browsers map a name (faß.de is
        # xn--fa-hia.de; Python's own codec is IDNA 2003, which made it fass.de: helper-119),
        # without IDNA 2008's stricter rules for labels (☃.example and _dmarc.bücher.example are
        # names browsers send: helper-120); each label that is not ASCII in punycode.
        mapped = idna.uts46_remap(host, std3_rules=False, transitional=False)
        labels = mapped.split(".")
        if not all(label.isascii() or _unicode_label_ok(label) for label in labels):
            return None
        return ".".join(label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii") for label in labels)
    except (idna.IDNAError, UnicodeError):
        return None


def _check_redis_url(reader: _Reader, name: str, url: str) -> None:
    """A URL redis-py can read, checked here so that start-up says which setting is wrong instead of
    a traceback whose message names part of the password. Never echoed: it may hold one."""
    try:
        parts = urlsplit(url)
        parts.port  # as redis-py reads it, whose ValueError names what it found where the port goes
    except ValueError:
        reader.problem(
            f"{name}: not a valid URL (a password holding / ? or # is written %2F %3F %23, a host in "
            "[brackets] is an IPv6 address; the URL is not repeated here: it may hold a password)"
        )
        return
    if parts.scheme not in ("redis", "rediss", "unix"):
        written = f"a {parts.scheme}:// URL" if parts.scheme else "a URL without a scheme"
        reader.problem(f"{name}: {written} is not a redis://, rediss:// or unix:// URL (the rest may hold a password)")
        return
    # The database number, in the path (redis://) or the query (?db=): redis-py takes one it cannot
    # read for none, database 0, where another deployment's locks may be (helper-142).
    databases = [parts.path.strip("/")] if parts.scheme != "unix" and parts.path.strip("/") else []
    databases += [value for key, value in parse_qsl(parts.query, keep_blank_values=True) if key == "db"]
    if any(not (number.isascii() and number.isdigit()) for number in databases):
        reader.problem(
            f"{name}: the database is a number (redis://host:6379/2, or ?db=2); the URL is not repeated here: "
            "it may hold a password"
        )


def _same_url(url: str, expected: str) -> bool:
    """Whether ``url`` is ``expected`` as a browser reads it: scheme and host in any case (an
    internationalized host in Unicode or its ASCII form), the scheme's default port written or not,
    the same path; no query or fragment."""

    def place(parts):
        port = DEFAULT_PORTS[parts.scheme] if parts.port is None else parts.port
        return parts.scheme, _ascii_host(parts.hostname) or parts.hostname, port, parts.path

    return "?" not in url and "#" not in url and place(urlsplit(url)) == place(urlsplit(expected))


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost (as urlsplit gives a host name: lower case): never off the machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _client_keys(reader: _Reader, name: str) -> tuple[str, ...]:
    """PEM private keys, one ``file:`` (or ``env:``) reference a line, each RSA 2048+ or EC P-256."""
    reader.known.add(name)
    value = reader.raw.get(name)
    if not isinstance(value, str) or not value.strip():
        return ()
    keys = []
    for line in value.strip().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith(("file:", "env:")):
            reader.problem(f"{name}: each line must be file:/path/to/key.pem (or env:NAME), not the key itself")
            continue
        try:
            pem = resolve(name, line, reader.environ)
            keys.append(_check_private_key(name, pem))
        except SettingsError as e:
            reader.problems.extend(e.problems)
    return tuple(keys)


def _check_private_key(name: str, pem: str) -> str:
    try:
        key = load_pem_private_key(pem.encode("utf-8"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SettingsError(f"{name}: not an unencrypted PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise SettingsError(f"{name}: an RSA key of {key.key_size} bits is too short (at least {MIN_RSA_BITS})")
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise SettingsError(f"{name}: the EC curve {key.curve.name} is not supported (use P-256)")
    else:
        raise SettingsError(f"{name}: only RSA (2048 bits or more) and EC P-256 keys are supported")
    return pem


def _client_certificate(reader: _Reader, name: str, keys: tuple[str, ...]) -> str | None:
    pem = reader.string(name, None)
    if pem is None:
        return None
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode("utf-8"))
    except ValueError:
        reader.problem(f"{name}: not a PEM certificate")
        return None
    if not keys:
        reader.problem(f"{name}: needs the key it certifies, first in {name.removesuffix('client_certificate')}client_keys")
        return None
    public = load_pem_private_key(keys[0].encode("utf-8"), password=None).public_key()
    spki = (Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    if certificate.public_key().public_bytes(*spki) != public.public_bytes(*spki):
        reader.problem(f"{name}: does not certify the first key of {name.removesuffix('client_certificate')}client_keys")
        return None
    return pem


MIN_STEPUP_MAX_AGE = timedelta(minutes=1)


def _stepup_rules(reader: _Reader) -> tuple[StepUpRule, ...]:
    name = PREFIX + "stepup.rules"
    rules = []
    for prefix, requirement in reader.mapping(name).items():
        where = f"{name} ({prefix})"
        if not prefix.startswith("/") or prefix.startswith("//") or any(c.isspace() for c in prefix):
            reader.problem(f"{where}: a rule starts with a path such as /admin")
            continue
        acr_values, max_age, bad = (), None, False
        for part in requirement.split():
            key, sep, value = part.partition("=")
            if key == "acr" and sep and value and not acr_values:
                acr_values = tuple(v for v in value.split(","))
                if not all(ACR_VALUE.match(v) for v in acr_values):
                    bad = True
                elif not acr_values_fit(acr_values):
                    reader.problem(
                        f"{where}: at most {MAX_ACR_VALUES} acr values, {MAX_ACR_VALUES_LENGTH} characters in all (more "
                        "make a sign-in link that /login refuses)"
                    )
            elif key == "max_age" and sep and max_age is None:
                try:
                    max_age = parse_duration(value, MAX_STEPUP_MAX_AGE)
                except DurationTooLong:
                    reader.problem(
                        f"{where}: max_age must be at most {MAX_STEPUP_MAX_AGE.days}d (a longer one makes a sign-in "
                        "link that /login refuses)"
                    )
                    max_age = MAX_STEPUP_MAX_AGE
                except ValueError:
                    bad = True
                else:
                    if max_age < MIN_STEPUP_MAX_AGE:
                        reader.problem(f"{where}: max_age must be at least 1m (sooner would ask again at every request)")
                        max_age = MIN_STEPUP_MAX_AGE
            else:
                bad = True
        if bad or not (acr_values or max_age is not None):
            reader.problem(f"{where}: {requirement!r} is not 'acr=<value>[,<value>...] [max_age=<duration>]'")
            continue
        rules.append(StepUpRule(prefix=prefix, acr_values=acr_values, max_age=max_age))
    rules.sort(key=lambda rule: len(rule.prefix), reverse=True)
    if len(rules) > 1:
        # A path under several rules must meet them all (services/stepup.py, Requirement).
        from myapp.services.stepup import unsatisfiable  # the services import this module

        for rule, others in unsatisfiable(tuple(rules)):
            reader.problem(
                f"{name} ({rule.prefix}): a path under it is under {' and '.join(o.prefix for o in others)} too, "
                f"whose rule{'s' if len(others) > 1 else ''} it must meet as well, and "
                f"{'the two' if len(others) == 1 else 'they'} share no acr value: no sign-in could meet "
                f"{'both' if len(others) == 1 else 'them all'}"
            )
    return tuple(rules)


# Query parameters a URL may carry a secret in: a database's or Redis's (libpq, redis-py), and a
# service's key, as some OTLP collectors and upstreams take it (?api_key=...).
SECRET_QUERY_PARAMETERS = {
    "password", "pass", "passwd", "sslpassword",
    "api_key", "apikey", "api-key", "key", "token", "access_token", "secret", "client_secret", "sig", "signature",
}
# Query parameters whose names say they hold one: X-Amz-Signature, X-Amz-Security-Token, auth_token, x-api-key.
_SECRET_WORDS = ("password", "secret", "token", "signature", "credential", "api-key", "api_key", "apikey")


def secret_parameter(name: str) -> bool:
    """Whether a URL's query parameter ``name`` may hold a secret (myapp-show-config masks it, and
    the logs of a failed trace export: tracing.hide_in_logs)."""
    lowered = name.lower()
    return lowered in SECRET_QUERY_PARAMETERS or any(word in lowered for word in _SECRET_WORDS)


def _otel(reader: _Reader) -> OTelSettings:
    enabled = reader.boolean(PREFIX + "otel.enabled", False)
    exporter = reader.choice(PREFIX + "otel.exporter", "otlp", ("otlp", "console"))
    endpoint = reader.url(PREFIX + "otel.endpoint", None)
    if enabled and exporter == "otlp" and endpoint is None:
        reader.problem("myapp.otel.endpoint: required by myapp.otel.exporter = otlp, e.g. http://127.0.0.1:4318/v1/traces")
    return OTelSettings(
        enabled=enabled, exporter=exporter, endpoint=endpoint,
        service_name=reader.string(PREFIX + "otel.service_name", "myapp"),
    )


def _encryption_keys(reader: _Reader) -> tuple[str, ...]:
    name = PREFIX + "tokens.encryption_keys"
    keys, read = reader.read_cleanly(reader.words, name)
    if not keys and read:
        reader.problem(f"{name}: required setting is missing (generate one with myapp-generate-key)")
    for index, key in enumerate(keys, 1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            reader.problem(f"{name}: key {index} is not a Fernet key (32 url-safe base64-encoded bytes)")
    return keys


def _database_url(reader: _Reader) -> str | None:
    """A URL SQLAlchemy can make an engine of here: its dialect known and its driver installed
    (nothing is connected to). The URL itself is never in a message: it may hold a password."""
    url = reader.string("sqlalchemy.url")
    if url is None:
        return None
    problem = database_url_problem(url)
    if problem is not None:
        reader.problem(problem)
    return url


def database_url_problem(url: str) -> str | None:
    """Why SQLAlchemy cannot make an engine of ``url`` here (its dialect unknown, its driver not
    installed), in a line that names the setting and never the URL; None when it can. The app's
    start-up and myapp-migrate say the same (helper-147: the latter said SQLAlchemy's own words)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return "sqlalchemy.url: is not a database URL such as postgresql+psycopg://user@host/db"
    if parsed.get_backend_name() == "sqlite" and (parsed.host or parsed.username or parsed.password):
        # sqlite://var/x (two slashes): SQLAlchemy's own refusal, later, was a traceback repeating it.
        return "sqlalchemy.url: a SQLite URL has no host: sqlite:///relative/path or sqlite:////absolute/path"
    try:
        parsed.get_dialect().import_dbapi()
    except Exception as e:  # NoSuchModuleError, ImportError, or whatever a third-party dialect raises
        missing = f" (no module named {e.name!r})" if isinstance(e, ImportError) and e.name else ""
        return (
            f"sqlalchemy.url: no database driver for {parsed.drivername!r} here{missing}; "
            "use postgresql+psycopg://user@host/db or sqlite:///path/to/file"
        )
    return None


def _metrics_allow(reader: _Reader) -> tuple[str, ...]:
    """IP addresses and networks, separated by spaces (or commas); each one checked, none resolved."""
    name = PREFIX + "metrics.allow"
    allow = []
    for word in (part for words in reader.words(name, ("127.0.0.1", "::1")) for part in words.split(",") if part):
        try:
            _allowed_networks(word)
        except ValueError:
            try:
                problem = f"has host bits set; did you mean {ipaddress.ip_network(word, strict=False)}?"
            except ValueError:
                problem = (
                    "is not an IP address or network such as 10.0.0.0/8 "
                    "(host names are not resolved; localhost is this machine)"
                )
            reader.problem(f"{name}: {word!r} {problem}")
        else:
            allow.append(word)
    return tuple(allow)


def _includes(raw: Mapping[str, object]) -> list[str]:
    value = raw.get("pyramid.includes") or ""
    return value.split() if isinstance(value, str) else list(value)


def load_settings(raw: Mapping[str, object], environ: Mapping[str, str] = os.environ) -> Settings:
    """Parse the ``[app:main]`` settings; raise :class:`SettingsError` listing every problem at once:
    each missing, malformed or unknown ``myapp.*`` setting and each unsafe combination."""
    reader = _Reader(raw, environ)
    environment = reader.choice(PREFIX + "environment", "production", ENVIRONMENTS)

    written = reader.url(PREFIX + "public_url", allow_path=False).rstrip("/")
    public_url = _origin(written)
    reader.also_read(PREFIX + "public_url", written)
    reader.also_read(PREFIX + "public_url", public_url)
    # The default redirect URIs keep the spelling written, as before this was read as an origin:
    # a provider compares them character for character with what an existing deployment registered.
    providers = _providers(reader, written)

    # Unreadable ("perhaps"), it is neither: nothing is said of what either would mean (helper-136).
    cookie_secure, secure_read = reader.read_cleanly(reader.boolean, PREFIX + "session.cookie_secure", True)
    # SPEC.md: without Secure the cookie "uses a name without the __Host- prefix" (browsers refuse
    # one), so the default follows; a __Host-/__Secure- name written out is refused below.
    cookie_name = reader.string(PREFIX + "session.cookie_name", "__Host-session" if cookie_secure else "session")
    if not _COOKIE_NAME.match(cookie_name):
        reader.problem(f"myapp.session.cookie_name: {cookie_name!r} is not a valid cookie name")
    if cookie_name.startswith(("__Host-", "__Secure-")) and not cookie_secure and secure_read:
        reader.problem(
            "myapp.session.cookie_name: browsers refuse a __Host-/__Secure- cookie without Secure; "
            "use another name when myapp.session.cookie_secure = false"
        )
    if cookie_secure and secure_read and public_url.startswith("http:"):
        reader.problem(
            f"myapp.public_url: {public_url!r} is plain http, but myapp.session.cookie_secure = true: "
            "browsers would never send the session cookie back, so nobody could sign in"
        )
    session = SessionSettings(
        cookie_name=cookie_name,
        cookie_secure=cookie_secure,
        cookie_samesite=reader.choice(
            PREFIX + "session.cookie_samesite", "Lax", ("Lax", "Strict"), casefold=True
        ),
        idle_timeout=reader.duration(PREFIX + "session.idle_timeout", timedelta(days=7), timedelta(minutes=1)),
        absolute_timeout=reader.duration(
            PREFIX + "session.absolute_timeout", timedelta(days=30), timedelta(minutes=1)
        ),
    )
    # An absolute timeout shorter than the idle timeout is allowed: the absolute one then comes first.

    tokens = TokenSettings(
        encryption_keys=_encryption_keys(reader),
        refresh_leeway=reader.duration(
            PREFIX + "tokens.refresh_leeway", timedelta(seconds=60), timedelta(0)
        ),
    )

    lock_backend = reader.choice(PREFIX + "lock.backend", "database", ("database", "redis"))
    redis_url = reader.string(PREFIX + "redis.url", None)
    if redis_url is not None:
        _check_redis_url(reader, PREFIX + "redis.url", redis_url)
    if lock_backend == "redis" and redis_url is None:
        reader.problem("myapp.lock.backend: 'redis' needs myapp.redis.url")

    upstreams, unread = _upstreams(reader, providers)
    dashboard_upstreams = reader.words(PREFIX + "dashboard.upstream")
    for name in dashboard_upstreams:
        if name not in upstreams and unread is not None and name not in unread:
            reader.problem(f"myapp.dashboard.upstream: no upstream named {name!r} in myapp.upstreams")
    settings = Settings(
        environment=environment,
        dashboard_upstreams=dashboard_upstreams,
        login_rate_limit=reader.integer(PREFIX + "login.rate_limit", 300),
        database_url=_database_url(reader),
        public_url=public_url,
        admin_group=reader.string(PREFIX + "authz.admin_group", "admins"),
        providers=MappingProxyType(providers),
        session=session,
        tokens=tokens,
        upstreams=MappingProxyType(upstreams),
        proxy=ProxySettings(
            max_body_bytes=reader.integer(PREFIX + "proxy.max_body_bytes", 10 * 1024 * 1024)
        ),
        lock=LockSettings(backend=lock_backend, redis_url=redis_url),
        revocation=RevocationSettings(
            interval=reader.duration(
                PREFIX + "revocation.interval", timedelta(seconds=2), timedelta(0), MAX_WAIT
            ).total_seconds()
        ),
        metrics=MetricsSettings(
            enabled=reader.boolean(PREFIX + "metrics.enabled", False),
            allow=_metrics_allow(reader),
        ),
        devstack_included=DEVSTACK_MODULE in _includes(raw),
        stepup_rules=_stepup_rules(reader),
        log_format=reader.choice(PREFIX + "log.format", "text", ("text", "json")),
        otel=_otel(reader),
        audit=AuditSettings(
            retention=reader.duration(PREFIX + "audit.retention", timedelta(days=400), timedelta(days=1))
        ),
    )
    if environment == "production":
        _refuse_in_production(reader, settings)
    _refuse_unknown_keys(reader)
    if reader.problems:
        raise SettingsError(reader.reported())
    return settings


def _refuse_unknown_keys(reader: _Reader) -> None:
    """Every ``myapp.*`` key the parser did not read is a typo or a setting of another version."""
    candidates = {name.removeprefix(PREFIX) for name in reader.known | _per_upstream_keys(reader) | _per_provider_keys(reader)}
    for key in reader.raw:
        if not key.startswith(PREFIX) and key.lower().startswith(PREFIX):
            # Myapp.session.idle_timeout: an ini key keeps its case here, and the app read none of
            # it, started on the defaults and said nothing (helper-117).
            same = [PREFIX + name for name in candidates if (PREFIX + name).lower() == key.lower()]
            hint = f"; did you mean {same[0]}?" if same else " (docs/configuration.md lists every setting)"
            reader.problem(f"{key}: unknown setting, settings are written in lower case{hint}")
        elif key.startswith(PREFIX) and key not in reader.known:
            others = sorted(candidates - {key.removeprefix(PREFIX)})  # never the key itself
            close = difflib.get_close_matches(key.removeprefix(PREFIX), others, n=1, cutoff=0.75)
            hint = f"; did you mean {PREFIX}{close[0]}?" if close else " (docs/configuration.md lists every setting)"
            reader.problem(f"{key}: unknown setting{hint}")


def _per_upstream_keys(reader: _Reader) -> set[str]:
    names = [key.split(".")[2] for key in reader.raw if key.startswith(PREFIX + "upstream.") and key.count(".") >= 3]
    return {f"{PREFIX}upstream.{name}.{key}" for name in names for key in UPSTREAM_KEYS}


def _per_provider_keys(reader: _Reader) -> set[str]:
    names = [key.split(".")[2] for key in reader.raw if key.startswith(PREFIX + "oidc.") and key.count(".") >= 3]
    return {f"{PREFIX}oidc.{name}.{key}" for name in names for key in PROVIDER_KEYS}


def production_cautions(settings: Settings) -> list[str]:
    """What a production deployment may mean but should know about, one line each, for the log at
    start-up: plain http to a provider or an upstream off this machine, where the client's secrets
    and the tokens would cross a network in clear. Not refused: a private network may be trusted,
    and ini files that ran before must go on running."""
    if settings.environment != "production":
        return []
    cautions = []
    for provider in settings.providers.values():
        if _plain_http_off_this_machine(provider.issuer):
            cautions.append(
                f"{provider.settings_prefix}issuer: {provider.issuer!r} is plain http off this machine: the client's "
                "secret, the codes and the tokens cross the network in clear; use https"
            )
    for name, upstream in settings.upstreams.items():
        if _plain_http_off_this_machine(upstream.base_url):
            cautions.append(
                f"myapp.upstreams: {name!r} is plain http off this machine: its access tokens cross the network in "
                "clear; use https"
            )
    return cautions


def _plain_http_off_this_machine(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and not is_loopback(parts.hostname or "")


def _is_development_key(key: str) -> bool:
    """Whether ``key`` is made from the published development key, as Fernet itself reads keys: the
    key, however it is written (the last character before the padding carries two bits that
    decoding drops, four spellings of one key, and Fernet takes a key without its ``=`` too), or
    either half of it. A Fernet key is a signing key and an encryption key of 16 bytes each: a key
    with the published key's first character edited keeps its encryption half, and every token it
    stores opens with development.ini alone (helper-115)."""
    try:
        fernet = Fernet(key)
    except (ValueError, TypeError):
        return False
    halves = _halves_of(key, fernet)
    if halves is not None:
        return any(half in _DEVELOPMENT_HALVES for half in halves)
    # Bytes Fernet reads otherwise than base64 here: ask it whether the key opens a development token.
    for token in _DEVELOPMENT_TOKENS:
        try:
            if fernet.decrypt(token) == b"development":
                return True
        except InvalidToken:
            continue
    return False


def _halves_of(key: str | bytes, fernet: Fernet | None = None) -> tuple[bytes, bytes] | None:
    """A Fernet key's signing and encryption halves, decoded as base64 here and checked against
    Fernet's own reading of ``key`` (a token each makes, the other opens); None when they differ."""
    text = key.decode("ascii", "replace") if isinstance(key, bytes) else key
    try:
        decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return None
    if len(decoded) != 32:
        return None
    ours = Fernet(base64.urlsafe_b64encode(decoded))
    fernet = fernet or Fernet(key)
    try:
        if ours.decrypt(fernet.encrypt(b"halves")) != b"halves" or fernet.decrypt(ours.encrypt(b"halves")) != b"halves":
            return None
    except InvalidToken:
        return None
    return decoded[:16], decoded[16:]


_DEVELOPMENT_TOKENS = tuple(Fernet(key).encrypt(b"development") for key in DEVELOPMENT_ENCRYPTION_KEYS)
_DEVELOPMENT_HALVES = frozenset(half for key in DEVELOPMENT_ENCRYPTION_KEYS for half in _halves_of(key))


def _refuse_in_production(reader: _Reader, settings: Settings) -> None:
    """The development stack and published secrets, and what would send cookies over plain http."""
    if settings.devstack_included:
        reader.problem(
            "pyramid.includes: the development stack (myapp.devstack) is refused in production; "
            "set myapp.environment = development to use it"
        )
    for key in reader.raw:
        if key.startswith(DEVSTACK_PREFIX):
            reader.problem(f"{key}: development-stack settings are refused in production")
    if any(_is_development_key(key) for key in settings.tokens.encryption_keys):
        reader.problem(
            "myapp.tokens.encryption_keys: the published development key, or a key that keeps half of it, "
            "is refused in production; generate one with myapp-generate-key"
        )
    for provider in settings.providers.values():
        if provider.client_secret in DEVELOPMENT_CLIENT_SECRETS:
            reader.problem(
                f"{provider.settings_prefix}client_secret: the development client secret is refused in production; "
                "use the secret your provider issued for this client"
            )
    if not settings.session.cookie_secure:
        reader.problem(
            "myapp.session.cookie_secure: false is refused in production (the session cookie would travel "
            "over plain http); set myapp.environment = development for a plain-http test setup"
        )
    if settings.public_url.startswith("http:"):
        reader.problem(
            f"myapp.public_url: {settings.public_url!r} is refused in production: serve it over https"
        )
