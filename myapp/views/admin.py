from pyramid.httpexceptions import HTTPSeeOther
from pyramid.view import view_config
from sqlalchemy import func, select

from myapp.models import User
from myapp.resources import Permission
from myapp.services.audit import AuditEventType
from myapp.services.sessions import EndReason


@view_config(
    route_name="admin_audit",
    request_method="GET",
    permission=Permission.ADMINISTER,
    renderer="myapp:templates/admin_audit.jinja2",
)
def audit_log(request):
    event = request.GET.get("event", "")
    if event not in set(AuditEventType):
        event = ""
    before = request.GET.get("before", "")
    before_id = int(before) if before.isascii() and before.isdigit() and len(before) < 19 else None
    events, has_more = request.audit.page(before_id=before_id, event=event or None)
    next_query = {"before": events[-1].id} if events else {}
    if event:
        next_query["event"] = event
    return {
        "events": events,
        "has_more": has_more,
        "next_query": next_query,
        "event_types": [str(t) for t in AuditEventType],
        "selected_event": event,
    }


@view_config(
    route_name="admin_users",
    request_method="GET",
    permission=Permission.ADMINISTER,
    renderer="myapp:templates/admin_users.jinja2",
)
def users(request):
    live = request.session_store.live_counts_by_user()
    rows = request.dbsession.execute(
        select(User, func.coalesce(live.c.live, 0))
        .outerjoin(live, live.c.user_id == User.id)
        .order_by(User.last_login_at.desc().nulls_last(), User.id.desc())
        .limit(500)
    ).all()
    return {"users": [(user, count) for user, count in rows]}


@view_config(route_name="admin_user_sessions_revoke", request_method="POST", permission=Permission.ADMINISTER)
def end_user_sessions(request):
    user = request.context.user
    ended = request.session_store.end_all_for_user(user.id, EndReason.REVOKED_BY_ADMIN)
    request.audit.record(
        AuditEventType.USER_SESSIONS_ENDED_BY_ADMIN,
        user_id=user.id,
        actor_id=request.identity.user_id,
        ip_address=request.remote_addr,
        detail=f"{ended} session(s) ended",
    )
    return HTTPSeeOther(request.route_path("admin_users", _query={"notice": "user_sessions_revoked"}))
