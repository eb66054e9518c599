"""What step-up authentication decides, without the web around it (SPEC.md "Step-up
authentication"): which rule covers a path, whether a session satisfies it, and an upstream's
RFC 9470 challenge asking for a stronger sign-in."""

import functools
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta

from myapp.services.sessions import SessionRecord
from myapp.settings import ACR_VALUE, StepUpRule, acr_values_fit

# Where a rule never applies: signing in and out, the provider's calls, what every page loads.
EXEMPT_PREFIXES = ("/login", "/logout", "/auth/", "/signed-out", "/static/", "/healthz", "/readyz", "/metrics", "/_dev/")
# What lenient servers trim from a path segment: whitespace and controls at either end (a segment
# read with strip(), Windows), and dots at its end too (Windows, IIS: "admin. " is "admin").
# Matched from the segment's start, reversed for its end: a pattern anchored at the end would be
# tried from every position of a long run of dots, in time that grows with its square.
_TRIMMED_AT_START = re.compile(r"[\s\x00-\x1f\x7f]*")
_TRIMMED_AT_END_REVERSED = re.compile(r"[\s.\x00-\x1f\x7f]*")
# What a lenient server might take for a separator: "\\" (IIS); "¥" and "₩", which Windows'
# best-fit conversion to code pages 932 and 949 turns into "\\"; and the division slash "∕", which
# its conversion to code page 1252 turns into "/".
SEPARATOR_CHARACTERS = "/\\\u00a5\u20a9\u2215"
SEPARATORS = re.compile(f"[{re.escape(SEPARATOR_CHARACTERS)}]")
# Where a lenient server might end a path: once it has decoded it, it may split it again. (Tomcat
# and Spring also end each segment at a ";": ";jsessionid=...".)
_PATH_END = re.compile(r"[?#]")
# Where such a server might end a piece of a segment: a separator, the path's end, or a ";".
PIECE_ENDS = re.compile(f"[{re.escape(SEPARATOR_CHARACTERS)}?#;]")
# Scripts a server runs with the rest of the path as their PATH_INFO (IIS and ASP.NET, PHP behind
# Apache or nginx, JSP, CGI): "/admin.php/x" runs "/admin.php", which may be what "/admin" serves.
SCRIPT_SUFFIXES = frozenset({"asp", "aspx", "ashx", "asmx", "axd", "php", "phtml", "jsp", "jspx", "cgi", "pl"})
# A segment ASP.NET drops before routing: cookieless data, "(S(...))", "(A(...)S(...))" and their
# kin, as its CookielessHelper reads them (a value holds anything but ")" and the "/" it splits at),
# read on the path as it comes and again once folded (full-width forms).
_COOKIELESS = re.compile(r"\((?:[A-Za-z]\([^)/]*\))+\)", re.IGNORECASE)
# UAX #15's stream-safe limit: no text has more combining characters in a row. Normalizing a
# longer run puts it in canonical order by insertion, in time growing with the square of its length.
MAX_NON_STARTERS = 30
# Characters a reader may drop unseen: combining marks and format characters (accents, variation
# selectors, zero-width spaces and joiners).
_INVISIBLE = frozenset({"Mn", "Me", "Cf"})
MAX_MAX_AGE = 10 * 365 * 86400
# RFC 9110 section 11's grammar of a WWW-Authenticate header, read from a position: an element's
# start (whitespace and the empty elements a list may hold skipped), a token (a scheme or an
# auth-param's name), an auth-param (a quoted-string, whose quoted-pairs escape any character, '"'
# and "\\" too, and whose commas separate nothing, or an unquoted value), a token68, and where an
# element may end. An unquoted value is read as leniently as before this grammar was: up to
# whitespace, a comma or a quote, so a URN, URL or host:port left unquoted (``acr_values=urn:a:b``,
# not a token: ':') is its value, not where reading stops, losing the error written after it. It
# holds no comma, space or quote, so no challenge can hide in it. Possessive throughout: each
# character is looked at a bounded number of times.
_ELEMENT_START = re.compile(r"[ \t,]*+")
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]++"
_SCHEME = re.compile(_TOKEN)
_PARAM = re.compile(rf'({_TOKEN})[ \t]*+=[ \t]*+(?:([^\x00- ",\x7f]++)|"((?:[\t !#-\[\]-~\x80-\xff]++|\\[\t -~\x80-\xff])*+)")')
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]++=*+")
_SPACES = re.compile(r"[ \t]++")
# After an element: the list's next comma, or its end. After an auth-param, leniently, also
# whitespace and the next auth-param without the comma some servers leave out (``algs="ES256" error="..."``).
_ELEMENT_END = re.compile(r"[ \t]*+(?:,|\Z)")
_PARAM_END = re.compile(rf"[ \t]*+(?:,|\Z)|[ \t]++(?={_TOKEN}[ \t]*+=)")
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
# The longest WWW-Authenticate header read. A longer one cannot be told apart from a challenge
# that forbids a refresh (RFC 9470's, a refused DPoP proof): the proxy passes its 401 back as it is.
MAX_CHALLENGE_LENGTH = 64 * 1024


