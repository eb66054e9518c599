"""The app's two cookies, side by side: the session id, and the sign-in binding.

Both are HttpOnly and host-only; both are read defensively (an undecodable or oversized value is
no value), so that no cookie a browser sends can turn into an error.
"""

from datetime import timedelta

from webob.cookies import make_cookie

from myapp.settings import SessionSettings

MAX_COOKIE_LENGTH = 128
# secrets.token_urlsafe(32): what both cookies hold.
TOKEN_LENGTH = 43


def read_cookie(request, name: str) -> str | None:
    """A cookie's value: the last pair of the ``Cookie`` header, split at ``;`` as browsers join
    it (RFC 6265 section 4.2.1), whose whole name is ``name``; None when there is none, or when its
    value is not UTF-8. Not WebOb's ``request.cookies``, which looks for ``name=value`` anywhere
    after a character no name holds, and so read ``__Host-session=1`` inside another cookie's value
    (``a=x __Host-session=1``, ``a="x,__Host-session=1"``: another site may set such a cookie for a
    parent domain), whose session then ended in this browser (helper-114).

    The pairs are found in the header as WSGI carries it (PEP 3333: its bytes as latin-1), and only
    the value found is decoded: a browser sends another site's cookie's bytes as they were set, and
    one that is not UTF-8 must not make this one unreadable (helper-115)."""
    header = request.environ.get("HTTP_COOKIE")
    if not header or name not in header:
        return None
    values = _values_named(header, name)
    if not values:
        return None
    try:
        found = values[-1].encode("latin-1").decode("utf-8")  # the last of several, as WebOb read them
    except UnicodeError:
        return None
    if len(found) >= 2 and found[0] == found[-1] == '"':
        found = found[1:-1]  # a value in quotes (RFC 6265 section 4.1.1), which some clients send
    return found


# What may stand around a name or a value in the Cookie header: spaces and tabs (RFC 6265 section
# 4.2.1's OWS), not what str.strip() also takes away. A name a browser keeps apart from ours, as
# "\u00a0__Host-session" is (it does not start with __Host-, so any site of a parent domain may set
# it), must not be read as ours (helper-115).
COOKIE_WHITESPACE = " \t"


def _values_named(header: str, name: str) -> list[str]:
    """The values of the pairs of a ``Cookie`` header whose whole name is ``name``, in order."""
    values = []
    for pair in header.split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip(COOKIE_WHITESPACE) == name:
            values.append(value.strip(COOKIE_WHITESPACE))
    return values


class SessionCookie:
    """The opaque session id, with exactly SPEC.md's attributes."""

    def __init__(self, settings: SessionSettings):
        self.name = settings.cookie_name
        self._attributes = dict(
            path="/",
            secure=settings.cookie_secure,
            httponly=True,
            samesite=settings.cookie_samesite,
        )

    def read(self, request) -> str | None:
        value = read_cookie(request, self.name)
        if value is None or len(value) > MAX_COOKIE_LENGTH:
            return None
        return value

    def is_present(self, request) -> bool:
        """Whether the browser sent a cookie of this name, whatever its value (one too long, or
        that does not decode, too): a pair of the ``Cookie`` header of its whole name, as
        :func:`read_cookie` finds it, so that another cookie whose name ends with this one's
        (``x__Host-session``, which another site may set on a parent domain) or whose value holds
        it is not taken for it."""
        header = request.headers.get("Cookie", "")
        return self.name in header and bool(_values_named(header, self.name))

    def set(self, raw_id: str, max_age: int) -> tuple[str, str]:
        return ("Set-Cookie", make_cookie(self.name, raw_id, max_age=max(max_age, 0), **self._attributes))

    def delete(self) -> tuple[str, str]:
        return ("Set-Cookie", make_cookie(self.name, None, **self._attributes))

    # A deliberate sign-out leaves a note for the page the browser lands on next (ours directly, or
    # after the provider's sign-out page), so that it can say "You have signed out". It holds no
    # secret, and a forged one only shows that sentence.
    SIGNED_OUT_SUFFIX = "-signed-out"
    SIGNED_OUT_MAX_AGE = 600

    def signed_out_note(self) -> tuple[str, str]:
        return self._note(self.SIGNED_OUT_SUFFIX, "1", self.SIGNED_OUT_MAX_AGE)

    def has_signed_out_note(self, request) -> bool:
        return read_cookie(request, self.name + self.SIGNED_OUT_SUFFIX) == "1"

    def clear_signed_out_note(self) -> tuple[str, str]:
        return self._note(self.SIGNED_OUT_SUFFIX, None)

    # A cookie naming an ended session is cleared by whichever request meets it first: when that is
    # a script's call (/auth/user, the back/forward-cache check), the signed-out page it then opens
    # would not know why the session ended. The request that clears it leaves the reason (a fixed
    # key such as "revoked", never anything of the session) for that page, for a minute, and the
    # page takes it away once shown: no later visitor of the browser learns more than the first
    # page load after the end would have told anyone at it.
    ENDED_SUFFIX = "-ended"
    ENDED_MAX_AGE = 60

    def ended_note(self, reason: str) -> tuple[str, str]:
        return self._note(self.ENDED_SUFFIX, reason, self.ENDED_MAX_AGE)

    def ended_note_of(self, request) -> str | None:
        return read_cookie(request, self.name + self.ENDED_SUFFIX)

    def clear_ended_note(self) -> tuple[str, str]:
        return self._note(self.ENDED_SUFFIX, None)

    def _note(self, suffix: str, value: str | None, max_age: int | None = None) -> tuple[str, str]:
        """A note beside the session cookie (its attributes, its name and ``suffix``); None clears it."""
        return ("Set-Cookie", make_cookie(self.name + suffix, value, max_age=max_age, **self._attributes))

    def is_set_in(self, response) -> bool:
        prefix = self.name + "="
        return any(k.lower() == "set-cookie" and v.startswith(prefix) for k, v in response.headerlist)


class LoginBindingCookie:
    """Ties a login transaction to the browser that started it (several tabs share one value)."""

    def __init__(self, settings: SessionSettings, lifetime: timedelta):
        secure = settings.cookie_secure
        self.name = "__Host-login" if secure else settings.cookie_name + "_login"
        self.max_age = int(lifetime.total_seconds())
        self._attributes = dict(path="/", secure=secure, httponly=True, samesite="Lax")

    def read(self, request) -> str | None:
        value = read_cookie(request, self.name)
        return value if value and len(value) == TOKEN_LENGTH and value.isascii() else None

    def set(self, value: str) -> tuple[str, str]:
        return ("Set-Cookie", make_cookie(self.name, value, max_age=self.max_age, **self._attributes))
