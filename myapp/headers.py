"""SPEC.md's browser hardening, applied to every response (and over a proxied upstream's own)."""

from collections.abc import Callable, Iterable

from pyramid.events import NewResponse

from myapp.services import Services
from myapp.settings import SessionSettings
from myapp.tweens import UpstreamAnswer

# This site's policies that depend on nothing: on every answer, the server's own included.
FIXED = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),
)
# What the server itself answers (a request it could not read, before the app has it): a short
# text or JSON that needs nothing, may be nowhere framed, and is never kept.
SERVER_ANSWER = (
    *FIXED,
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
    ("Cache-Control", "no-store"),
)
HSTS = ("Strict-Transport-Security", "max-age=31536000")
# Where the app's registry keeps what its server answers with itself (myapp.server): the above,
# and HSTS when the cookie is Secure, as on every answer of the app's.
SERVER_HEADERS = "myapp.server_headers"


class SecurityHeaders:
    """A ``NewResponse`` subscriber setting this site's policies on every response.

    ``form_origins`` returns the origins a form of this site may end up at besides itself: the
    sign-in form posts to this site, whose answer redirects to the provider, and browsers apply
    ``form-action`` to that redirect (the logout form's redirect ends at the provider's
    end-session endpoint, known once discovery has been read).
    """

    def __init__(self, session: SessionSettings, form_origins: Callable[[], Iterable[str]]):
        self.form_origins = form_origins
        self.headers = list(FIXED)
        if session.cookie_secure:
            self.headers.append(HSTS)
        # What the server answers itself with (registered as SERVER_HEADERS): HSTS as above.
        self.server_answer = (*SERVER_ANSWER, HSTS) if session.cookie_secure else SERVER_ANSWER
        self._names = frozenset(name.lower() for name, _ in [*self.headers, ("Content-Security-Policy", "")])
        self._csp: dict[frozenset[str], tuple[str, str]] = {}

    def content_security_policy(self, sandboxed: bool = False) -> str:
        """This site's policy; ``sandboxed``, with ``sandbox``, for an upstream's answer passed back
        (``UpstreamAnswer``): should it ever be shown as a page (no navigation reaches /api/, which
        needs X-CSRF), an upstream's HTML or SVG would run no script and have an origin of its own."""
        origins = frozenset(self.form_origins())
        policies = self._csp.get(origins)
        if policies is None:
            form_action = " ".join(sorted({"'self'", *origins}))
            policy = "; ".join(
                [
                    "default-src 'self'",
                    "script-src 'self'",
                    "style-src 'self'",
                    "img-src 'self' data:",
                    "connect-src 'self'",
                    "object-src 'none'",
                    "base-uri 'none'",
                    f"form-action {form_action}",
                    "frame-ancestors 'none'",
                ]
            )
            policies = self._csp[origins] = (policy, f"{policy}; sandbox")
        return policies[sandboxed]

    def __call__(self, event: NewResponse) -> None:
        # On the header list itself: WebOb's header mapping lowercases every name on every
        # lookup and assignment, a measurable part of a proxied call's CPU.
        response = event.response
        headerlist = response.headerlist
        present = {name.lower() for name, _ in headerlist}
        if not present.isdisjoint(self._names):  # an upstream's own, replaced by this site's
            headerlist[:] = [(name, value) for name, value in headerlist if name.lower() not in self._names]
        if "cache-control" in present and not any(
            value.replace(",", "").strip() for name, value in headerlist if name.lower() == "cache-control"
        ):
            # An upstream's empty one (",": no directive) says nothing, and leaves a cache to its own rules: as none.
            headerlist[:] = [(name, value) for name, value in headerlist if name.lower() != "cache-control"]
            present.discard("cache-control")
        headerlist.extend(self.headers)
        sandboxed = response.__class__ is UpstreamAnswer  # no call: this is every answer's path
        headerlist.append(("Content-Security-Policy", self.content_security_policy(sandboxed)))
        if (
            event.request.environ.get("PATH_INFO", "").startswith("/static/")
            and response.status_code < 400 and "set-cookie" not in present
        ):
            return  # one of this site's files, the same for everyone (an error page there is not)
        # Pages and JSON depend on who is asking: never cached, never shared.
        if "cache-control" not in present:
            headerlist.append(("Cache-Control", "no-store"))
        if "vary" not in present:
            headerlist.append(("Vary", "Cookie"))
        else:
            # Every line of an upstream's Vary, a list header that may be repeated (RFC 9110
            # section 5.3): WebOb's response.vary reads the first only, and setting it replaced
            # them all (helper-146: "Vary: Accept-Language" lost, a page cached for one language
            # given for another). Cookie is added as a line of its own.
            varies = {
                item.strip().lower() for name, value in headerlist if name.lower() == "vary" for item in value.split(",")
            }
            if "cookie" not in varies and "*" not in varies:
                headerlist.append(("Vary", "Cookie"))


def includeme(config):
    services = config.registry[Services]
    headers = SecurityHeaders(services.settings.session, services.providers.form_action_origins)
    config.registry[SERVER_HEADERS] = headers.server_answer
    config.add_subscriber(headers, NewResponse)