class StepUpRequired(Exception):
    """Raised where a stronger sign-in is needed; the exception view answers as the tween does."""

    def __init__(self, acr_values: tuple[str, ...] = (), max_age: int | None = None, message: str | None = None):
        super().__init__(message or "This needs a stronger or more recent sign-in.")
        self.acr_values = acr_values
        self.max_age = max_age
        self.message = message or "This needs a stronger or more recent sign-in."


@dataclass(frozen=True)
class Requirement:
    """What the rules covering a path ask of a session, together: each of them (SPEC.md: a request
    under a rule's prefix whose session does not satisfy that rule is stepped up), so that a longer
    prefix under a shorter one (``/admin/audit = max_age=15m`` under ``/admin = acr=mfa``) adds to
    it and never takes its place. ``rules``: the most specific first."""

    rules: tuple[StepUpRule, ...]

    @property
    def prefix(self) -> str:
        return self.rules[0].prefix

    @property
    def acr_values(self) -> tuple[str, ...]:
        """What a sign-in asks for: the values that every rule naming some takes, in the most
        specific one's order. Rules that a path falls under together and that share none are
        refused by the settings (:func:`unsatisfiable`); should some still share none, the most
        specific one's, and :func:`satisfies` holds the session to each rule all the same."""
        named = [rule.acr_values for rule in self.rules if rule.acr_values]
        if not named:
            return ()
        common = tuple(value for value in named[0] if all(value in values for values in named[1:]))
        return common or named[0]

    @property
    def max_age(self) -> timedelta | None:
        ages = [rule.max_age for rule in self.rules if rule.max_age is not None]
        return min(ages) if ages else None


def rule_for(rules: tuple[StepUpRule, ...], path: str) -> Requirement | None:
    """What the rules covering ``path`` ask (:class:`Requirement`; rules come sorted, longest prefix
    first), each matched as written or as a lenient server behind the proxy might read the path
    (:func:`leniently_read`): ``/api/up//admin``, ``/api/up/Admin``, ``/api/up/admin%20``,
    ``/api/up/admin.json`` and ``/api/up/\uff41dmin`` are ``/api/up/admin`` to nginx (which merges
    slashes), a case-insensitive server, Windows (which trims trailing spaces and dots), Spring or
    Rails (which take a suffix for a format) and a server that normalizes Unicode. Matching both
    ways can only ask for a step-up more often, never less."""
    if not rules or path.startswith(EXEMPT_PREFIXES):  # without rules, no path is read (the dashboard's)
        return None
    segments = leniently_read(path)
    covering = tuple(rule for rule in rules if rule.covers(path) or _covers(_lenient_prefix(rule), segments))
    return Requirement(covering) if covering else None


def unsatisfiable(rules: tuple[StepUpRule, ...]) -> list[tuple[StepUpRule, tuple[StepUpRule, ...]]]:
    """Each rule with the others that a path under it falls under too, as :func:`rule_for` matches
    them, where the acr values of all of them share none: no sign-in could meet them together, and
    every step-up there would be asked again. A rule's own prefix is the deepest path of what falls
    under it, so the rules covering it are every rule a path under it meets."""
    found = []
    for rule in rules:
        requirement = rule_for(rules, rule.prefix.rstrip("/") or "/")
        named = [other for other in requirement.rules if other.acr_values] if requirement is not None else []
        if len(named) > 1 and not set.intersection(*(set(other.acr_values) for other in named)):
            found.append((rule, tuple(other for other in named if other is not rule)))
    return found


