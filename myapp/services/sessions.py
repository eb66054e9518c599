"""Server-side sessions: the browser holds a random id, the database holds its SHA-256.

A session is read as one :class:`SessionRecord` (plain values, built from the columns by name)
and written by :class:`SessionRows`, the one place that ends sessions and stores their tokens,
whichever transaction it is given: the request's, or the refresh lock's own.
"""

import functools
import hashlib
import json
import logging
import re
import secrets
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import NamedTuple

from sqlalchemy import ColumnElement, Select, Text, bindparam, cast, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from myapp.errors import describe_outage, outage_errors
from myapp.memo import remembered
from myapp.models import SessionToken, TokenRevocation, User, UserSession
from myapp.models.meta import utcnow
from myapp.models.user import display_name
from myapp.services.tokenset import BEARER, TokenCipher, TokenSet, token_type_column, token_type_from_column
from myapp.settings import SessionSettings
from myapp.text import storable

# secrets.token_urlsafe(32): 256 random bits, 43 url-safe characters. Anything else is no session.
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{43}$")
MAX_HANDLE_LENGTH = 32
log = logging.getLogger(__name__)

TOUCH_INTERVAL = timedelta(minutes=1)
# How much later than another live session of its browser's sign-in a session must have been used
# for the other to count as out of reach (end_unreachable): twice the lag of recorded use.
UNREACHABLE_AFTER = 2 * TOUCH_INTERVAL
SID_COLUMN_LENGTH = UserSession.__table__.c.provider_sid.type.length
# The name of a session_tokens row that only keeps an exchange's refresh token to be revoked with
# the session (SessionRows.keep_for_revocation): no upstream name starts with it (settings.py).
KEPT = "~"
_ENDED_ATTRIBUTES = ["ended_at", "end_reason", "access_token", "refresh_token", "id_token", "dpop_key"]


def stored_sid(sid: object) -> str | None:
    """A provider's ``sid`` as ``sessions.provider_sid`` keeps it: as it is, or, when longer than the
    column (OpenID Connect bounds no sid's length, and PostgreSQL refuses a longer value) or not
    storable as it is (a NUL, a lone surrogate), as its SHA-256. Sign-in and back-channel logout
    both go through here, so they compare alike."""
    if not isinstance(sid, str) or not sid:
        return None
    if len(sid) <= SID_COLUMN_LENGTH and storable(sid):
        return sid
    return "sha256:" + hashlib.sha256(sid.encode("utf-8", "surrogatepass")).hexdigest()


def same_provider_session(issuer: str, sid: str | None, other_issuer: str, other_sid: str | None) -> bool:
    """Whether two sign-ins were made in one session at the provider (the ID tokens' ``sid``, which
    back-channel logout names too). Revoking one's refresh token can end the other's there:
    Keycloak keeps one client session per session at the provider and client, and revoking a
    refresh token removes it (before keycloak#35486 was fixed, in 26.1 and in 26.0 and 24.0 updates,
    every one of the user's for that client)."""
    return sid is not None and sid == other_sid and issuer == other_issuer


def idle_after(idle_timeout: timedelta) -> timedelta:
    """How long after its recorded use (``last_seen_at``) a session is idle when nothing else is
    known of it: the idle timeout from its last use, which may be up to ``TOUCH_INTERVAL`` later
    than recorded (a use within a minute of the recorded one is not written). So a session in use
    never ends as idle, and an unused one ends between ``idle_timeout`` and a minute more after its
    last use. A process that served the session's last use knows better (SessionStore.idle_at)."""
    return idle_timeout + TOUCH_INTERVAL


class EndReason(StrEnum):
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
    ACCOUNT_DISABLED = "account_disabled"  # users.disabled: dead at once, ended by the revoker's sweep


# Not an end, never stored: why a session is no session in a process that does not know its
# provider (removed from the settings, or not added there yet).
PROVIDER_UNKNOWN = "provider_removed"

_SESSIONS, _USERS = UserSession.__table__.c, User.__table__.c
# What every request reads, named as SessionRecord's fields.
_RECORD_COLUMNS = (
    _SESSIONS.id, _SESSIONS.handle, _SESSIONS.user_id, _SESSIONS.created_at, _SESSIONS.last_seen_at,
    _SESSIONS.expires_at, _SESSIONS.ended_at, _SESSIONS.end_reason, _SESSIONS.provider, _SESSIONS.provider_sid,
    _SESSIONS.csrf_token, _SESSIONS.acr, _SESSIONS.amr, _SESSIONS.auth_time,
    _SESSIONS.access_token, _SESSIONS.access_token_expires_at, _SESSIONS.access_token_type, _SESSIONS.dpop_key,
    _SESSIONS.token_generation, _SESSIONS.refreshed_at,
    _USERS.issuer.label("user_issuer"), _USERS.subject.label("user_subject"), _USERS.name.label("user_name"),
    _USERS.email.label("user_email"),
    # As text on every database, parsed once per exact text (SessionRecord.from_columns): psycopg
    # would decode PostgreSQL's json on every read.
    cast(_USERS.groups, Text).label("user_groups"), _USERS.disabled.label("user_disabled"),
)
_DATETIMES = (
    "created_at", "last_seen_at", "expires_at", "ended_at", "access_token_expires_at", "refreshed_at", "auth_time",
)


def _record_query(*extra) -> Select:
    return select(*_RECORD_COLUMNS, *extra).select_from(
        UserSession.__table__.join(User.__table__, _USERS.id == _SESSIONS.user_id)
    )


# Built once: the hot path pays neither ORM nor statement building.
_BY_ID_HASH = _record_query().where(_SESSIONS.id_hash == bindparam("id_hash"))
_BY_HANDLE = _record_query().where(_SESSIONS.handle == bindparam("handle"))
_BY_ID = _record_query().where(_SESSIONS.id == bindparam("session_id"))
_WITH_TOKENS_BY_ID = _record_query(_SESSIONS.refresh_token, _SESSIONS.id_token).where(
    _SESSIONS.id == bindparam("session_id")
)


