"""Thin views, one module per topic. Shared bits for templates and responses live here."""

from datetime import datetime
from types import SimpleNamespace

import jinja2
import pyramid_jinja2
from markupsafe import Markup, escape
from pyramid.interfaces import ISecurityPolicy

from myapp.errors import outage_errors
from myapp.resources import Permission, Root
from myapp.services.login import ACCOUNT_DISABLED_MESSAGE
from myapp.services.sessions import PROVIDER_UNKNOWN, EndReason

# Fixed texts for the ?notice= shown after an action (post/redirect/get, nothing stored).
NOTICES = {
    "post_created": "Your post was published.",
    "post_updated": "Your changes were saved.",
    "post_sent_before": (
        "This form had been sent already: the post below was published then. What you changed "
        "afterwards was not saved; edit the post to change it."
    ),
    "post_deleted": "The post was deleted.",
    "session_revoked": "That session was signed out.",
    "others_revoked": "You were signed out everywhere else.",
    "user_sessions_revoked": "Every session of that user was ended.",
}


# Why a session ended, in words for the person it happened to.
SIGNED_OUT_MESSAGES = {
    EndReason.EXPIRED: "Your session reached its time limit. Sign in again to carry on.",
    EndReason.IDLE: "You were away for a while, so we signed you out to keep your account safe.",
    EndReason.REVOKED: "This session was signed out from your list of sessions.",
    EndReason.REVOKED_BY_ADMIN: "An administrator signed you out.",
    EndReason.ENDED_ELSEWHERE: "You chose to sign out everywhere else from another device.",
    EndReason.BACKCHANNEL: "You signed out at your identity provider, so you were signed out here too.",
    EndReason.REFRESH_FAILED: "Your sign-in could no longer be renewed. Sign in again to carry on.",
    EndReason.REPLACED: "You signed in again in this browser; the older session was closed.",
    EndReason.LOGOUT: "You signed out.",
    EndReason.ACCOUNT_DISABLED: ACCOUNT_DISABLED_MESSAGE,  # as its sign-in is told (docs/ui.md)
    # Not stored reasons: a session whose provider this process does not know (it is not ended),
    # and what an administrator who ended all of their own sessions is told.
    PROVIDER_UNKNOWN: "The way you signed in is no longer offered here. Sign in again to carry on.",
    "ended_own": "You ended all of your own sessions, including this one, so you are signed out here too.",
}


# Notices that say something did not happen as asked: shown as information, not as a success.
INFO_NOTICES = frozenset({"post_sent_before"})


def notice(request) -> str | None:
    return NOTICES.get(request.GET.get("notice", ""))


def template_globals(event):
    request = event["request"]
    # JSON carries none of it: /healthz (and /readyz) would look the session up, and wait for a
    # database that answers nothing, when a browser sends its cookie.
    if request is None or event.get("renderer_name") == "json":
        return
    if isinstance(getattr(request, "exception", None), outage_errors()):
        # The page about an outage: the database (a lookup that failed, or waited out its bound)
        # is not asked again, the request would wait twice as long for its 503.
        identity = request.registry.getUtility(ISecurityPolicy).loaded_identity(request)
    else:
        try:
            identity = request.identity
        except outage_errors():
            identity = None  # a page about the outage itself must still render
    event["identity"] = identity
    event["paths"] = request.layout_paths
    event["notice"] = notice(request)
    event["notice_kind"] = "info" if request.GET.get("notice") in INFO_NOTICES else "success"
    event["is_admin"] = identity is not None and bool(request.has_permission(Permission.ADMINISTER, Root(request)))


def when(moment: datetime, seconds: bool = False) -> Markup:
    """``ui.when(moment)``: a moment as people read it (UTC, to the minute, or to the second), in a
    ``<time>`` that names it exactly. A function, where it was a macro of _macros.jinja2 writing the
    same: a page of posts shows twenty, and the macro's calls cost that page 50 us more
    (docs/benchmarks.md, "Signed-in pages made once")."""
    exact = escape(moment.strftime("%Y-%m-%dT%H:%M:%SZ"))
    shown = escape(moment.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M"))
    return Markup(f'<time datetime="{exact}"{" data-seconds" if seconds else ""}>{shown} UTC</time>')


class CompiledInThisProcess(jinja2.BytecodeCache):
    """Each template's compiled code, kept for every app this process makes (Jinja's bytecode
    cache, in memory): a process serving one app compiles each template once either way, but the
    test suite makes thousands of apps, each of which compiled every page it rendered again. An
    entry is by template; Jinja checks the source's checksum before it uses one, so an edited
    template is compiled again and replaces it. One cache for each set of ``jinja2.*`` settings
    (:func:`compiled_templates`): code compiled under other options is never used."""

    def __init__(self):
        self.compiled: dict[str, bytes] = {}

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        if (code := self.compiled.get(bucket.key)) is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        self.compiled[bucket.key] = bucket.bytecode_to_string()


_COMPILED: dict[tuple, CompiledInThisProcess] = {}


def compiled_templates(settings: dict) -> CompiledInThisProcess | None:
    """The cache of the apps whose ``jinja2.*`` settings are these: everything that sets how the
    environment compiles (autoescape, extensions, finalize, ...) comes from them, beside
    pyramid_jinja2's defaults; this package sets only globals, which compiled code looks up when
    it runs. A value given in code (not text from an ini) is its own key, never its ``str``; one
    that cannot be a key gets no shared cache (None: each app compiles, as Jinja does by default)."""
    options = tuple(sorted(((key, value) for key, value in settings.items() if key.startswith("jinja2.")),
                           key=lambda option: option[0]))
    try:
        return _COMPILED.setdefault(options, CompiledInThisProcess())
    except TypeError:  # unhashable
        return None


def macros_for_every_template(config) -> None:
    """``ui``, the display helpers, a global of every template: the macros of _macros.jinja2 and
    :func:`when`. Jinja makes that module once here, where each page's own ``{% import %}`` of it
    cost the page 15 us of work to find that it may use the module made before. After
    pyramid_jinja2 makes the environment, before any page is rendered."""

    def register():
        environment = config.get_jinja2_environment()
        # Unless the ini names a cache of its own (pyramid_jinja2's jinja2.bytecode_caching).
        environment.bytecode_cache = environment.bytecode_cache or compiled_templates(config.registry.settings)
        macros = environment.get_template("myapp:templates/_macros.jinja2").module
        exported = {name: value for name, value in vars(macros).items() if not name.startswith("_")}
        environment.globals["ui"] = SimpleNamespace(**exported, when=when)

    config.action(("myapp", "template macros"), register, order=pyramid_jinja2.ENV_CONFIG_PHASE + 1)


def includeme(config):
    from myapp.views.errors import service_unavailable

    config.add_subscriber(template_globals, "pyramid.events.BeforeRender")
    macros_for_every_template(config)
    for error in outage_errors():
        config.add_exception_view(service_unavailable, context=error)
