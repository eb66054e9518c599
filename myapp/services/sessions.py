"""Server-side sessions: the browser holds a random id, the database holds its SHA-256."""

import contextlib
import functools
import hashlib
import json
import re
import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.orm import Session

from myapp.models import User, UserSession
from myapp.models.meta import utcnow
from myapp.settings import SessionSettings

# secrets.token_urlsafe(32): 256 random bits, 43 url-safe characters. Anything else is no session.
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{43}$")
TOUCH_INTERVAL = timedelta(minutes=1)
_ENDED_ATTRIBUTES = ["ended_at", "end_reason", "access_token", "refresh_token", "id_token"]


class EndReason:
    """Why a session ended, as stored in ``sessions.end_reason`` and shown to the user."""

    LOGOUT = "logout"
    REPLACED = "replaced"
    REVOKED = "revoked"
    REVOKED_BY_ADMIN = "revoked_by_admin"
    ENDED_ELSEWHERE = "signed_out_elsewhere"
    BACKCHANNEL = "provider_logout"
    REFRESH_FAILED = "refresh_failed"
    EXPIRED = "expired"
    IDLE = "idle"


@dataclass(frozen=True)
class SessionRecord:
    """A session and its user as plain values: what every request reads, in one lean query."""

    id: int
    handle: str
    user_id: int
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    csrf_token: str = field(repr=False)
    access_token: bytes | None = field(repr=False)
    access_token_expires_at: datetime | None
    user_issuer: str
    user_subject: str
    user_name: str
    user_email: str | None
    user_groups: tuple[str, ...]
    user_disabled: bool

    @classmethod
    def from_row(cls, row: UserSession) -> "SessionRecord":
        user = row.user
        return cls(
            id=row.id,
            handle=row.handle,
            user_id=row.user_id,
            created_at=row.created_at,
            last_seen_at=row.last_seen_at,
            expires_at=row.expires_at,
            ended_at=row.ended_at,
            end_reason=row.end_reason,
            csrf_token=row.csrf_token,
            access_token=row.access_token,
            access_token_expires_at=row.access_token_expires_at,
            user_issuer=user.issuer,
            user_subject=user.subject,
            user_name=user.display_name,
            user_email=user.email,
            user_groups=tuple(user.groups or ()),
            user_disabled=user.disabled,
        )


def _find_statement():
    # Built once, from plain table columns: the hot path pays neither ORM nor statement building.
    sessions, users = UserSession.__table__.c, User.__table__.c
    columns = [
        sessions.id, sessions.handle, sessions.user_id, sessions.created_at, sessions.last_seen_at,
        sessions.expires_at, sessions.ended_at, sessions.end_reason, sessions.csrf_token, sessions.access_token,
        sessions.access_token_expires_at, users.issuer, users.subject, users.name, users.email, users.groups,
        users.disabled,
    ]
    return (
        select(*columns)
        .select_from(UserSession.__table__.join(User.__table__, users.id == sessions.user_id))
        .where(sessions.id_hash == bindparam("id_hash"))
    )


_FIND = _find_statement()
_DATETIME_FIELDS = frozenset({3, 4, 5, 6, 10})


@functools.cache
def _compiled_find(dialect) -> tuple[str, bool]:
    compiled = _FIND.compile(dialect=dialect)
    return str(compiled), compiled.positional


def _utc(value) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite keeps datetimes as ISO text, without a zone (always UTC here)
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


@dataclass(frozen=True)
class TokenSet:
    access_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    id_token: str | None = field(default=None, repr=False)
    access_token_expires_at: datetime | None = None


def hash_session_id(raw: str) -> str:
    return hashlib.sha256(raw.encode("ascii")).hexdigest()


def is_wellformed_session_id(value: str | None) -> bool:
    return bool(value) and _SESSION_ID.match(value) is not None


class TokenCipher:
    """Fernet encryption of tokens at rest; the first key encrypts, every key decrypts."""

    def __init__(self, keys):
        self._fernet = MultiFernet([Fernet(key) for key in keys])

    def encrypt(self, value: str | None) -> bytes | None:
        return None if value is None else self._fernet.encrypt(value.encode("utf-8"))

    def decrypt(self, value: bytes | None) -> str | None:
        """The plaintext, or None when no key in use can read it (a retired key, say)."""
        if value is None:
            return None
        try:
            return self._fernet.decrypt(bytes(value)).decode("utf-8")
        except InvalidToken:
            return None

    def rotate(self, value: bytes | None) -> bytes | None:
        return None if value is None else self._fernet.rotate(bytes(value))

    def tokens_of(self, row: UserSession) -> "TokenSet":
        """The tokens a session row holds, decrypted."""
        return TokenSet(
            access_token=self.decrypt(row.access_token),
            refresh_token=self.decrypt(row.refresh_token),
            id_token=self.decrypt(row.id_token),
            access_token_expires_at=row.access_token_expires_at,
        )