# "Live", as the sessions pages count and list them: not ended, not expired, not idle
# (``SessionStore.dead_reason`` says why one is not). Built once; ``_live_params`` fills it in.
_LIVE = (
    _SESSIONS.ended_at.is_(None), _SESSIONS.expires_at > bindparam("now"),
    _SESSIONS.last_seen_at > bindparam("idle_since"),
)
# When the first of the rows live now stops being so with nothing written: its end, or its last use
# ``idle_after`` ago (``SessionStore.live_until``). None comes back to life as time passes: each of
# _LIVE's conditions, once false, stays so.
_LIVE_ENDS = (
    func.min(_SESSIONS.expires_at).label("first_expiry"), func.min(_SESSIONS.last_seen_at).label("first_seen"),
)
_LIVE_OF_USER = (
    select(UserSession).where(UserSession.user_id == bindparam("user_id"), *_LIVE)
    .order_by(UserSession.last_seen_at.desc(), UserSession.id.desc())
)
_LIVE_COUNT = select(func.count().label("count")).select_from(UserSession.__table__).where(*_LIVE)
_LIVE_COUNT_OF_USER = _LIVE_COUNT.add_columns(*_LIVE_ENDS).where(_SESSIONS.user_id == bindparam("user_id"))


# Pure functions of a stored text (SQLite's datetimes, the JSON lists), remembered by the exact
# text: a datetime or tuple is immutable, so sharing one is safe. Bounded: emptied when full. Only
# the parsing is remembered; every request still reads the row and checks it.
_PARSED_LIMIT = 4096
_PARSED_TIMES: dict[str, datetime] = {}
_PARSED_GROUPS: dict[str, tuple] = {}
_PARSED_AMR: dict[str, tuple[str, ...]] = {}


def _utc(value) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite keeps datetimes as ISO text, without a zone (always UTC here)
        return remembered(_PARSED_TIMES, value, _iso_utc, _PARSED_LIMIT)
    return _as_utc(value)


def _iso_utc(text: str) -> datetime:
    return _as_utc(datetime.fromisoformat(text))


def _groups(text: str) -> tuple:
    return tuple(json.loads(text) or ())


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


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
    provider: str
    provider_sid: str | None
    csrf_token: str = field(repr=False)
    access_token: bytes | None = field(repr=False)
    access_token_expires_at: datetime | None
    # "DPoP": the access token is bound to ``dpop_key`` (encrypted, as stored); None: Bearer.
    access_token_type: str | None
    dpop_key: bytes | None = field(repr=False)
    token_generation: int
    refreshed_at: datetime | None
    user_issuer: str
    user_subject: str
    user_name: str
    user_email: str | None
    user_groups: tuple[str, ...]
    user_disabled: bool
    # How the person signed in, from the sign-in's ID token (None when it did not say).
    acr: str | None = None
    amr: tuple[str, ...] = ()
    auth_time: datetime | None = None

    @classmethod
    def from_columns(cls, columns: Mapping) -> "SessionRecord":
        """From the columns of ``_record_query()``, by name, as any driver returns them."""
        values = {name: columns[name] for name in cls.__dataclass_fields__}
        for name in _DATETIMES:
            values[name] = _utc(values[name])
        for name in ("access_token", "dpop_key"):
            if values[name] is not None:
                values[name] = bytes(values[name])
        groups = values["user_groups"]
        # JSON text on every database (the statement casts it), None for none.
        values["user_groups"] = () if groups is None else remembered(_PARSED_GROUPS, groups, _groups, _PARSED_LIMIT)
        values["user_name"] = display_name(values["user_name"], values["user_email"], values["user_subject"])
        values["user_disabled"] = bool(values["user_disabled"])
        values["amr"] = _json_list(values["amr"])
        return cls(**values)


# The records made from the rows the per-request lookup read, by the rows' values: a record is a
# function of them alone (values equal as keys, 1 and True, make equal records), and immutable.
# But for one pair: two aware datetimes of one zone (psycopg gives timestamptz in the connection's
# TimeZone) are equal, and hash alike, when their local times are, whatever their ``fold``: in the
# hour a zone's clocks go back, two instants an hour apart. Their folds are part of the key.
# Bounded like the parsed texts above. Every request still reads its row and checks the record;
# only making it again from the same values is saved (about 14 us of a signed-in page's 190 in the
# app: docs/benchmarks.md).
_RECORDS_LIMIT = 1024
_RECORDS: dict[tuple, "SessionRecord"] = {}


def _record_of(columns: Mapping) -> "SessionRecord":
    """``SessionRecord.from_columns(columns)``, remembered by the values of ``columns`` (those of
    ``_BY_ID_HASH``, in its order): the same values, read again, give the same record."""
    # The folds of its times (text on SQLite, which has none).
    key = (tuple(columns.values()), *[getattr(columns[name], "fold", 0) for name in _DATETIMES])
    try:
        return remembered(_RECORDS, key, lambda _: SessionRecord.from_columns(columns), _RECORDS_LIMIT)
    except (TypeError, ValueError):  # a value that has no hash (a list, a buffer open to writes): made each time
        return SessionRecord.from_columns(columns)


def _json_list(text) -> tuple[str, ...]:
    if not text:
        return ()
    return remembered(_PARSED_AMR, text, _parse_json_list, _PARSED_LIMIT) if isinstance(text, str) else _parse_json_list(text)


def _parse_json_list(text) -> tuple[str, ...]:
    try:
        value = json.loads(text)
    except ValueError:
        return ()
    return tuple(item for item in value if isinstance(item, str)) if isinstance(value, list) else ()


class SignIn(NamedTuple):
    """How a person signed in: the ID token's ``acr``, ``amr`` and ``auth_time``."""

    acr: str | None = None
    amr: tuple[str, ...] = ()
    auth_time: datetime | None = None


class UpstreamToken(NamedTuple):
    """An upstream's own access token for a session, as stored in ``session_tokens``."""

    access_token: str
    expires_at: datetime | None
    refreshed_at: datetime | None
    token_type: str = BEARER
    # The upstream's settings it was minted for (Upstream.minted_for); None: not known to be the
    # ones asked about (SessionRows.upstream_token), or not recorded.
    minted_for: str | None = None
    # Obtained by token exchange (RFC 8693), so revoked of its own when the session ends.
    exchanged: bool = False


def minted_label(minted_for: str, access_token: str) -> str:
    """What ``session_tokens.minted_for`` holds: the upstream's settings digest bound to the very
    token, so that a row whose token is written by code that does not know the column (a process
    of the version before migration 0011, during a rolling upgrade, which leaves the label as it
    was) reads as minted for nothing known. A digest, as an ID token's ``at_hash`` is one."""
    return hashlib.sha256(f"{minted_for}\0{access_token}".encode()).hexdigest()[:32]


class StoredSession(NamedTuple):
    """A session with its tokens, decrypted (a token no key in use can read is None)."""

    session: SessionRecord
    tokens: TokenSet


