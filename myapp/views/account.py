from pyramid.httpexceptions import HTTPSeeOther
from pyramid.security import forget
from pyramid.view import view_config

from myapp.resources import Permission
from myapp.services.audit import AuditEventType
from myapp.services.sessions import EndReason


@view_config(
    route_name="account_sessions",
    request_method="GET",
    permission=Permission.MANAGE_OWN_SESSIONS,
    renderer="myapp:templates/sessions.jinja2",
)
def list_sessions(request):
    providers = request.services.providers
    identity = request.identity
    sessions = request.session_store.list_for_user(identity.user_id)
    names = {}
    if len(providers) > 1:
        names = {name: client.settings.display_name for name, client in providers.items()}
        # A session of a provider renamed since is found by the user's issuer, as everywhere else.
        for session in sessions:
            client = providers.of_session(session.provider, identity.issuer)
            if client is not None:
                names[session.provider] = client.settings.display_name
    return {"sessions": sessions, "provider_names": names}


@view_config(route_name="account_session_revoke", request_method="POST", permission=Permission.REVOKE)
def revoke_session(request):
    target = request.context.session
    identity = request.identity
    # An administrator may end anyone's session (the root's ACL); its owner is told who did.
    by_admin = target.user_id != identity.user_id
    done_here = request.route_path("admin_users" if by_admin else "account_sessions", _query={"notice": "session_revoked"})
    if request.context.ended:
        # Already signed out (a second click, or another tab): nothing to do, and nothing to record.
        return HTTPSeeOther(done_here)
    reason = EndReason.REVOKED_BY_ADMIN if by_admin else EndReason.REVOKED
    if not by_admin:
        gone = request.session_store.hold_sessions_of(identity.session)
        if gone is not None:  # this session was ended meanwhile, perhaps from the one it is ending
            return _ended_meanwhile(request, gone)
    if request.session_store.end(target, reason):  # not when a click racing this one ended it first
        request.audit.record(
            AuditEventType.SESSION_REVOKED,
            user_id=target.user_id,
            actor_id=identity.user_id,
            session_handle=target.handle,
            ip_address=request.remote_addr,
        )
    if target.id == identity.session_id:
        return HTTPSeeOther(
            request.route_path("signed_out", _query={"reason": EndReason.REVOKED}), headers=forget(request)
        )
    return HTTPSeeOther(done_here)


@view_config(
    route_name="account_sessions_revoke_others", request_method="POST", permission=Permission.MANAGE_OWN_SESSIONS
)
def revoke_other_sessions(request):
    identity = request.identity
    gone = request.session_store.hold_sessions_of(identity.session)
    if gone is not None:
        return _ended_meanwhile(request, gone)
    ended = request.session_store.end_all_others(identity.session)
    request.audit.record(
        AuditEventType.OTHER_SESSIONS_ENDED,
        user_id=identity.user_id,
        actor_id=identity.user_id,
        session_handle=identity.session_handle,
        ip_address=request.remote_addr,
        detail=f"{ended} session(s) ended",
    )
    return HTTPSeeOther(request.route_path("account_sessions", _query={"notice": "others_revoked"}))


def _ended_meanwhile(request, reason: str):
    """The answer to a session that another request ended while this one ran: signed out, told why."""
    return HTTPSeeOther(request.route_path("signed_out", _query={"reason": reason}), headers=forget(request))
