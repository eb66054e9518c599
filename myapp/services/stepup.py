"""What step-up authentication decides, without the web around it (SPEC.md "Step-up
authentication"): which rule covers a path, whether a session satisfies it, and an upstream's
RFC 9470 challenge asking for a stronger sign-in."""

import dataclasses
import functools
import re
from datetime import datetime

from myapp.services.sessions import SessionRecord
from myapp.settings import ACR_VALUE, StepUpRule

# Where a rule never applies: signing in and out, the provider's calls, what every page loads.
EXEMPT_PREFIXES = ("/login", "/logout", "/auth/", "/signed-out", "/static/", "/healthz", "/readyz", "/metrics", "/_dev/")
# What Windows, IIS and some gateways trim from the end of a path segment ("admin. " is "admin").
TRIMMED_BY_LENIENT_SERVERS = " ."
MAX_ACR_VALUES = 10
MAX_MAX_AGE = 10 * 365 * 86400
# RFC 9470 section 3: an auth-param of a WWW-Authenticate challenge, quoted or a token.
_AUTH_PARAM = re.compile(r'([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))')


class StepUpRequired(Exception):
    """Raised where a stronger sign-in is needed; the exception view answers as the tween does."""

    def __init__(self, acr_values: tuple[str, ...] = (), max_age: int | None = None, message: str | None = None):
        super().__init__(message or "This needs a stronger or more recent sign-in.")
        self.acr_values = acr_values
        self.max_age = max_age
        self.message = message or "This needs a stronger or more recent sign-in."


def rule_for(rules: tuple[StepUpRule, ...], path: str) -> StepUpRule | None:
    """The most specific rule covering ``path`` (rules come sorted, longest prefix first), as
    written or as a lenient server behind the proxy might read it (:func:`as_leniently_read`):
    ``/api/up//admin``, ``/api/up/Admin`` and ``/api/up/admin%20`` are ``/api/up/admin`` to
    nginx (which merges slashes), a case-insensitive server, and Windows (which trims trailing
    spaces and dots). Matching both ways can only ask for a step-up more often, never less."""
    if path.startswith(EXEMPT_PREFIXES):
        return None
    lenient = as_leniently_read(path)
    return next((rule for rule in rules if rule.covers(path) or _leniently(rule).covers(lenient)), None)


def as_leniently_read(path: str) -> str:
    """``path`` case-folded, with repeated slashes as one and each segment's trailing spaces
    and dots trimmed (a trailing slash is kept: rules tell ``/a/`` from ``/a``)."""
    segments = [segment.rstrip(TRIMMED_BY_LENIENT_SERVERS) for segment in path.casefold().split("/")]
    lenient = "/" + "/".join(segment for segment in segments if segment)
    return lenient + "/" if path.endswith("/") and lenient != "/" else lenient


@functools.cache
def _leniently(rule: StepUpRule) -> StepUpRule:
    return dataclasses.replace(rule, prefix=as_leniently_read(rule.prefix))


def satisfies(session: SessionRecord, rule: StepUpRule, now: datetime) -> bool:
    if rule.acr_values and session.acr not in rule.acr_values:
        return False
    if rule.max_age is not None:
        return session.auth_time is not None and now - session.auth_time <= rule.max_age
    return True


def challenges(header: str | None) -> list[tuple[str, dict[str, str]]]:
    """The challenges of a ``WWW-Authenticate`` header (RFC 9110 section 11.6.1) as (scheme in
    lower case, auth-params by lower-case name); nothing for a missing or outsized header."""
    if not header or len(header) > 4096:
        return []
    parsed = []
    for challenge in re.split(r",\s*(?=[A-Za-z0-9_-]+\s+[A-Za-z0-9_.-]+\s*=)", header):
        scheme, _, rest = challenge.strip().partition(" ")
        params = {}
        for name, quoted, plain in _AUTH_PARAM.findall(rest):
            params[name.lower()] = plain or re.sub(r"\\(.)", r"\1", quoted)
        parsed.append((scheme.lower(), params))
    return parsed


def parse_challenge(header: str | None) -> StepUpRequired | None:
    """An RFC 9470 ``insufficient_user_authentication`` challenge (Bearer, or DPoP for a DPoP-bound
    token), or None."""
    if not header or "insufficient_user_authentication" not in header:
        return None
    for scheme, params in challenges(header):
        if scheme not in ("bearer", "dpop") or params.get("error") != "insufficient_user_authentication":
            continue
        acr_values = tuple(v for v in params.get("acr_values", "").split() if ACR_VALUE.match(v))[:MAX_ACR_VALUES]
        max_age = params.get("max_age")
        # ASCII digits only: isdigit() alone takes "²", which int() refuses.
        usable = max_age and max_age.isascii() and max_age.isdigit() and len(max_age) <= 10
        max_age = int(max_age) if usable and int(max_age) <= MAX_MAX_AGE else None
        return StepUpRequired(acr_values, max_age, "The API needs a stronger or more recent sign-in.")
    return None