class SessionStore:
    def __init__(
        self,
        *,
        dbsession: Session | Callable[[], Session],
        cipher: TokenCipher,
        settings: SessionSettings,
        clock: Callable[[], datetime] = utcnow,
        own_transactions: Callable[[], Session] | None = None,
        reads: Callable[[], ContextManager[Connection]] | None = None,
    ):
        # A callable defers the ORM session until something needs it: the per-request lookup does not.
        self._dbsession = dbsession
        self.cipher = cipher
        self.settings = settings
        self.clock = clock
        self.own_transactions = own_transactions
        # The per-request lookup needs no ORM session: a pooled connection, released at once.
        self.reads = reads or (lambda: contextlib.nullcontext(self.dbsession.connection()))

    @functools.cached_property
    def dbsession(self) -> Session:
        return self._dbsession() if callable(self._dbsession) else self._dbsession

    def create(
        self,
        *,
        user: User,
        user_agent: str = "",
        ip_address: str = "",
        provider_sid: str | None = None,
        tokens: TokenSet = TokenSet(),
    ) -> tuple[str, UserSession]:
        """Start a session; return the raw id (for the cookie, never stored) and the row."""
        raw_id = secrets.token_urlsafe(32)
        now = self.clock()
        row = UserSession(
            id_hash=hash_session_id(raw_id),
            handle=secrets.token_urlsafe(16),
            user=user,
            created_at=now,
            last_seen_at=now,
            expires_at=now + self.settings.absolute_timeout,
            user_agent=(user_agent or "")[:512],
            ip_address=(ip_address or "")[:64],
            provider_sid=provider_sid,
            csrf_token=secrets.token_urlsafe(32),
        )
        self._set_tokens(row, tokens)
        self.dbsession.add(row)
        self.dbsession.flush()
        return raw_id, row

    def find(self, raw_id: str | None) -> SessionRecord | None:
        """The session named by a cookie value, live or not; None for garbage or an unknown id."""
        if not is_wellformed_session_id(raw_id):
            return None
        # Every request runs this: straight on the driver's cursor, it costs a fraction of a
        # SQLAlchemy execution. The statement itself is SQLAlchemy's, compiled once per dialect.
        with self.reads() as connection:
            sql, positional = _compiled_find(connection.dialect)
            cursor = connection.connection.cursor()
            try:
                cursor.execute(sql, (hash_session_id(raw_id),) if positional else {"id_hash": hash_session_id(raw_id)})
                row = cursor.fetchone()
            finally:
                cursor.close()
        if row is None:
            return None
        values = [_utc(v) if i in _DATETIME_FIELDS else v for i, v in enumerate(row[:11])]
        issuer, subject, name, email, groups, disabled = row[11:]
        if isinstance(groups, str):
            groups = json.loads(groups)
        values[9] = bytes(values[9]) if values[9] is not None else None
        return SessionRecord(
            *values,
            user_issuer=issuer,
            user_subject=subject,
            user_name=name or email or subject,
            user_email=email,
            user_groups=tuple(groups or ()),
            user_disabled=bool(disabled),
        )

    def find_by_handle(self, handle: str) -> UserSession | None:
        if not handle or len(handle) > 32:
            return None
        return self.dbsession.scalars(select(UserSession).where(UserSession.handle == handle)).one_or_none()

    def idle_expires_at(self, session: SessionRecord | UserSession, last_seen_at: datetime | None = None) -> datetime:
        return min((last_seen_at or session.last_seen_at) + self.settings.idle_timeout, session.expires_at)

    def dead_reason(self, session: SessionRecord | UserSession) -> str | None:
        """None while the session is live, else why it is not."""
        if isinstance(session, UserSession):
            session = SessionRecord.from_row(session)
        if session.ended_at is not None:
            return session.end_reason or EndReason.LOGOUT
        now = self.clock()
        if now >= session.expires_at:
            return EndReason.EXPIRED
        if now >= session.last_seen_at + self.settings.idle_timeout:
            return EndReason.IDLE
        if session.user_disabled:
            return EndReason.REVOKED
        return None

    def touch(self, session: SessionRecord | UserSession) -> datetime | None:
        """Record activity, at most once a minute so reads do not become writes; the new time.

        With ``own_transactions`` the write commits on its own: the request's transaction then
        holds no lock on the row, which a token refresh later in the same request must lock.
        """
        now = self.clock()
        if now - session.last_seen_at < TOUCH_INTERVAL:
            return None
        statement = update(UserSession).where(UserSession.id == session.id).values(last_seen_at=now)
        if self.own_transactions is None:
            self.dbsession.execute(statement.execution_options(synchronize_session="fetch"))
            return now
        with self.own_transactions() as dbsession, dbsession.begin():
            dbsession.execute(statement)
        return now

    def end(self, session: SessionRecord | UserSession, reason: str) -> None:
        self._end_where(UserSession.id == session.id, reason)

    def end_all_for_user(self, user_id: int, reason: str, *, except_id: int | None = None) -> int:
        condition = UserSession.user_id == user_id
        if except_id is not None:
            condition = condition & (UserSession.id != except_id)
        return self._end_where(condition, reason)

    def end_all_others(self, session: SessionRecord | UserSession, reason: str = EndReason.ENDED_ELSEWHERE) -> int:
        return self.end_all_for_user(session.user_id, reason, except_id=session.id)

    def end_by_provider_sid(self, user_ids: list[int] | None, sid: str, reason: str) -> int:
        condition = UserSession.provider_sid == sid
        if user_ids is not None:
            condition = condition & UserSession.user_id.in_(user_ids)
        return self._end_where(condition, reason)

    def list_for_user(self, user_id: int) -> list[UserSession]:
        now = self.clock()
        rows = self.dbsession.scalars(
            select(UserSession)
            .where(
                UserSession.user_id == user_id,
                UserSession.ended_at.is_(None),
                UserSession.expires_at > now,
                UserSession.last_seen_at > now - self.settings.idle_timeout,
            )
            .order_by(UserSession.last_seen_at.desc(), UserSession.id.desc())
        ).all()
        return list(rows)

    def purge_expired(self, *, retention: timedelta = timedelta(days=1)) -> int:
        """Delete rows that ended or expired more than ``retention`` ago."""
        cutoff = self.clock() - retention
        idle_cutoff = cutoff - self.settings.idle_timeout
        result = self.dbsession.execute(
            UserSession.__table__.delete().where(
                (UserSession.ended_at < cutoff)
                | (UserSession.expires_at < cutoff)
                | (UserSession.last_seen_at < idle_cutoff)
            )
        )
        return result.rowcount

    def tokens(self, row: UserSession) -> TokenSet:
        return self.cipher.tokens_of(row)

    def store_tokens(self, row: UserSession, tokens: TokenSet) -> None:
        self._set_tokens(row, tokens)
        self.dbsession.flush()

    def new_csrf_token(self, session: SessionRecord | UserSession) -> str:
        token = secrets.token_urlsafe(32)
        self.dbsession.execute(
            update(UserSession)
            .where(UserSession.id == session.id)
            .values(csrf_token=token)
            .execution_options(synchronize_session="fetch")
        )
        return token

    def _set_tokens(self, row: UserSession, tokens: TokenSet) -> None:
        row.access_token = self.cipher.encrypt(tokens.access_token)
        row.refresh_token = self.cipher.encrypt(tokens.refresh_token)
        row.id_token = self.cipher.encrypt(tokens.id_token)
        row.access_token_expires_at = tokens.access_token_expires_at

    def _end_where(self, condition, reason: str) -> int:
        # Ended rows keep who and when, never the tokens.
        result = self.dbsession.execute(
            update(UserSession)
            .where(condition, UserSession.ended_at.is_(None))
            .values(
                ended_at=self.clock(),
                end_reason=reason,
                access_token=None,
                refresh_token=None,
                id_token=None,
            )
            .execution_options(synchronize_session=False)
        )
        # Rows already loaded reload these on next access (the ORM cannot sync attributes it never loaded).
        for obj in list(self.dbsession.identity_map.values()):
            if isinstance(obj, UserSession):
                self.dbsession.expire(obj, _ENDED_ATTRIBUTES)
        return result.rowcount
