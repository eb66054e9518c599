from pyramid.security import NO_PERMISSION_REQUIRED
from pyramid.view import view_config

from myapp.resources import Permission
from myapp.security import safe_next_path
from myapp.services.sessions import EndReason
from myapp.views.errors import error_page

SIGNED_OUT_MESSAGES = {
    EndReason.EXPIRED: "Your session reached its time limit. Sign in again to carry on.",
    EndReason.IDLE: "You were away for a while, so we signed you out to keep your account safe.",
    EndReason.REVOKED: "This session was signed out from your list of sessions.",
    EndReason.REVOKED_BY_ADMIN: "An administrator ended your sessions.",
    EndReason.ENDED_ELSEWHERE: "You chose to sign out everywhere else from another device.",
    EndReason.BACKCHANNEL: "You signed out at your identity provider, so you were signed out here too.",
    EndReason.REFRESH_FAILED: "Your sign-in could no longer be renewed. Sign in again to carry on.",
    EndReason.REPLACED: "You signed in again in this browser; the older session was closed.",
    EndReason.LOGOUT: "You signed out.",
}


@view_config(route_name="login", request_method="GET", permission=NO_PERMISSION_REQUIRED)
def login(request):
    return error_page(request, 503, "Sign-in is not configured yet", "This build cannot sign anyone in yet.")


@view_config(
    route_name="signed_out",
    request_method="GET",
    permission=NO_PERMISSION_REQUIRED,
    renderer="myapp:templates/signed_out.jinja2",
)
def signed_out(request):
    message = SIGNED_OUT_MESSAGES.get(request.GET.get("reason", ""), "Your session has ended.")
    next_path = safe_next_path(request.GET.get("next"))
    return {"message": message, "login_url": request.route_path("login", _query={"next": next_path})}


@view_config(
    route_name="auth_user",
    request_method="GET",
    permission=Permission.USE_API,
    json_csrf=True,
    renderer="json",
)
def current_user(request):
    """Who is signed in, for browser code. Never a token: those stay on the server."""
    identity = request.identity
    return {
        "sub": identity.subject,
        "name": identity.name,
        "email": identity.email,
        "groups": list(identity.groups),
        "logout_url": request.registry.settings["myapp"].public_url + request.route_path("logout"),
        "csrf_token": identity.csrf_token,
        "session": {
            "expires_at": identity.expires_at.isoformat(),
            "idle_expires_at": identity.idle_expires_at.isoformat(),
        },
    }