def hash_session_id(raw: str) -> str:
    return hashlib.sha256(raw.encode("ascii")).hexdigest()


def is_wellformed_session_id(value: str | None) -> bool:
    return bool(value) and _SESSION_ID.match(value) is not None


class SessionRows:
    """The sessions table within one transaction: the only code that encrypts a session's tokens
    (``token_columns``, also for a new session), rewrites them or ends a session. The request's
    transaction uses it through :class:`SessionStore`; a refresh uses it inside the refresh lock's
    own transaction."""

    def __init__(self, dbsession: Session, cipher: TokenCipher, clock: Callable[[], datetime] = utcnow):
        self.dbsession = dbsession
        self.cipher = cipher
        self.clock = clock

    def read(self, session_id: int) -> StoredSession | None:
        row = self.dbsession.execute(_WITH_TOKENS_BY_ID, {"session_id": session_id}).mappings().one_or_none()
        if row is None:
            return None
        record = SessionRecord.from_columns(row)
        tokens = TokenSet(
            access_token=self.cipher.decrypt(record.access_token),
            refresh_token=self.cipher.decrypt(row["refresh_token"]),
            id_token=self.cipher.decrypt(row["id_token"]),
            access_token_expires_at=record.access_token_expires_at,
            token_type=token_type_from_column(record.access_token_type),
            dpop_key=self.cipher.decrypt(record.dpop_key),
        )
        return StoredSession(record, tokens)

    def generation(self, session_id: int) -> int | None:
        """The session's token generation as it is now (None: no such row), without its tokens."""
        return self.dbsession.scalar(select(UserSession.token_generation).where(UserSession.id == session_id))

    def token_columns(self, tokens: TokenSet) -> dict:
        """The columns that hold ``tokens``, encrypted. The DPoP key is written whenever the tokens
        are (so it moves to the newest encryption key with them) but never erased here: a session
        keeps its key until it ends."""
        columns = {
            "access_token": self.cipher.encrypt(tokens.access_token),
            "refresh_token": self.cipher.encrypt(tokens.refresh_token),
            "id_token": self.cipher.encrypt(tokens.id_token),
            "access_token_expires_at": tokens.access_token_expires_at,
            "access_token_type": token_type_column(tokens.token_type),
        }
        if tokens.dpop_key is not None:
            columns["dpop_key"] = self.cipher.encrypt(tokens.dpop_key)
        return columns

    def write_tokens(
        self, session_id: int, tokens: TokenSet, *, expected_generation: int, new_access_token: bool = True
    ) -> bool:
        """Store refreshed tokens, only into a live session still at ``expected_generation`` (the
        one the refresh started from); False when it has ended or moved on meanwhile.

        ``refreshed_at`` is when the session's own access token was minted (an upstream's 401 on
        it within 30 s is passed back, not refreshed again): ``new_access_token=False`` for a
        refresh token rotated while minting an upstream's own token, which leaves it as it was.
        """
        values = {**self.token_columns(tokens), "token_generation": expected_generation + 1}
        if new_access_token:
            values["refreshed_at"] = self.clock()
        stored = self.dbsession.execute(
            update(UserSession)
            .where(
                UserSession.id == session_id,
                UserSession.ended_at.is_(None),
                UserSession.token_generation == expected_generation,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount
        return stored == 1

    def end(
        self, session_id: int, reason: EndReason, *, revoke: bool = True, revoke_exchanged: bool | None = None
    ) -> bool:
        condition = UserSession.id == session_id
        return self.end_where(condition, reason, revoke=revoke, revoke_exchanged=revoke_exchanged) == 1

    def end_where(
        self, condition, reason: EndReason, *, revoke: bool = True, revoke_exchanged: bool | None = None,
        ended: list | None = None, skip_locked: bool = False,
    ) -> int:
        """End the live sessions matching ``condition``; ended rows keep who and when, never the tokens.

        Their refresh tokens (or access tokens, when there is none) move to ``token_revocations`` in
        this same transaction, for the revoker to revoke at the provider: ``revoke=False`` only for
        a caller that revokes them itself (a person's own sign-out, which waits for the answer), or
        that must revoke nothing (a session made in the same session at the provider as one that
        goes on). The upstreams' own tokens go with the session; those obtained by token exchange
        are queued too (``revoke_exchanged``, by default as ``revoke``): their source is the
        session's access token, so revoking its refresh token need not end them (RFC 7009 section
        2.1 covers only tokens of the same grant). Their refresh token when the exchange answered
        with one, else the access token (``token_type_hint=access_token``). ``ended``, when given,
        receives each ended session's ``user_id`` and ``provider_sid``, for a caller that says whose.
        ``skip_locked``: a session whose row another transaction holds (a refresh, on PostgreSQL) is
        left as it is, not waited for.
        """
        # Locked while read, so that a refresh committing meanwhile cannot slip a token past us.
        ending = self.dbsession.execute(
            select(
                _SESSIONS.id, _SESSIONS.user_id, _SESSIONS.provider_sid, _SESSIONS.refresh_token,
                _SESSIONS.access_token, _USERS.issuer,
            )
            .select_from(UserSession.__table__.join(User.__table__, _USERS.id == _SESSIONS.user_id))
            .where(condition, _SESSIONS.ended_at.is_(None))
            # In the order of their ids, as hold_sessions_of locks them: two that lock a person's
            # sessions never wait for each other (helper-145).
            .order_by(_SESSIONS.id)
            .with_for_update(of=UserSession.__table__, skip_locked=skip_locked)
        ).all()
        if not ending:
            return 0
        ids = [row.id for row in ending]
        now = self.clock()
        result = self.dbsession.execute(
            update(UserSession)
            .where(UserSession.id.in_(ids), UserSession.ended_at.is_(None))
            .values(
                ended_at=now, end_reason=str(reason), access_token=None, refresh_token=None, id_token=None, dpop_key=None
            )
            .execution_options(synchronize_session=False)
        )
        exchanged = []
        if revoke if revoke_exchanged is None else revoke_exchanged:
            exchanged = self.dbsession.execute(
                select(SessionToken.session_id, SessionToken.access_token, SessionToken.refresh_token).where(
                    SessionToken.session_id.in_(ids),
                    SessionToken.refresh_token.is_not(None)
                    # An access token already expired is dead at the provider: nothing to ask it.
                    | (SessionToken.exchanged & (SessionToken.expires_at.is_(None) | (SessionToken.expires_at > now))),
                ).order_by(SessionToken.id)
            ).all()
        # The upstreams' own tokens go with it; those of a refresh grant are short-lived, and the
        # revoked refresh token was their source.
        self.dbsession.execute(delete(SessionToken).where(SessionToken.session_id.in_(ids)))
        if revoke:
            self._revoke_later(
                (row.issuer, row.refresh_token, "refresh_token") if row.refresh_token is not None
                else (row.issuer, row.access_token, "access_token")
                for row in ending
                if row.refresh_token is not None or row.access_token is not None
            )
        issuers = {row.id: row.issuer for row in ending}
        self._revoke_later(
            (issuers[row.session_id], row.refresh_token, "refresh_token") if row.refresh_token is not None
            else (issuers[row.session_id], row.access_token, "access_token")
            for row in exchanged
        )
        if ended is not None:
            ended.extend(ending)  # locked above: each of them is ended by the update
        # Rows already loaded reload these on next access (the ORM cannot sync attributes it never loaded).
        for obj in list(self.dbsession.identity_map.values()):
            if isinstance(obj, UserSession):
                self.dbsession.expire(obj, _ENDED_ATTRIBUTES)
        return result.rowcount

    def end_unreachable(self, *, limit: int = 500, found: "list[Unreachable] | None" = None) -> int:
        """End the live sessions that no browser can use any more (``EndReason.REPLACED``): those
        :func:`unreachable_sessions` finds (``found``, when the caller looked already, with a read
        of its own), each only if it has still not been used since."""
        ended = 0
        for unreachable in unreachable_sessions(self.dbsession, limit=limit) if found is None else found:
            ended += self.end_where(unreachable.condition, EndReason.REPLACED, revoke=unreachable.revoke)
        return ended

    def upstream_token(self, session_id: int, upstream: str, *, minted_for: str | None = None) -> UpstreamToken | None:
        """An upstream's own access token for this session, decrypted (None: none stored, or
        unreadable). Its ``minted_for`` is the one asked about when the row says the token was
        minted for that (:func:`minted_label`), else None."""
        row = self.dbsession.execute(
            select(
                SessionToken.access_token, SessionToken.expires_at, SessionToken.refreshed_at, SessionToken.token_type,
                SessionToken.minted_for, SessionToken.exchanged,
            ).where(SessionToken.session_id == session_id, SessionToken.upstream == upstream)
        ).one_or_none()
        if row is None:
            return None
        token = self.cipher.decrypt(row.access_token)
        if token is None:
            return None
        recorded = minted_for is not None and row.minted_for == minted_label(minted_for, token)
        return UpstreamToken(
            token, _utc(row.expires_at), _utc(row.refreshed_at), token_type_from_column(row.token_type),
            minted_for if recorded else None, row.exchanged,
        )

    def write_upstream_token(
        self, session_id: int, upstream: str, token: UpstreamToken, *, refresh_token: str | None = None,
    ) -> bool:
        """Store (or replace) an upstream's own access token; the caller holds the session's refresh
        lock. Only into a live session: False, storing nothing, when it has ended meanwhile (with the
        Redis lock, a revocation ends it without that lock, while the provider answers).

        ``token.exchanged``: obtained by token exchange, so revoked of its own when the session ends;
        ``refresh_token``: one the exchange answered with, stored (encrypted) for that revocation
        only. The row holds the tokens of one answer: a refresh token stored with an earlier one
        (another grant, at a provider that makes each exchange one of its own) moves to a row of
        its own (``_keep``), so that both are revoked, and this access token too when its answer
        had no refresh token to cover it (RFC 7009 section 2.1). Each refresh token is held by one
        row of the session, so queued once: one a "~" row kept already moves here, and one another
        upstream's row holds stays there (this access token is then revoked of its own)."""
        if not self._lock_live(session_id):
            return False
        if refresh_token:
            holding = self._holding(session_id, refresh_token, besides=upstream)
            kept = [row_id for row_id, name in holding if name.startswith(KEPT)]
            if kept:
                self.dbsession.execute(delete(SessionToken).where(SessionToken.id.in_(kept)))
            if len(kept) < len(holding):
                refresh_token = None
        values = {
            "access_token": self.cipher.encrypt(token.access_token),
            "expires_at": token.expires_at,
            "refreshed_at": token.refreshed_at or self.clock(),
            "token_type": token_type_column(token.token_type),
            "minted_for": minted_label(token.minted_for, token.access_token) if token.minted_for else None,
            "exchanged": token.exchanged,
        }
        stored = self.dbsession.execute(
            select(SessionToken.refresh_token).where(SessionToken.session_id == session_id, SessionToken.upstream == upstream)
        ).scalar_one_or_none()
        if stored is not None and (not refresh_token or self.cipher.decrypt(stored) != refresh_token):
            self._keep(session_id, bytes(stored))  # as stored: still encrypted
        values["refresh_token"] = self.cipher.encrypt(refresh_token) if refresh_token else None
        updated = self.dbsession.execute(
            update(SessionToken)
            .where(SessionToken.session_id == session_id, SessionToken.upstream == upstream)
            .values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount
        if not updated:
            self.dbsession.execute(
                insert(SessionToken.__table__).values(session_id=session_id, upstream=upstream, **values)
            )
        return True

    def _lock_live(self, session_id: int) -> bool:
        """Lock the session row, as end_where does before deleting a session's upstream tokens:
        whichever comes second waits for the other, and this one then sees the end. False when the
        session has ended."""
        return self.dbsession.execute(
            select(_SESSIONS.id).where(_SESSIONS.id == session_id, _SESSIONS.ended_at.is_(None)).with_for_update()
        ).first() is not None

    def keep_for_revocation(self, session_id: int, refresh_token: str) -> bool:
        """Keep (encrypted) a refresh token an exchange answered with that no upstream's row holds
        (its answer refused for its access token), to be revoked with the session as a stored one
        is; the caller holds the session's refresh lock. False, keeping nothing, when the session
        has ended meanwhile. One a row of the session holds already is not kept again (queued once)."""
        if not self._lock_live(session_id):
            return False
        if not self._holding(session_id, refresh_token):
            self._keep(session_id, self.cipher.encrypt(refresh_token))
        return True

    def _holding(self, session_id: int, refresh_token: str, *, besides: str | None = None) -> list[tuple[int, str]]:
        """The rows of the session (id, upstream name) but ``besides``'s that hold ``refresh_token``."""
        rows = self.dbsession.execute(
            select(SessionToken.id, SessionToken.upstream, SessionToken.refresh_token).where(
                SessionToken.session_id == session_id, SessionToken.refresh_token.is_not(None),
                SessionToken.upstream != (besides or ""),
            )
        ).all()
        return [(row.id, row.upstream) for row in rows if self.cipher.decrypt(row.refresh_token) == refresh_token]

    def _keep(self, session_id: int, refresh_token: bytes) -> None:
        """A row of ``session_tokens`` that only keeps an exchange's refresh token (encrypted) for
        end_where to queue: under a name no upstream can have (``KEPT``), so never read as an
        upstream's token; its access token is empty (the column is NOT NULL) and has expired."""
        now = self.clock()
        self.dbsession.execute(
            insert(SessionToken.__table__).values(
                session_id=session_id, upstream=KEPT + secrets.token_urlsafe(12), access_token=self.cipher.encrypt(""),
                expires_at=now, refreshed_at=now, exchanged=True, refresh_token=refresh_token,
            )
        )

    def revoke_issued_later(self, session: SessionRecord, tokens: TokenSet) -> None:
        """Queue what the provider issued for ``session`` and nobody keeps (``revoke_later``): an
        answer refused, or one that came after the session ended. The one rule for every such token
        (an exchange's, a rotated refresh token, an unbound answer's), unless the session ended
        beside a live session in the same session at the provider (below), or it is an access token
        alone that the session still holds (``_holds_access_token``): an answer that repeats one it
        uses is no token nobody keeps, and revoking it would kill it while it is served."""
        if self._ended_beside_a_live_one(session.id):
            return
        if not tokens.refresh_token and tokens.access_token and self._holds_access_token(session.id, tokens.access_token):
            return
        self.revoke_later(session.user_issuer, tokens)

    def _holds_access_token(self, session_id: int, access_token: str) -> bool:
        """Whether the session, live, holds ``access_token``: its own, or an upstream's row's. Each
        is revoked in its turn: with the session (its own with its refresh token, an exchanged one
        of its own, one of a refresh grant with the refresh token it came from)."""
        own = self.dbsession.execute(
            select(_SESSIONS.access_token).where(_SESSIONS.id == session_id, _SESSIONS.ended_at.is_(None))
        ).first()
        if own is None:
            return False  # ended: it holds nothing any more
        held = [own.access_token, *self.dbsession.scalars(
            select(SessionToken.access_token).where(SessionToken.session_id == session_id)
        )]
        return any(token is not None and self.cipher.decrypt(token) == access_token for token in held)

    def _ended_beside_a_live_one(self, session_id: int) -> bool:
        """Whether the session, ended, was replaced (``EndReason.REPLACED``) in the same session at
        the provider as a session still live (same_provider_session): its end revoked nothing (a
        sign-in again behind single sign-on, a step-up, the sweep's unreachable sessions), and
        what was issued for it since must not be revoked either, as that could end the live one."""
        ended = self.dbsession.execute(
            select(_SESSIONS.end_reason, _SESSIONS.provider_sid, _USERS.issuer)
            .select_from(UserSession.__table__.join(User.__table__, _USERS.id == _SESSIONS.user_id))
            .where(_SESSIONS.id == session_id, _SESSIONS.ended_at.is_not(None))
        ).first()
        if ended is None or ended.end_reason != EndReason.REPLACED or ended.provider_sid is None:
            return False
        live = self.dbsession.execute(
            select(_SESSIONS.id)
            .select_from(UserSession.__table__.join(User.__table__, _USERS.id == _SESSIONS.user_id))
            .where(
                _SESSIONS.ended_at.is_(None), _SESSIONS.id != session_id,
                _SESSIONS.provider_sid == ended.provider_sid, _USERS.issuer == ended.issuer,
            )
            .limit(1)
        ).first()
        return live is not None

    def revoke_later(self, issuer: str, tokens: TokenSet) -> None:
        """Have the revoker revoke ``tokens`` (the refresh token, else the access token) at the provider."""
        if tokens.refresh_token:
            self._revoke_later([(issuer, self.cipher.encrypt(tokens.refresh_token), "refresh_token")])
        elif tokens.access_token:
            self._revoke_later([(issuer, self.cipher.encrypt(tokens.access_token), "access_token")])

    def _revoke_later(self, pending) -> None:
        now = self.clock()
        values = [
            {"issuer": issuer, "token": bytes(token), "token_type_hint": hint, "created_at": now,
             "next_attempt_at": now, "attempts": 0}
            for issuer, token, hint in pending
        ]
        if values:
            self.dbsession.execute(insert(TokenRevocation.__table__), values)


class Unreachable(NamedTuple):
    """Sessions no browser can use any more (``condition``, evaluated again as they are ended), and
    whether their tokens are revoked."""

    condition: ColumnElement[bool]
    revoke: bool


def unreachable_sessions(reader, *, limit: int = 500, ending: Collection[int] = ()) -> list[Unreachable]:
    """The live sessions that no browser can use any more, read with ``reader`` (a Session or a
    Connection: it writes nothing); ``ending``: the ids of sessions the caller ends first.

    A browser holds one session cookie, set only by the answer to a sign-in's callback. Of the
    live sessions made by one browser's sign-ins (one ``browser_binding``), so only the one it
    used last can still be reached once that use came after the others' answers: sign-ins
    completed at the same moment in several tabs (no callback carries a cookie of another)
    leave the rest, live with their refresh tokens, until their idle timeout. A session is
    ended when another of its binding and its user was used ``UNREACHABLE_AFTER`` or more
    after its own last recorded use, and only if it was not used since it was read (the
    condition says so, and the end evaluates it again). Never for another user's: a binding is
    a cookie, which over plain http another host of the domain can set in a victim's browser
    before they sign in, and then sign in with it elsewhere. Its tokens are revoked, unless it
    was made in the same session at the provider as the one kept (same_provider_session): wiped
    here, nobody holds them, and revoking them could end it.

    A batch is ``limit`` browsers that have such a session: those whose sessions tell nothing
    yet (none used well after another) stay live until their idle timeout, and taking them
    into a batch would hold up, every minute, the browsers after them.
    """
    browsers = reader.execute(
        select(
            _SESSIONS.browser_binding,
            _SESSIONS.user_id,
            func.min(_SESSIONS.last_seen_at).label("first_used"),
            func.max(_SESSIONS.last_seen_at).label("last_used"),
        )
        .where(_SESSIONS.ended_at.is_(None), _SESSIONS.browser_binding.is_not(None))
        .group_by(_SESSIONS.browser_binding, _SESSIONS.user_id)
        .having(func.count() > 1)
    ).all()
    deciding = [b for b in browsers if _utc(b.first_used) <= _utc(b.last_used) - UNREACHABLE_AFTER][:limit]
    if not deciding:
        return []
    # The session each of those browsers holds (used last), for the session at the provider it was made in.
    held: dict[tuple, tuple] = {}
    for row in reader.execute(
        select(_SESSIONS.id, _SESSIONS.browser_binding, _SESSIONS.user_id, _SESSIONS.last_seen_at, _SESSIONS.provider_sid)
        .where(_SESSIONS.ended_at.is_(None), _SESSIONS.browser_binding.in_({b.browser_binding for b in deciding}))
    ):
        if row.id in ending:
            continue
        known = held.get((row.browser_binding, row.user_id))
        if known is None or (_utc(row.last_seen_at), row.id) > (_utc(known.last_seen_at), known.id):
            held[row.browser_binding, row.user_id] = row
    revoked, left_to_expire = [], []
    for browser in deciding:
        kept = held.get((browser.browser_binding, browser.user_id))
        if kept is None or _utc(kept.last_seen_at) < _utc(browser.last_used):
            # The one used last ended between the two reads, or is ``ending``: it is no session that
            # goes on, so its session at the provider is no reason to leave a token live. A later
            # sweep decides among those left (or their timeout ends them, revoked).
            continue
        out_of_reach = (
            (_SESSIONS.browser_binding == browser.browser_binding) & (_SESSIONS.user_id == browser.user_id)
            & (_SESSIONS.last_seen_at <= _utc(browser.last_used) - UNREACHABLE_AFTER)
        )
        if kept.provider_sid is None:
            revoked.append(out_of_reach)
            continue
        # One user, so one issuer: the same session at the provider is the same sid.
        left_to_expire.append(out_of_reach & (_SESSIONS.provider_sid == kept.provider_sid))
        revoked.append(
            out_of_reach & or_(_SESSIONS.provider_sid.is_(None), _SESSIONS.provider_sid != kept.provider_sid)
        )
    found = [Unreachable(or_(*revoked), revoke=True)] if revoked else []
    return found + ([Unreachable(or_(*left_to_expire), revoke=False)] if left_to_expire else [])


class LastUse(NamedTuple):
    """A session's last use in this process: the ``last_seen_at`` that request read, the one it
    left (the same, or the time it wrote), and when it was."""

    read: datetime
    left: datetime
    at: datetime


class RecentTouches:
    """The sessions this process recorded activity for in the last ``TOUCH_INTERVAL``, and when it
    last served each (``LastUse``).

    Requests of one session that arrive together (a page's parallel API calls, once its
    ``last_seen_at`` is a minute old) each read the same old time; without this, each would write
    it, one after another on the row's lock. With it, one does and the others take its time. Only
    writes are skipped: every request still reads the session row and checks it.

    The last uses let a session end as idle exactly ``idle_timeout`` after its last use here,
    where the row alone leaves a minute's doubt (``idle_after``). They can only bring an idle end
    sooner, never put one off: forgetting one (a restart, the limit) is the minute's doubt again.
    """

    LIMIT = 10_000

    def __init__(self):
        self._lock = threading.Lock()
        # By the session's handle: random, never reused, unlike a row id.
        self._at: dict[str, datetime] = {}
        # Read and written without the lock: one dict operation each, and the GIL orders them.
        self._used: dict[str, LastUse] = {}
        # The session's LastUse here, by handle, else None (the dict's own get: every request asks).
        self.last_use: Callable[[str], LastUse | None] = self._used.get

    def used(self, handle: str, use: LastUse) -> None:
        if len(self._used) >= self.LIMIT:  # forgetting one leaves its session the minute's doubt
            self._used.clear()
        self._used[handle] = use

    def claim(self, handle: str, now: datetime) -> datetime | None:
        """None: the caller records it (at ``now``). Else when another request of this process did."""
        with self._lock:
            at = self._at.get(handle)
            if at is not None and timedelta(0) <= now - at < TOUCH_INTERVAL:
                return at
            if len(self._at) >= self.LIMIT:  # forgetting costs at most one more write each
                self._at.clear()
            self._at[handle] = now
            return None

    def release(self, handle: str) -> None:
        """The claimed write failed: the next request tries again."""
        with self._lock:
            self._at.pop(handle, None)


class SessionStore:
    """The sessions as a request sees them: created, found by cookie, kept alive, listed, ended."""

    def __init__(
        self,
        *,
        dbsession: Session | Callable[[], Session],
        cipher: TokenCipher,
        settings: SessionSettings,
        clock: Callable[[], datetime] = utcnow,
        own_transactions: Callable[[], Session] | None = None,
        read_row: Callable[[Select, dict], dict | None] | None = None,
        read_all: Callable[..., list] | None = None,
        recent_touches: RecentTouches | None = None,
    ):
        # A callable defers the ORM session until something needs it: the per-request lookup does not.
        self._dbsession = dbsession
        self.cipher = cipher
        self.settings = settings
        self.idle_after = idle_after(settings.idle_timeout)
        self.clock = clock
        self.own_transactions = own_transactions
        # The per-request lookup needs no ORM session (Database.read_row).
        self.read_row = read_row or (
            lambda statement, params: self.dbsession.execute(statement, params).mappings().one_or_none()
        )
        # What a page that writes nothing counts needs none either (Database.read_all).
        self.read_all = read_all or (lambda statement, params, **_: self.dbsession.execute(statement, params).all())
        # Shared by the process's requests (Services); None: every due touch writes.
        self.recent_touches = recent_touches

    @functools.cached_property
    def dbsession(self) -> Session:
        return self._dbsession() if callable(self._dbsession) else self._dbsession

    @functools.cached_property
    def rows(self) -> SessionRows:
        return SessionRows(self.dbsession, self.cipher, self.clock)

    def create(
        self,
        *,
        user: User,
        user_agent: str = "",
        ip_address: str = "",
        provider: str = "default",
        provider_sid: str | None = None,
        tokens: TokenSet = TokenSet(),
        sign_in: SignIn = SignIn(),
        browser_binding: str | None = None,
    ) -> tuple[str, SessionRecord]:
        """Start a session; return the raw id (for the cookie, never stored) and the session.
        ``browser_binding``: the hash of the login-binding cookie of the browser that signed in."""
        raw_id = secrets.token_urlsafe(32)
        now = self.clock()
        session_id = self.dbsession.execute(
            insert(UserSession.__table__).values(
                id_hash=hash_session_id(raw_id),
                handle=secrets.token_urlsafe(16),
                user_id=user.id,
                created_at=now,
                last_seen_at=now,
                expires_at=now + self.settings.absolute_timeout,
                user_agent=(user_agent or "")[:512],
                ip_address=(ip_address or "")[:64],
                provider=provider,
                provider_sid=provider_sid,
                acr=sign_in.acr,
                amr=json.dumps(list(sign_in.amr)) if sign_in.amr else None,
                auth_time=sign_in.auth_time,
                csrf_token=secrets.token_urlsafe(32),
                token_generation=0,
                browser_binding=browser_binding,
                **self.rows.token_columns(tokens),
            ).returning(_SESSIONS.id)
        ).scalar_one()
        row = self.dbsession.execute(_BY_ID, {"session_id": session_id}).mappings().one()
        record = SessionRecord.from_columns(row)
        if self.recent_touches is not None:  # signing in is its first use
            self.recent_touches.used(record.handle, LastUse(record.last_seen_at, record.last_seen_at, now))
        return raw_id, record

    def find(self, raw_id: str | None) -> SessionRecord | None:
        """The session named by a cookie value, live or not; None for garbage or an unknown id."""
        if not is_wellformed_session_id(raw_id):
            return None
        row = self.read_row(_BY_ID_HASH, {"id_hash": hash_session_id(raw_id)})
        return None if row is None else _record_of(row)

    def find_by_handle(self, handle: str) -> SessionRecord | None:
        # A NUL is in no handle, and PostgreSQL refuses it in text.
        if not handle or len(handle) > MAX_HANDLE_LENGTH or "\x00" in handle:
            return None
        row = self.dbsession.execute(_BY_HANDLE, {"handle": handle}).mappings().one_or_none()
        return None if row is None else SessionRecord.from_columns(row)

    def idle_at(self, session: SessionRecord, last: LastUse | None) -> datetime:
        """When ``session`` is idle: ``idle_timeout`` after its last use. ``last``: this process's
        last use of it (``RecentTouches.last_use``), looked at once by the caller for its whole
        check, since another thread may replace or forget it meanwhile.

        Uses within a minute of the recorded one are not written, so from the row alone that is a
        minute after the timeout (``idle_after``): never while in use, at most a minute late. When
        this process served its last use and the row is as that request left it, the timeout runs
        from that use, exactly. A row earlier than the one that request read was either set back
        since (an operator, a check) or read before a write that request saw: it is taken as it
        is here, and ``dead_reason`` reads the row again before ending the session on it. One
        written since by another process, whose later uses this one does not know, has the
        minute's doubt again.
        """
        recorded = session.last_seen_at
        if last is None or recorded > last.left:
            return recorded + self.idle_after
        if recorded < last.read:
            return recorded + self.settings.idle_timeout
        return (last.at if last.at > recorded else recorded) + self.settings.idle_timeout

    def idle_expires_at(self, session: SessionRecord) -> datetime:
        last = self.recent_touches.last_use(session.handle) if self.recent_touches is not None else None
        return min(self.idle_at(session, last), session.expires_at)

    def dead_reason(self, session: SessionRecord, *, read_again: bool = True) -> EndReason | str | None:
        """None while the session is live, else why it is not.

        A ``last_seen_at`` earlier than this process's last use of the session read is either a
        row set back, or a read from before a write that a later request of the session saw (a
        page's parallel calls: one writes, one read before, one after). Ending the session then
        would end one in use, so the row is read once more, and judged as it is now.
        """
        if session.ended_at is not None:
            # A reason this version does not know (written by a newer one) is passed on as it is.
            return session.end_reason or EndReason.LOGOUT
        if session.user_disabled:
            return EndReason.ACCOUNT_DISABLED  # first: the person cannot sign in again at all
        now = self.clock()
        if now >= session.expires_at:
            return EndReason.EXPIRED
        # One look at the last use for the whole check: another thread may replace or forget it.
        last = self.recent_touches.last_use(session.handle) if self.recent_touches is not None else None
        if now >= self.idle_at(session, last):
            if read_again and last is not None and session.last_seen_at < last.read:
                row = self.read_row(_BY_ID, {"session_id": session.id})
                if row is not None:
                    return self.dead_reason(SessionRecord.from_columns(row), read_again=False)
            return EndReason.IDLE
        return None

    def end_found_dead(self, session: SessionRecord, reason: EndReason) -> bool:
        """End ``session``, which :meth:`dead_reason` found idle or of a disabled account, unless
        that is no longer so: so that no process takes it for live again.

        - Idle, unless it was used since: a process that served its last use ends it exactly the
          timeout after that use, when one that knows only the row would serve it for up to a
          minute more (``idle_after``) and record that use, which brought it back here too
          (helper-129).
        - A disabled account's, unless the account was enabled again since: enabled within the
          minute before the revoker's sweep ended them, its sessions came back, one told it was
          signed out among them (helper-135).

        Its tokens are queued for revocation, as the sweep would queue them. Not at any cost: the
        request is answered as for a dead session either way, and the sweep ends the session in a
        minute. A row another transaction holds (a refresh of it, on PostgreSQL) is not waited
        for; SQLite's write lock is, up to its busy timeout (another session's refresh holds it
        while the provider answers: docs/configuration.md, ``myapp.lock.backend``), and a write
        refused then is logged, not the request's 503 (helper-133)."""
        if reason == EndReason.IDLE:
            still = UserSession.last_seen_at <= self.clock() - self.settings.idle_timeout
        elif reason == EndReason.ACCOUNT_DISABLED:
            still = UserSession.user_id.in_(select(User.id).where(User.disabled.is_(True)))
        else:
            return False
        condition = (UserSession.id == session.id) & still
        try:
            if self.own_transactions is None:
                return self.rows.end_where(condition, reason, skip_locked=True) == 1
            with self.own_transactions() as dbsession, dbsession.begin():
                rows = SessionRows(dbsession, self.cipher, self.clock)
                return rows.end_where(condition, reason, skip_locked=True) == 1
        except outage_errors() as e:
            log.warning("a session found %s was not ended now (the revoker's sweep will): %s", reason, describe_outage(e))
            return False

    def touch(self, session: SessionRecord) -> SessionRecord:
        """Record activity, at most once a minute so reads do not become writes; the session as it now is.

        With ``own_transactions`` the write commits on its own: the request's transaction then
        holds no lock on the row, which a token refresh later in the same request must lock.
        """
        now = self.clock()
        recent = self.recent_touches
        if now - session.last_seen_at < TOUCH_INTERVAL:
            if recent is not None:
                recent.used(session.handle, LastUse(session.last_seen_at, session.last_seen_at, now))
            return session
        if recent is not None:
            touched_at = recent.claim(session.handle, now)
            if touched_at is not None:  # another request of this process is recording it
                recent.used(session.handle, LastUse(session.last_seen_at, touched_at, now))
                return replace(session, last_seen_at=touched_at)
        # Only if no process wrote it in the last minute meanwhile: processes that read the same
        # minute-old time write it once between them (PostgreSQL re-checks the condition once the
        # first writer's row lock is released).
        statement = (
            update(UserSession)
            .where(UserSession.id == session.id, UserSession.last_seen_at <= now - TOUCH_INTERVAL)
            .values(last_seen_at=now)
        )
        try:
            if self.own_transactions is None:
                self.dbsession.execute(statement.execution_options(synchronize_session="fetch"))
            else:
                with self.own_transactions() as dbsession, dbsession.begin():
                    dbsession.execute(statement)
        except BaseException:
            if recent is not None:
                recent.release(session.handle)
            raise
        if recent is not None:
            # A request served while this write waited (on the row's lock) took its time: that
            # later use stays the last one.
            known = recent.last_use(session.handle)
            at = known.at if known is not None and known.left == now and known.at > now else now
            recent.used(session.handle, LastUse(session.last_seen_at, now, at))
        return replace(session, last_seen_at=now)

    def end(self, session: SessionRecord, reason: EndReason, *, revoke: bool = True) -> bool:
        return self.rows.end(session.id, reason, revoke=revoke)

    def end_all_for_user(self, user_id: int, reason: EndReason, *, except_id: int | None = None) -> int:
        condition = UserSession.user_id == user_id
        if except_id is not None:
            condition = condition & (UserSession.id != except_id)
        return self.rows.end_where(condition, reason)

    def end_all_others(self, session: SessionRecord, reason: EndReason = EndReason.ENDED_ELSEWHERE) -> int:
        return self.end_all_for_user(session.user_id, reason, except_id=session.id)

    def hold_sessions_of(self, session: SessionRecord) -> str | None:
        """Lock the live sessions of ``session``'s user, in the order of their ids, before one of
        them ends others; None while ``session`` is still among them, else why it ended.

        Two such actions from two of them that cross (two "Sign out everywhere else", or each
        ending the other from its list) each ended the other, and so every session the person had
        (helper-141). Now the second waits for the first's row locks, then finds its own session
        ended, and ends nothing. In id order, so that the two never wait for each other. SQLite has
        one writer, but a read outside a transaction (pysqlite begins one at the first write):
        there the write lock is taken first (a write that changes nothing), and the read made
        under it sees the first's commit (helper-145)."""
        if self.dbsession.get_bind().dialect.name == "sqlite":
            self.dbsession.execute(
                update(UserSession).where(UserSession.id == session.id).values(handle=UserSession.handle)
                .execution_options(synchronize_session=False)
            )
        live = self.dbsession.execute(
            select(UserSession.id)
            .where(UserSession.user_id == session.user_id, UserSession.ended_at.is_(None))
            .order_by(UserSession.id)
            .with_for_update()
        ).scalars().all()
        if session.id in live:
            return None
        reason = self.dbsession.scalar(select(UserSession.end_reason).where(UserSession.id == session.id))
        return reason or EndReason.LOGOUT

    def end_by_provider_sid(
        self, user_ids: Select, sid: str, reason: EndReason, *, unknown_sid_too: bool = False, ended: list | None = None
    ) -> int:
        """End the sessions with this provider ``sid`` of the users ``user_ids`` selects (those of one
        issuer); ``unknown_sid_too``: and theirs signed in without a sid. ``ended``: as ``end_where``."""
        matches = UserSession.provider_sid == stored_sid(sid)
        if unknown_sid_too:
            matches = matches | UserSession.provider_sid.is_(None)
        return self.rows.end_where(matches & UserSession.user_id.in_(user_ids), reason, ended=ended)

    def _live_params(self, **more) -> dict:
        now = self.clock()
        return {"now": now, "idle_since": now - self.idle_after, **more}

    def list_for_user(self, user_id: int) -> list[UserSession]:
        """A user's live sessions, most recently used first, for the sessions page."""
        return self.dbsession.scalars(_LIVE_OF_USER, self._live_params(user_id=user_id)).all()

    def count_live_for_user(self, user_id: int) -> int:
        """For a page that writes nothing before it (the dashboard): read outside the request's
        transaction, and on a SQLite file kept until the next commit or until one of the sessions
        counted stops being live (``Database.read_all``), whichever comes first."""
        params = self._live_params(user_id=user_id)
        return self.read_all(_LIVE_COUNT_OF_USER, params, as_of=params["now"], lasts=self.live_until)[0][0]

    def live_until(self, rows) -> datetime | None:
        """The first moment at which a count of ``_LIVE`` rows (``rows``: its one row, with
        ``_LIVE_ENDS``) is smaller with nothing written; None when it counted none."""
        (count, first_expiry, first_seen), = rows
        if not count:
            return None
        try:
            return min(first_expiry, first_seen + self.idle_after)
        except OverflowError:  # an idle timeout past the calendar's end
            return first_expiry

    def count_live(self) -> int:
        return self.dbsession.scalar(_LIVE_COUNT, self._live_params())

    def live_counts_by_user(self):
        """A subquery of (user_id, live) for the users that have live sessions."""
        return (
            select(UserSession.user_id, func.count().label("live"))
            .where(*_LIVE)
            .group_by(UserSession.user_id)
            .params(self._live_params())
            .subquery()
        )

    def purge_expired(self, *, retention: timedelta = timedelta(days=1)) -> int:
        """Delete rows that ended or expired more than ``retention`` ago."""
        cutoff = self.clock() - retention
        idle_cutoff = cutoff - self.idle_after
        result = self.dbsession.execute(
            UserSession.__table__.delete().where(
                (UserSession.ended_at < cutoff)
                | (UserSession.expires_at < cutoff)
                | (UserSession.last_seen_at < idle_cutoff)
            )
        )
        return result.rowcount

    def new_csrf_token(self, session: SessionRecord) -> str:
        token = secrets.token_urlsafe(32)
        self.dbsession.execute(
            update(UserSession)
            .where(UserSession.id == session.id)
            .values(csrf_token=token)
            .execution_options(synchronize_session="fetch")
        )
        return token
