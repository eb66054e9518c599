"""The audit log: who did what, to whom, from where. Never a token, code or cookie value."""

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from enum import StrEnum

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session, aliased

from myapp.models import AuditEvent, User
from myapp.observability import current_request_id


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
    POST_EDITED_BY_ADMIN = "post_edited_by_admin"
    POST_DELETED_BY_ADMIN = "post_deleted_by_admin"


# What the reason codes in login_failed and refresh_failed details mean, in words (the code is
# shown beside them). A detail whose code is not here is shown as it is.
REASONS = {
    "missing_state": "The sign-in answer had no state: it did not come from a sign-in started here.",
    "unknown_state": "The sign-in link was already used, or never started here.",
    "expired_state": "The sign-in took longer than ten minutes.",
    "other_browser": "The sign-in was finished in another browser than the one that started it.",
    "wrong_provider_callback": "The answer came back to another provider's address (a mix-up attempt, or a misconfiguration).",
    "unknown_provider": "The sign-in provider is no longer configured.",
    "bad_iss_parameter": "The answer named another provider than the one asked.",
    "missing_iss_parameter": "The answer did not say which provider sent it.",
    "missing_code": "The answer had no authorization code.",
    "transaction_unreadable": "The sign-in could not be read back (its encryption key was removed).",
    "missing_id_token": "The provider sent no ID token.",
    "provider_unavailable": "The sign-in provider did not answer, or failed.",
    "provider_misconfigured": "The sign-in provider's configuration cannot be used.",
    "token_error": "The provider refused to issue tokens.",
    "provider_error": "The provider reported an error.",
    "bad_signature": "The ID token's signature is not valid.",
    "bad_algorithm": "The ID token is signed with an algorithm the provider does not advertise.",
    "unknown_key": "The ID token is signed with a key the provider does not publish.",
    "malformed_token": "The ID token is not a signed JWT.",
    "bad_issuer": "The ID token comes from another issuer.",
    "bad_audience": "The ID token is meant for another application.",
    "bad_azp": "The ID token is meant for another application (azp).",
    "expired": "The ID token has expired.",
    "bad_nonce": "The ID token does not answer this sign-in (nonce).",
    "missing_sub": "The ID token names nobody (no sub).",
    "bad_at_hash": "The ID token does not match its access token (at_hash).",
    "par_refused": "The provider refused the pushed authorization request.",
    "par_failed": "The provider's pushed authorization request endpoint gave an answer that cannot be used.",
    "par_unavailable": "The provider's pushed authorization request endpoint did not answer, or failed (5xx).",
    "auth_time_missing": "A stronger sign-in was asked for, but the provider did not say when the person signed in.",
    "auth_time_too_old": "A recent sign-in was asked for, but the provider's sign-in was older.",
    "acr_not_satisfied": "A stronger sign-in was asked for, but the provider confirmed a weaker one.",
    "invalid_grant": "The refresh token was refused (expired, revoked, or reused).",
    "no refresh token": "The session has no refresh token to renew its access.",
    "parameter_too_long": "The sign-in answer was malformed.",
    "parameter_repeated": "The sign-in answer was malformed.",
    "account_disabled": "The account is disabled here: the person was not signed in.",
}


def reason_words(detail: str) -> tuple[str, str] | None:
    """(words, code) for a detail that starts with a known reason code, else None."""
    code = detail.split(";", 1)[0].strip()
    words = REASONS.get(code) or REASONS.get(code.split(":", 1)[0])
    return (words, code) if words else None


@dataclass(frozen=True)
class AuditFilter:
    """What /admin/audit shows: by person (name, e-mail or subject, in part), event and UTC dates."""

    user: str = ""
    event: str = ""
    since: date | None = None
    until: date | None = None  # inclusive

    def conditions(self) -> list:
        conditions = []
        if self.event:
            conditions.append(AuditEvent.event == self.event)
        if self.since is not None:
            conditions.append(AuditEvent.created_at >= datetime.combine(self.since, time(), timezone.utc))
        if self.until is not None and self.until < date.max:  # the calendar's last day has no day after it
            conditions.append(AuditEvent.created_at < datetime.combine(self.until + timedelta(days=1), time(), timezone.utc))
        if self.user:
            pattern = "%" + self.user.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            person = aliased(User)
            matching = select(person.id).where(
                or_(*(func.lower(column).like(pattern, escape="\\") for column in (person.name, person.email, person.subject)))
            )
            conditions.append(or_(AuditEvent.user_id.in_(matching), AuditEvent.actor_id.in_(matching)))
        return conditions

    def query(self) -> dict:
        """The filter as query parameters (for links and the CSV export)."""
        values = {"user": self.user, "event": self.event, "from": self.since, "to": self.until}
        return {k: str(v) for k, v in values.items() if v}


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
            request_id=current_request_id(),
        )
        self.dbsession.add(row)
        self.dbsession.flush()
        return row

    def page(
        self, *, before_id: int | None = None, event: str | None = None, limit: int = 50, where: AuditFilter | None = None
    ):
        """Newest first, a page at a time by id (keyset: no OFFSET, no cut-off); ``before_id`` pages
        back. Returns (events, has_more)."""
        where = where or AuditFilter(event=event or "")
        query = select(AuditEvent).where(*where.conditions()).order_by(AuditEvent.id.desc()).limit(limit + 1)
        if before_id is not None:
            query = query.where(AuditEvent.id < before_id)
        rows = list(self.dbsession.scalars(query).unique())
        return rows[:limit], len(rows) > limit

    def csv_rows(self, where: AuditFilter, *, batch: int = 500) -> Iterator[str]:
        """The filtered log as CSV text, newest first, read a batch at a time."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)

        def line(values) -> str:
            buffer.seek(0)
            buffer.truncate()
            writer.writerow([_csv_safe(v) for v in values])
            return buffer.getvalue()

        yield line(["id", "time_utc", "event", "user", "user_email", "by", "address", "session", "detail", "reason",
                    "request_id"])
        before = None
        while True:
            events, more = self.page(before_id=before, where=where, limit=batch)
            for e in events:
                described = reason_words(e.detail or "") if e.event in ("login_failed", "refresh_failed") else None
                yield line([
                    e.id, e.created_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), e.event,
                    e.user.display_name if e.user else "", (e.user.email or "") if e.user else "",
                    e.actor.display_name if e.actor else "", e.ip_address, e.session_handle or "", e.detail,
                    described[0] if described else "", e.request_id or "",
                ])
            if not more:
                return
            before = events[-1].id

    def purge(self, older_than: datetime) -> int:
        """Delete the records older than the retention allows."""
        return self.dbsession.execute(delete(AuditEvent).where(AuditEvent.created_at < older_than)).rowcount

    def count(self, event: AuditEventType | None = None) -> int:
        query = select(func.count()).select_from(AuditEvent)
        if event is not None:
            query = query.where(AuditEvent.event == str(event))
        return self.dbsession.scalar(query)


def _csv_safe(value) -> str:
    """A cell a spreadsheet will not run: text starting with = + - @ or a control character gets a
    leading apostrophe (CSV injection)."""
    text = "" if value is None else str(value)
    if text and text[0] in "=+-@\t\r":
        return "'" + text
    return text
