import functools
import logging

from pyramid.security import NO_PERMISSION_REQUIRED
from pyramid.view import view_config

from myapp.errors import APIError
from myapp.models.meta import utcnow
from myapp.resources import Permission
from myapp.routes import API_PREFIX
from myapp.security import tell_signed_out_reason
from myapp.services.oidc import ProviderUnavailable
from myapp.services.sessions import EndReason
from myapp.services.stepup import rule_for, satisfies
from myapp.services.tokens import UpstreamTokenRefused
from myapp.text import shown_text
from myapp.views import SIGNED_OUT_MESSAGES
from myapp.views.posts import recent_posts_of

log = logging.getLogger(__name__)


@view_config(
    route_name="home",
    request_method="GET",
    is_authenticated=False,
    renderer="myapp:templates/landing.jinja2",
    permission=NO_PERMISSION_REQUIRED,
)
def landing(request):
    cookie = request.services.session_cookie
    # ``session_gone``: this browser has no session; its other tabs still showing a signed-in page
    # are told so (app.js), with the reason when it is known here.
    if cookie.has_signed_out_note(request):
        # Back from a deliberate sign-out (here, or at the provider's sign-out page): say so, once.
        request.response.headerlist.append(cookie.clear_signed_out_note())
        return {"session_ended": "You have signed out.", "session_gone": EndReason.LOGOUT}
    # A cookie that named a session no longer live: say why it ended.
    reason = tell_signed_out_reason(request)
    return {
        "session_ended": SIGNED_OUT_MESSAGES.get(reason, "Your session has ended.") if reason else None,
        "session_gone": reason or "",
    }


@view_config(
    route_name="home",
    request_method="GET",
    is_authenticated=True,
    renderer="myapp:templates/dashboard.jinja2",
    permission=Permission.VIEW,
)
def dashboard(request):
    identity = request.identity
    return {
        "posts": recent_posts_of(request, identity.user_id),
        "session_count": request.session_store.count_live_for_user(identity.user_id),
        # Not for HEAD: the calls may refresh or mint tokens (a rotated refresh token), and no
        # HEAD changes state; its answer has no body to show them in.
        **(_upstream_notes(request) if request.method != "HEAD" else {"notes_cards": []}),
    }


def _upstream_notes(request) -> dict:
    """The user's notes from each configured upstream (that their provider may call), fetched here
    with the same token service the browser's calls go through. A session that can no longer be
    refreshed ends the page (LoginRequired propagates); a provider or upstream problem only
    empties that card."""
    services = request.services
    provider = request.identity.provider
    names = [name for name in services.settings.dashboard_upstreams if not services.proxy.refuses_provider(name, provider)]
    return {"notes_cards": [_notes_card(request, name, index) for index, name in enumerate(names)]}


def _needs_step_up(request, upstream: str, path: str) -> bool:
    """Whether a step-up rule covers ``path`` of ``upstream`` as the browser would call it through
    the proxy, and the session does not satisfy it: what the page fetches on the browser's behalf
    is held to the browser's own rules."""
    rule = rule_for(request.services.settings.stepup_rules, f"{API_PREFIX}{upstream}/{path}")
    return rule is not None and not satisfies(request.identity.session, rule, utcnow())


def _notes_card(request, upstream: str, index: int) -> dict:
    if _needs_step_up(request, upstream, "notes"):
        notes, problem = None, "These notes need a stronger sign-in than this session has."
    else:
        notes, problem = _notes_of(request, upstream)
    return {
        "id": "notes" if index == 0 else f"notes-{upstream}",
        "upstream": upstream,
        "title": "Your notes" if index == 0 else f"Your notes at {upstream}",
        "api": request.route_path("api", upstream=upstream, subpath=()),
        "notes": notes,
        "problem": problem,
    }


def _notes_of(request, upstream: str) -> tuple[list | None, str | None]:
    """The notes the upstream gives, or what stopped them, in words."""
    try:
        document = request.services.proxy.get_json(
            upstream, "notes", functools.partial(request.access_token, upstream=upstream)
        )
    except UpstreamTokenRefused:
        return None, "The sign-in provider would not issue a token for this notes service."
    except ProviderUnavailable:
        return None, "The sign-in provider is not answering, so your notes cannot be loaded right now."
    except APIError as e:
        log.info("dashboard notes of %s unavailable: %s", upstream, e.code)
        return None, "The notes service is not answering right now."
    if isinstance(document, dict) and isinstance(document.get("notes"), list):
        # Shown as text people read: an upstream's lone surrogate ("\ud800" in its JSON) cannot be
        # written out as UTF-8, and ended every later dashboard of that person in a 500 (helper-116).
        return [{"text": shown_text(n["text"])} for n in document["notes"] if isinstance(n, dict) and isinstance(n.get("text"), str)], None
    return None, "The notes service gave an answer this page cannot read."