def leniently_read(path: str) -> tuple[str, ...]:
    """The segments of ``path`` as the most lenient server might read them: folded
    (:func:`fold`), up to a ``?`` or ``#`` (a server that decodes a path and splits it again),
    split at each of :data:`SEPARATORS`, each segment up to a ``;`` and :func:`trimmed`, and
    empty ones dropped (repeated slashes), as are ASP.NET's cookieless ``(S(...))`` ones."""
    if "(" in path:
        path = "/".join(segment for segment in path.split("/") if not _COOKIELESS.fullmatch(segment))
    path = _PATH_END.split(fold(path), 1)[0]
    segments = (trimmed(segment.partition(";")[0]) for segment in SEPARATORS.split(path))
    return tuple(segment for segment in segments if segment and not _COOKIELESS.fullmatch(segment))


def fold(text: str) -> str:
    """``text`` as it compares once case and Unicode's variants are set aside: compatibility forms
    (full-width ``\uff41``, ``\ufb01``, ``\u2025``, ``\uff1f``) decomposed, what a reader may
    drop unseen (:func:`visible`) dropped, and case folded from upper case too (the dotless
    ``\u0131`` is ``i``)."""
    if text.isascii():
        return text.lower()
    if not stream_safe(text):
        # Its combining characters (and those that decompose to them) dropped first: normalizing
        # such a run could take minutes (a path of 250 KB: seconds), and no text holds one.
        text = "".join(c for c in text if c.isascii() or _non_starters(c) == _STARTER)
    return visible(unicodedata.normalize("NFKD", text)).upper().casefold()


def stream_safe(text: str) -> bool:
    """Whether ``text``, decomposed, has no run of more than :data:`MAX_NON_STARTERS` combining
    characters (UAX #15's stream-safe text), so that normalizing it takes time linear in its
    length. Counted as UAX #15 counts, from each character's decomposition (U+0F73 is two)."""
    run = 0
    for c in text:
        if c.isascii():
            run = 0
            continue
        leading, trailing, only = _non_starters(c)
        if run + leading > MAX_NON_STARTERS:
            return False
        run = run + leading if only else trailing
    return True


_STARTER = (0, 0, False)


@functools.lru_cache(maxsize=4096)
def _non_starters(c: str) -> tuple[int, int, bool]:
    """The combining characters at the start and at the end of ``c``'s decomposition, and whether
    it is nothing else."""
    decomposed = unicodedata.normalize("NFKD", c)
    leading = next((i for i, d in enumerate(decomposed) if not unicodedata.combining(d)), len(decomposed))
    if leading == len(decomposed):
        return leading, leading, True
    trailing = next(i for i, d in enumerate(reversed(decomposed)) if not unicodedata.combining(d))
    return leading, trailing, False


def visible(text: str) -> str:
    """``text`` without combining marks and format characters (accents, variation selectors,
    zero-width spaces): what a reader may drop without a trace."""
    return "".join(c for c in text if unicodedata.category(c) not in _INVISIBLE)


def trimmed(segment: str) -> str:
    """A path segment as Windows, IIS or a reader that strips it sees it: without whitespace and
    controls at either end, or dots at its end (``admin. `` is ``admin``, ``.. `` is empty).
    In time linear in the segment's length, however it is made."""
    end = len(segment) - _TRIMMED_AT_END_REVERSED.match(segment[::-1]).end()
    return segment[_TRIMMED_AT_START.match(segment, 0, end).end() : end]


def _covers(prefix: tuple[str, ...], segments: tuple[str, ...]) -> bool:
    """Whether leniently read ``segments`` fall under a leniently read rule ``prefix``: they start
    with its segments, where the path's last segment may add a suffix (``admin.json`` is
    ``admin`` to Spring's suffix matching and to Rails' formats), and any may add a script's
    (``admin.php/x`` runs the script that may serve ``admin``: :data:`SCRIPT_SUFFIXES`)."""
    depth = len(prefix)
    if len(segments) < depth:
        return False
    if depth == 0 or segments[:depth] == prefix:
        return True
    segment, name = segments[depth - 1], prefix[-1]
    if segments[: depth - 1] != prefix[:-1] or not segment.startswith(name + "."):
        return False
    return len(segments) == depth or segment[len(name) + 1 :] in SCRIPT_SUFFIXES


@functools.cache
def _lenient_prefix(rule: StepUpRule) -> tuple[str, ...]:
    return leniently_read(rule.prefix)


