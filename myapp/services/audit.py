"""The audit log: who did what, to whom, from where. Never a token, code or cookie value."""

from enum import StrEnum

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from myapp.models import AuditEvent


class AuditEventType(StrEnum):
    LOGIN = "login"
    LOGIN_FAILED = "login_failed"
    LOGOUT = "logout"
    REFRESH_FAILED = "refresh_failed"
    BACKCHANNEL_LOGOUT = "backchannel_logout"
    SESSION_REVOKED = "session_revoked"
    OTHER_SESSIONS_ENDED = "other_sessions_ended"
    USER_SESSIONS_ENDED_BY_ADMIN = "user_sessions_ended_by_admin"
    ACCESS_DENIED = "access_denied"


class AuditLog:
    def __init__(self, *, dbsession: Session):
        self.dbsession = dbsession

    def record(
        self,
        event: AuditEventType,
        *,
        user_id: int | None = None,
        actor_id: int | None = None,
        session_handle: str | None = None,
        ip_address: str | None = "",
        detail: str = "",
    ) -> AuditEvent:
        row = AuditEvent(
            event=str(event),
            user_id=user_id,
            actor_id=actor_id,
            session_handle=session_handle,
            ip_address=(ip_address or "")[:64],
            detail=detail[:2000],
        )
        self.dbsession.add(row)
        self.dbsession.flush()
        return row

    def page(self, *, before_id: int | None = None, event: str | None = None, limit: int = 50):
        """Newest first; ``before_id`` pages back. Returns (events, has_more)."""
        query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit + 1)
        if before_id is not None:
            query = query.where(AuditEvent.id < before_id)
        if event:
            query = query.where(AuditEvent.event == event)
        rows = list(self.dbsession.scalars(query).unique())
        return rows[:limit], len(rows) > limit

    def count(self, event: AuditEventType | None = None) -> int:
        query = select(func.count()).select_from(AuditEvent)
        if event is not None:
            query = query.where(AuditEvent.event == str(event))
        return self.dbsession.scalar(query)
