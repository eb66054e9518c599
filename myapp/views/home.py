import functools
import logging

from pyramid.security import NO_PERMISSION_REQUIRED
from pyramid.view import view_config

from myapp.errors import APIError
from myapp.resources import Permission
from myapp.services.oidc import ProviderUnavailable
from myapp.services.tokens import UpstreamTokenRefused
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
    if cookie.has_signed_out_note(request):
        # Back from a deliberate sign-out (here, or at the provider's sign-out page): say so, once.
        request.response.headerlist.append(cookie.clear_signed_out_note())
        return {"session_ended": "You have signed out."}
    # A cookie that named a session no longer live: say why it ended.
    reason = request.signed_out_reason
    return {"session_ended": SIGNED_OUT_MESSAGES.get(reason, "Your session has ended.") if reason else None}


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
    settings = request.services.settings
    provider = request.identity.session.provider
    names = [name for name in settings.dashboard_upstreams if settings.upstreams[name].accepts(provider)]
    return {"notes_cards": [_notes_card(request, name, index) for index, name in enumerate(names)]}


def _notes_card(request, upstream: str, index: int) -> dict:
    problem, notes = None, None
    try:
        document = request.services.proxy.get_json(
            upstream, "notes", functools.partial(request.access_token, upstream=upstream)
        )
    except UpstreamTokenRefused:
        problem = "The sign-in provider would not issue a token for this notes service."
    except ProviderUnavailable:
        problem = "The sign-in provider is not answering, so your notes cannot be loaded right now."
    except APIError as e:
        log.info("dashboard notes of %s unavailable: %s", upstream, e.code)
        problem = "The notes service is not answering right now."
    else:
        if isinstance(document, dict) and isinstance(document.get("notes"), list):
            notes = [n for n in document["notes"] if isinstance(n, dict) and isinstance(n.get("text"), str)]
        else:
            problem = "The notes service gave an answer this page cannot read."
    return {
        "id": "notes" if index == 0 else f"notes-{upstream}",
        "upstream": upstream,
        "title": "Your notes" if index == 0 else f"Your notes at {upstream}",
        "api": request.route_path("api", upstream=upstream, subpath=()),
        "notes": notes,
        "problem": problem,
    }