def satisfies(session: SessionRecord, requirement: Requirement, now: datetime) -> bool:
    """Whether ``session`` meets every rule of ``requirement``: its sign-in's ``acr`` one of each
    rule's values, its ``auth_time`` within each rule's ``max_age``."""
    return all(_meets(session, rule, now) for rule in requirement.rules)


def _meets(session: SessionRecord, rule: StepUpRule, now: datetime) -> bool:
    if rule.acr_values and session.acr not in rule.acr_values:
        return False
    if rule.max_age is not None:
        return session.auth_time is not None and now - session.auth_time <= rule.max_age
    return True


def readable_challenge(header: str | None) -> bool:
    """Whether ``challenges`` reads this ``WWW-Authenticate`` header (a missing one included)."""
    return header is None or len(header) <= MAX_CHALLENGE_LENGTH


def challenges(header: str | None) -> list[tuple[str, dict[str, str]]]:
    """The challenges of a ``WWW-Authenticate`` header (RFC 9110 section 11.6.1) as (scheme in
    lower case, auth-params by lower-case name, each value with its quoted-pairs undone, the first
    of a name kept); nothing for a missing or outsized header. Read by its grammar, so a comma, a
    quote or a whole challenge written inside a quoted string is that string's text (split at
    commas, ``error_description="a, DPoP error=\\"invalid_dpop_proof\\""`` was a DPoP challenge).
    Auth-params before the first challenge belong to none; a token68 is read past. Where the
    header stops following the grammar (a quote that never closes, or closes early), the element
    there and all after it are not read: where they end cannot be told."""
    if not header or not readable_challenge(header):
        return []
    parsed: list[tuple[str, dict[str, str]]] = []
    params: dict[str, str] | None = None
    position, end = 0, len(header)
    while True:
        position = _ELEMENT_START.match(header, position).end()
        if position == end:
            return parsed
        param = _PARAM.match(header, position)
        if param is None:  # a challenge: its scheme, then one auth-param, a token68 or nothing
            scheme = _SCHEME.match(header, position)
            if scheme is None:
                return parsed
            params = {}
            parsed.append((scheme.group().lower(), params))
            position = scheme.end()
            spaces = _SPACES.match(header, position)
            if spaces is not None:
                param = _PARAM.match(header, spaces.end())
                if param is None:
                    token68 = _TOKEN68.match(header, spaces.end())
                    if token68 is not None and _ELEMENT_END.match(header, token68.end()):
                        position = token68.end()
        if param is not None:
            after = _PARAM_END.match(header, param.end())
            if after is None:
                return parsed
            if params is not None:
                name, token, quoted = param.groups()
                params.setdefault(name.lower(), token if token is not None else _QUOTED_PAIR.sub(r"\1", quoted))
            position = after.end()
            continue
        after = _ELEMENT_END.match(header, position)
        if after is None:
            return parsed
        position = after.end()


def parse_challenge(header: str | None) -> StepUpRequired | None:
    """An RFC 9470 ``insufficient_user_authentication`` challenge (Bearer, or DPoP for a DPoP-bound
    token), or None."""
    if not header or "insufficient_user_authentication" not in header:
        return None
    for scheme, params in challenges(header):
        if scheme not in ("bearer", "dpop") or params.get("error") != "insufficient_user_authentication":
            continue
        # As many of its acr values as a sign-in may ask for (the rest could only make /login refuse it).
        acr_values: tuple[str, ...] = ()
        for value in params.get("acr_values", "").split():
            if ACR_VALUE.match(value) and acr_values_fit((*acr_values, value)):
                acr_values += (value,)
        return StepUpRequired(acr_values, max_age_of(params.get("max_age")), "The API needs a stronger or more recent sign-in.")
    return None


def max_age_of(value: str | None) -> int | None:
    """A ``max_age`` as /login's query or an upstream's challenge writes it, in seconds: ASCII
    digits (isdigit() alone takes "\u00b2", which int() refuses), at most :data:`MAX_MAX_AGE`;
    None for anything else. Its length is checked before int() reads it: int() refuses more than
    4300 digits with a ValueError (and takes time growing with the square of their number)."""
    if not value or not value.isascii() or not value.isdigit() or len(value) > len(str(MAX_MAX_AGE)):
        return None
    number = int(value)
    return number if number <= MAX_MAX_AGE else None
