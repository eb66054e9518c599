from datetime import date

from pyramid.httpexceptions import HTTPBadRequest, HTTPSeeOther
from pyramid.response import Response
from pyramid.security import forget
from pyramid.view import view_config
from sqlalchemy import func, or_, select

from myapp.models import User
from myapp.models.meta import utcnow
from myapp.resources import Permission, parse_id
from myapp.services.audit import AuditEventType, AuditFilter, AuditLog, reason_words
from myapp.services.sessions import EndReason

MAX_FILTER_LENGTH = 200
USERS_PAGE = 50


class BadPagingLink(HTTPBadRequest):
    explanation = "This link to an older page is not valid. Start again from the first page."


def _search_text(request, name: str) -> str:
    """A search box's text, whitespace runs made one space; NUL left out (no name holds one, and
    PostgreSQL refuses it in text)."""
    return " ".join(request.GET.get(name, "").replace("\x00", "").split())


def _audit_filter(request) -> tuple[AuditFilter, list[str]]:
    """The page's filters from its query, each checked: a bad one is a message, never an error."""
    problems = []
    event = request.GET.get("event", "")
    if event and event not in set(AuditEventType):
        problems.append("That event type is not one this log records; showing all events.")
        event = ""
    user = _search_text(request, "user")
    if len(user) > MAX_FILTER_LENGTH:
        problems.append(f"The person to look for is cut to {MAX_FILTER_LENGTH} characters.")
        user = user[:MAX_FILTER_LENGTH]
    dates = {}
    for name, label in (("from", "From"), ("to", "To")):
        value = request.GET.get(name, "").strip()
        if not value:
            dates[name] = None
            continue
        try:
            dates[name] = date.fromisoformat(value) if len(value) == 10 else None
        except ValueError:
            dates[name] = None
        if dates[name] is None:
            problems.append(f"{label}: {value[:40]!r} is not a date such as 2026-12-31; it is left out.")
    if dates["from"] and dates["to"] and dates["from"] > dates["to"]:
        problems.append("The From date is after the To date, so nothing can match; the dates are swapped.")
        dates["from"], dates["to"] = dates["to"], dates["from"]
    return AuditFilter(user=user, event=event, since=dates["from"], until=dates["to"]), problems


def _before(request) -> int | None:
    """The id an "Older" link pages back from; None on the first page."""
    value = request.GET.get("before", "")
    if not value:
        return None
    before_id = parse_id(value)
    if before_id is None:
        raise BadPagingLink()
    return before_id


@view_config(
    route_name="admin_audit",
    request_method="GET",
    permission=Permission.ADMINISTER,
    renderer="myapp:templates/admin_audit.jinja2",
)
def audit_log(request):
    where, problems = _audit_filter(request)
    before_id = _before(request)
    events, has_more = request.audit.page(before_id=before_id, where=where)
    query = where.query()
    return {
        "events": events,
        "has_more": has_more,
        "next_query": {**query, "before": events[-1].id} if events else query,
        "first_page_query": query,
        "paged": before_id is not None,
        "event_types": [str(t) for t in AuditEventType],
        "where": where,
        "problems": problems,
        "csv_url": request.route_path("admin_audit_csv", _query=query),
        "reason_words": reason_words,
    }


@view_config(route_name="admin_audit_csv", request_method="GET", permission=Permission.ADMINISTER)
def audit_log_csv(request):
    """The filtered log, every matching record (not only one page), as a CSV download, streamed."""
    where, _ = _audit_filter(request)
    response = Response(content_type="text/csv", charset="utf-8")
    response.app_iter = _csv_download(request.services.database, where)
    stamp = utcnow().strftime("%Y%m%d-%H%M%S")
    response.content_disposition = f'attachment; filename="audit-{stamp}.csv"'
    response.headers["Cache-Control"] = "no-store"
    return response


def _csv_download(database, where: AuditFilter):
    """Read after the view has returned (and its transaction has ended): a session of its own,
    closed when the download ends or is broken off."""
    with database.own_transaction() as dbsession:
        for line in AuditLog(dbsession=dbsession).csv_rows(where):
            yield line.encode("utf-8")


@view_config(
    route_name="admin_users",
    request_method="GET",
    permission=Permission.ADMINISTER,
    renderer="myapp:templates/admin_users.jinja2",
)
def users(request):
    live = request.session_store.live_counts_by_user()
    search = _search_text(request, "q")[:MAX_FILTER_LENGTH]
    query = select(User, func.coalesce(live.c.live, 0)).outerjoin(live, live.c.user_id == User.id)
    if search:
        pattern = "%" + search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(
            or_(*(func.lower(column).like(pattern, escape="\\") for column in (User.name, User.email, User.subject)))
        )
    before_id = _before(request)
    if before_id is not None:
        query = query.where(User.id < before_id)
    # Keyset paging by id, newest accounts first: stable while people sign in meanwhile.
    rows = request.dbsession.execute(query.order_by(User.id.desc()).limit(USERS_PAGE + 1)).all()
    page = [(user, count) for user, count in rows[:USERS_PAGE]]
    names = {client.settings.issuer: client.settings.display_name for client in request.services.providers.values()}
    next_query = {"q": search} if search else {}
    if len(rows) > USERS_PAGE:
        next_query["before"] = page[-1][0].id
    return {
        "users": page,
        "provider_names": names,
        "search": search,
        "has_more": len(rows) > USERS_PAGE,
        "next_query": next_query,
        "paged": before_id is not None,
    }


@view_config(route_name="admin_user_sessions_revoke", request_method="POST", permission=Permission.ADMINISTER)
def end_user_sessions(request):
    user = request.context.user
    own = user.id == request.identity.user_id
    # Their other devices are told what they chose, not that "an administrator" signed them out.
    ended = request.session_store.end_all_for_user(user.id, EndReason.ENDED_ELSEWHERE if own else EndReason.REVOKED_BY_ADMIN)
    request.audit.record(
        AuditEventType.USER_SESSIONS_ENDED_BY_ADMIN,
        user_id=user.id,
        actor_id=request.identity.user_id,
        ip_address=request.remote_addr,
        detail=f"{ended} session(s) ended",
    )
    if own:
        # An administrator who ended their own sessions ended this one too: say so, in those words.
        return HTTPSeeOther(request.route_path("signed_out", _query={"reason": "ended_own"}), headers=forget(request))
    return HTTPSeeOther(request.route_path("admin_users", _query={"notice": "user_sessions_revoked"}))
