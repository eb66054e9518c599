import contextlib
import hashlib
import itertools
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import event, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from myapp.models import TokenRevocation, User, UserSession
from myapp.services.sessions import (
    EndReason,
    LastUse,
    RecentTouches,
    SessionStore,
    UpstreamToken,
    hash_session_id,
    stored_sid,
)
from myapp.services.tokenset import TokenCipher, TokenSet
from myapp.settings import SessionSettings

SETTINGS = SessionSettings(
    cookie_name="__Host-session",
    cookie_secure=True,
    cookie_samesite="Lax",
    idle_timeout=timedelta(hours=1),
    absolute_timeout=timedelta(days=1),
)


class Clock:
    def __init__(self):
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self):
        return self.now

    def advance(self, **kw):
        self.now += timedelta(**kw)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def cipher():
    return TokenCipher([Fernet.generate_key().decode()])


@pytest.fixture
def store(dbsession, cipher, clock):
    return SessionStore(dbsession=dbsession, cipher=cipher, settings=SETTINGS, clock=clock)


@pytest.fixture
def user(dbsession):
    user = User(issuer="https://idp.example.test", subject="alice", name="Alice", groups=["staff"])
    dbsession.add(user)
    dbsession.flush()
    return user


def test_find_reads_the_session_and_its_user_as_plain_values(store, user):
    raw_id, created = store.create(user=user, provider_sid="sid-1")
    record = store.find(raw_id)
    assert record == created == store.find_by_handle(created.handle)
    assert (record.user_subject, record.user_name, record.user_groups) == ("alice", "Alice", ("staff",))
    assert record.provider_sid == "sid-1" and record.token_generation == 0
    with pytest.raises(AttributeError):
        record.user_id = 7


def test_a_user_without_a_name_is_called_by_email_then_subject(store, dbsession):
    nameless = User(issuer="https://idp.example.test", subject="s-1", name="", email="n@example.test", groups=[])
    dbsession.add(nameless)
    dbsession.flush()
    raw_id, created = store.create(user=nameless)
    assert store.find(raw_id).user_name == created.user_name == "n@example.test"
    nameless.email = None
    dbsession.flush()
    assert store.find(raw_id).user_name == "s-1"


def test_the_same_values_read_again_give_the_same_record_and_any_change_a_new_one(store, user, dbsession):
    raw_id, _ = store.create(user=user)
    first = store.find(raw_id)
    assert store.find(raw_id) is first, "made once from the same values"
    user.name = "Alice B"
    dbsession.flush()
    renamed = store.find(raw_id)
    assert renamed is not first and renamed.user_name == "Alice B"
    user.disabled = True
    dbsession.flush()
    assert store.find(raw_id).user_disabled and store.dead_reason(store.find(raw_id)) == EndReason.ACCOUNT_DISABLED
    user.name, user.disabled = "Alice", False
    dbsession.flush()
    assert store.find(raw_id) == first and store.dead_reason(store.find(raw_id)) is None


def test_remembered_records_are_bounded(store, user, monkeypatch):
    from myapp.services import sessions

    monkeypatch.setattr(sessions, "_RECORDS_LIMIT", 5)
    monkeypatch.setattr(sessions, "_RECORDS", {})
    made = [store.create(user=user) for _ in range(12)]
    for raw_id, created in made:
        assert store.find(raw_id) == created
        assert 0 < len(sessions._RECORDS) <= 5


def test_a_value_no_dict_can_hold_is_made_each_time(store, user):
    from myapp.services.sessions import _BY_ID_HASH, _record_of

    raw_id, created = store.create(user=user, tokens=TokenSet(access_token="at-1"))
    columns = dict(store.read_row(_BY_ID_HASH, {"id_hash": hash_session_id(raw_id)}))
    # A driver's buffer that can be written to (a read-only one is hashed by its bytes).
    columns["access_token"] = memoryview(bytearray(columns["access_token"]))
    first, second = _record_of(columns), _record_of(columns)
    assert first == second == store.find(raw_id) and first is not second
    assert type(first.access_token) is bytes


# psycopg gives a timestamptz in the connection's TimeZone (the server's, unless set). In the hour a
# zone's clocks go back, two instants an hour apart are then datetimes that differ only in ``fold``:
# equal, and hashed alike.
LONDON = ZoneInfo("Europe/London")
FALL_BACK = datetime(2026, 10, 25, 0, 30, tzinfo=timezone.utc)  # 01:30 BST, and an hour later 01:30 GMT


def test_a_record_is_remembered_by_its_instants_not_its_local_times(store, user, clock):
    from myapp.services.sessions import _BY_ID_HASH, _record_of

    clock.now = FALL_BACK - timedelta(minutes=20)
    raw_id, _ = store.create(user=user)
    columns = dict(store.read_row(_BY_ID_HASH, {"id_hash": hash_session_id(raw_id)}))
    summer, winter = FALL_BACK.astimezone(LONDON), (FALL_BACK + timedelta(hours=1)).astimezone(LONDON)
    assert summer == winter and hash(summer) == hash(winter) and (summer.fold, winter.fold) == (0, 1)
    assert _record_of({**columns, "last_seen_at": summer}).last_seen_at == FALL_BACK
    assert _record_of({**columns, "last_seen_at": winter}).last_seen_at == FALL_BACK + timedelta(hours=1)
    # Its end moved an hour earlier (01:30 GMT, then 01:30 BST): ended an hour sooner, not later.
    clock.now = FALL_BACK + timedelta(minutes=10)
    assert store.dead_reason(_record_of({**columns, "expires_at": winter})) is None
    shortened = _record_of({**columns, "expires_at": summer})
    assert shortened.expires_at == FALL_BACK and store.dead_reason(shortened) == EndReason.EXPIRED


def test_a_session_read_in_a_zone_whose_clocks_go_back_is_its_rows_instants(store, user, connection, clock):
    """The lookup as ``Database.read_row`` makes it (the driver's own values), on PostgreSQL in
    Europe/London: a session used at 01:30 BST and at 01:30 GMT is not idle two minutes later."""
    if connection.dialect.name != "postgresql":
        pytest.skip("SQLite keeps datetimes as text, without a zone")
    connection.exec_driver_sql("SET LOCAL TIME ZONE 'Europe/London'")

    def read_row(statement, params):
        compiled = statement.compile(dialect=connection.dialect)
        return connection.exec_driver_sql(str(compiled), compiled.construct_params(params)).mappings().one_or_none()

    store.read_row = read_row
    clock.now = FALL_BACK
    raw_id, _ = store.create(user=user)
    assert store.find(raw_id).last_seen_at == FALL_BACK
    clock.advance(hours=1)
    assert store.dead_reason(store.find(raw_id)) is None
    store.touch(store.find(raw_id))
    clock.advance(minutes=2)
    session = store.find(raw_id)
    assert session.last_seen_at == FALL_BACK + timedelta(hours=1)
    assert store.dead_reason(session) is None

def test_create_returns_raw_id_once_and_stores_only_its_hash(store, user, dbsession):
    raw_id, row = store.create(user=user, user_agent="UA", ip_address="192.0.2.1")
    assert len(raw_id) == 43
    stored = dbsession.execute(select(UserSession.__table__)).mappings().one()
    assert stored["id_hash"] == hashlib.sha256(raw_id.encode()).hexdigest()
    assert raw_id not in {str(v) for v in stored.values()}
    assert stored["handle"] == row.handle and stored["handle"] not in (raw_id, stored["id_hash"])
    assert (stored["user_agent"], stored["ip_address"]) == ("UA", "192.0.2.1")
    assert store.find(raw_id).id == row.id


def test_ids_are_unique_and_random(store, user):
    ids = {store.create(user=user)[0] for _ in range(20)}
    assert len(ids) == 20


@pytest.mark.parametrize(
    "cookie", [None, "", "x", "a" * 42, "a" * 44, "a" * 10_000, "é" * 43, "' OR 1=1 --" + "a" * 32, "a" * 42 + "="]
)
def test_garbage_is_no_session(store, user, cookie):
    store.create(user=user)
    assert store.find(cookie) is None


def test_unknown_well_formed_id(store):
    assert store.find("A" * 43) is None


def test_tokens_are_encrypted_at_rest(store, user, dbsession, cipher):
    tokens = TokenSet(access_token="at-123", refresh_token="rt-456", id_token="idt-789")
    _, row = store.create(user=user, tokens=tokens)
    stored = dbsession.execute(select(UserSession.__table__)).mappings().one()
    for column, plaintext in [("access_token", "at-123"), ("refresh_token", "rt-456"), ("id_token", "idt-789")]:
        assert plaintext.encode() not in bytes(stored[column])
    assert store.rows.read(row.id).tokens == tokens


def test_key_rotation_old_key_still_decrypts(dbsession, user, clock):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    old_store = SessionStore(dbsession=dbsession, cipher=TokenCipher([old]), settings=SETTINGS, clock=clock)
    _, row = old_store.create(user=user, tokens=TokenSet(access_token="at"))
    rotated = SessionStore(dbsession=dbsession, cipher=TokenCipher([new, old]), settings=SETTINGS, clock=clock)
    assert rotated.rows.read(row.id).tokens.access_token == "at"
    retired = SessionStore(dbsession=dbsession, cipher=TokenCipher([new]), settings=SETTINGS, clock=clock)
    assert retired.rows.read(row.id).tokens.access_token is None


def test_live_session_has_no_dead_reason(store, user):
    _, row = store.create(user=user)
    assert store.dead_reason(row) is None


def test_idle_timeout(store, user, clock):
    """Idle once unused for the timeout after the minute in which a use is not recorded."""
    raw_id, row = store.create(user=user)
    clock.advance(minutes=60, seconds=59)
    assert store.dead_reason(store.find(raw_id)) is None
    clock.advance(seconds=1)
    assert store.dead_reason(store.find(raw_id)) == EndReason.IDLE


def test_a_use_that_is_not_written_still_keeps_the_session(dbsession, cipher, clock, user):
    """At the shortest idle timeout, a minute, a session used every 20 s stays live, though at
    most one use a minute is written; it ends a timeout after its last use, or within a minute
    more. It used to end a minute after each write, however busy."""
    store = SessionStore(
        dbsession=dbsession, cipher=cipher, settings=replace(SETTINGS, idle_timeout=timedelta(minutes=1)), clock=clock
    )
    raw_id, _ = store.create(user=user)
    written = []
    for _ in range(12):
        clock.advance(seconds=20)
        session = store.find(raw_id)
        assert store.dead_reason(session) is None
        if store.touch(session) is not session:
            written.append(clock.now)
    assert [b - a for a, b in itertools.pairwise(written)] == [timedelta(minutes=1)] * 3
    clock.advance(seconds=20)  # a use, not written: it was written 20 s ago
    last_use = clock.now
    assert store.touch(store.find(raw_id)).last_seen_at == written[-1]
    assert store.idle_expires_at(store.find(raw_id)) == written[-1] + timedelta(minutes=2)
    clock.advance(seconds=59)
    assert store.dead_reason(store.find(raw_id)) is None  # a timeout after its last use: not yet
    clock.now = written[-1] + timedelta(minutes=2)
    assert timedelta(minutes=1) <= clock.now - last_use <= timedelta(minutes=2)
    assert store.dead_reason(store.find(raw_id)) == EndReason.IDLE


def test_activity_keeps_it_alive_until_absolute_expiry(store, user, clock):
    raw_id, row = store.create(user=user)
    for _ in range(23):
        clock.advance(minutes=59)
        store.touch(store.find(raw_id))
        clock.advance(minutes=1)
        assert store.dead_reason(store.find(raw_id)) is None
        store.touch(store.find(raw_id))
    clock.advance(hours=1)
    assert store.dead_reason(store.find(raw_id)) == EndReason.EXPIRED


def test_idle_expiry_never_later_than_absolute(store, user, clock):
    _, row = store.create(user=user)
    clock.advance(hours=23, minutes=30)
    assert store.idle_expires_at(store.touch(row)) == row.expires_at


def test_touch_at_most_once_a_minute(store, user, clock):
    raw_id, row = store.create(user=user)
    first = row.last_seen_at
    clock.advance(seconds=30)
    assert store.touch(row) is row
    assert store.find(raw_id).last_seen_at == first
    clock.advance(seconds=31)
    assert store.touch(row).last_seen_at == clock.now
    assert store.find(raw_id).last_seen_at == clock.now


def test_disabled_user(store, user, dbsession):
    raw_id, _ = store.create(user=user)
    user.disabled = True
    dbsession.flush()
    assert store.dead_reason(store.find(raw_id)) == EndReason.ACCOUNT_DISABLED


def test_end_wipes_tokens_and_keeps_reason(store, user):
    raw_id, row = store.create(user=user, tokens=TokenSet(access_token="a", refresh_token="r", id_token="i"))
    assert store.end(row, EndReason.REVOKED)
    assert store.dead_reason(store.find(raw_id)) == EndReason.REVOKED
    assert store.rows.read(row.id).tokens == TokenSet(access_token=None, refresh_token=None, id_token=None)
    stored = dbsession_columns(store, row)
    assert (stored["access_token"], stored["refresh_token"], stored["id_token"]) == (None, None, None)


def queued(dbsession, cipher) -> list[tuple[str, str]]:
    rows = dbsession.execute(select(TokenRevocation.token, TokenRevocation.token_type_hint).order_by(TokenRevocation.id))
    return [(cipher.decrypt(bytes(token)), hint) for token, hint in rows]


@pytest.mark.parametrize(
    "revoke, revoke_exchanged, expected",
    [
        (True, None, [("r", "refresh_token"), ("swap-at", "access_token"), ("swap2-rt", "refresh_token")]),
        # A person's own sign-out revokes the session's tokens itself, at once: the rest is queued.
        (False, True, [("swap-at", "access_token"), ("swap2-rt", "refresh_token")]),
        # Made in the same session at the provider as a session that goes on: nothing, as before.
        (False, None, []),
    ],
)
def test_ending_a_session_queues_its_exchanged_upstream_tokens(store, user, dbsession, cipher, clock, revoke,
                                                                 revoke_exchanged, expected):
    _, row = store.create(user=user, tokens=TokenSet(access_token="a", refresh_token="r"))
    now, later = clock(), clock() + timedelta(minutes=5)
    rows = store.rows
    assert rows.write_upstream_token(row.id, "graph", UpstreamToken("graph-at", later, now))  # of the refresh token
    assert rows.write_upstream_token(row.id, "swap", UpstreamToken("swap-at", later, now, exchanged=True))
    assert rows.write_upstream_token(row.id, "swap2", UpstreamToken("swap2-at", now, now, exchanged=True),
                                     refresh_token="swap2-rt")
    # Expired already (at the sweep's end of an idle session, say): dead at the provider, not sent there.
    assert rows.write_upstream_token(row.id, "swap3", UpstreamToken("swap3-at", now, now, exchanged=True))
    assert rows.end(row.id, EndReason.REVOKED, revoke=revoke, revoke_exchanged=revoke_exchanged)
    assert queued(dbsession, cipher) == expected
    assert all(b"-at" not in bytes(token) and b"-rt" not in bytes(token) for token in dbsession.scalars(
        select(TokenRevocation.token)))
    assert rows.upstream_token(row.id, "swap") is None


def test_end_twice_keeps_the_first_reason(store, user):
    raw_id, row = store.create(user=user)
    assert store.end(row, EndReason.LOGOUT)
    assert not store.end(row, EndReason.REVOKED)
    assert store.find(raw_id).end_reason == EndReason.LOGOUT


def test_end_all_for_user_and_others(store, user, dbsession):
    other = User(issuer="https://idp.example.test", subject="bob", name="Bob", groups=[])
    dbsession.add(other)
    dbsession.flush()
    _, mine1 = store.create(user=user)
    _, mine2 = store.create(user=user)
    _, mine3 = store.create(user=user)
    _, theirs = store.create(user=other)
    assert store.end_all_others(mine1) == 2
    assert [s.id for s in store.list_for_user(user.id)] == [mine1.id]
    assert store.dead_reason(store.find_by_handle(mine2.handle)) == EndReason.ENDED_ELSEWHERE
    assert store.end_all_for_user(user.id, EndReason.REVOKED_BY_ADMIN) == 1
    assert store.list_for_user(user.id) == []
    assert store.dead_reason(store.find_by_handle(theirs.handle)) is None


def test_list_for_user_excludes_dead_sessions(store, user, clock):
    _, old = store.create(user=user)
    clock.advance(minutes=61)
    _, new = store.create(user=user)
    assert [s.id for s in store.list_for_user(user.id)] == [new.id]


def test_end_by_provider_sid(store, user):
    _, a = store.create(user=user, provider_sid="sid-1")
    _, b = store.create(user=user, provider_sid="sid-2")
    assert store.end_by_provider_sid(select(User.id).where(User.id == user.id), "sid-1", EndReason.BACKCHANNEL) == 1
    assert store.dead_reason(store.find_by_handle(a.handle)) == EndReason.BACKCHANNEL
    assert store.dead_reason(store.find_by_handle(b.handle)) is None
    assert store.end_by_provider_sid(select(User.id), "sid-2", EndReason.BACKCHANNEL) == 1


def test_purge_expired(store, user, clock, dbsession):
    _, ended = store.create(user=user)
    store.end(ended, EndReason.LOGOUT)
    _, live = store.create(user=user)
    clock.advance(days=1, minutes=1)
    store.touch(live)
    assert store.purge_expired(retention=timedelta(hours=1)) == 1
    remaining = dbsession.scalars(select(UserSession.id)).all()
    assert remaining == [live.id]


def test_find_by_handle(store, user):
    _, row = store.create(user=user)
    assert store.find_by_handle(row.handle).id == row.id
    assert store.find_by_handle("") is None
    assert store.find_by_handle("x" * 500) is None


def test_new_csrf_token(store, user):
    _, row = store.create(user=user)
    old = row.csrf_token
    assert store.new_csrf_token(row) != old


def test_live_counts(store, user, dbsession, clock):
    other = User(issuer="https://idp.example.test", subject="bob", name="Bob", groups=[])
    dbsession.add(other)
    dbsession.flush()
    _, ended = store.create(user=user)
    store.end(ended, EndReason.LOGOUT)
    store.create(user=user)
    store.create(user=user)
    _, idle = store.create(user=other)
    clock.advance(minutes=30)
    store.create(user=other)
    assert store.count_live() == 4
    clock.advance(minutes=31)  # the first three are idle now
    assert store.count_live() == 1
    live = store.live_counts_by_user()
    assert dict(dbsession.execute(select(live.c.user_id, live.c.live)).all()) == {other.id: 1}


def dbsession_columns(store, record) -> dict:
    return store.dbsession.execute(select(UserSession.__table__).where(UserSession.id == record.id)).mappings().one()


def test_hash_is_sha256_hex():
    assert hash_session_id("abc") == hashlib.sha256(b"abc").hexdigest()


def test_requests_of_one_session_arriving_together_record_activity_once(dbsession, cipher, clock, user):
    """A page's parallel API calls all read a minute-old last_seen_at: one of them writes it."""
    touches = RecentTouches()
    stores = [
        SessionStore(dbsession=dbsession, cipher=cipher, settings=SETTINGS, clock=clock, recent_touches=touches)
        for _ in range(3)
    ]
    raw_id, row = stores[0].create(user=user)
    clock.advance(minutes=2)
    stale = stores[0].find(raw_id)
    writes = []
    with count_updates(dbsession, writes):
        seen = [store.touch(stale).last_seen_at for store in stores]
    assert len(writes) == 1
    assert seen == [clock.now] * 3 and stores[0].find(raw_id).last_seen_at == clock.now
    clock.advance(minutes=1, seconds=1)  # a minute later the next request records it again
    with count_updates(dbsession, writes):
        stores[1].touch(stores[1].find(raw_id))
    assert len(writes) == 2


def test_processes_that_read_the_same_old_time_record_activity_once(dbsession, cipher, clock, user):
    """Two processes (each with its own RecentTouches) read a minute-old last_seen_at at the same
    moment: the first writes it, the second finds it written and leaves it (SPEC: at most once a minute)."""
    first, second = (
        SessionStore(dbsession=dbsession, cipher=cipher, settings=SETTINGS, clock=clock, recent_touches=RecentTouches())
        for _ in range(2)
    )
    raw_id, _ = first.create(user=user)
    clock.advance(minutes=2)
    stale = first.find(raw_id)
    first.touch(stale)
    written = clock.now
    clock.advance(seconds=1)
    second.touch(stale)
    assert first.find(raw_id).last_seen_at == written
    clock.advance(minutes=1)
    second.touch(second.find(raw_id))
    assert first.find(raw_id).last_seen_at == clock.now


def test_a_failed_touch_is_tried_again_by_the_next_request(dbsession, cipher, clock, user):
    touches = RecentTouches()
    store = SessionStore(dbsession=dbsession, cipher=cipher, settings=SETTINGS, clock=clock, recent_touches=touches)
    raw_id, _ = store.create(user=user)
    clock.advance(minutes=2)
    stale = store.find(raw_id)

    def broken():
        raise OSError("the database went away")

    failing = SessionStore(
        dbsession=dbsession, cipher=cipher, settings=SETTINGS, clock=clock, recent_touches=touches,
        own_transactions=broken,
    )
    with pytest.raises(OSError):
        failing.touch(stale)
    assert store.touch(stale).last_seen_at == clock.now
    assert store.find(raw_id).last_seen_at == clock.now


def test_recent_touches_stay_bounded(clock):
    touches = RecentTouches()
    touches.LIMIT = 4
    for n in range(10):
        assert touches.claim(f"handle-{n}", clock.now) is None
    assert len(touches._at) <= 4
    assert touches.claim("handle-9", clock.now) == clock.now  # the newest is still remembered


@contextlib.contextmanager
def count_updates(dbsession, writes):
    def before(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE SESSIONS"):
            writes.append(statement)

    engine = dbsession.get_bind()
    event.listen(engine, "before_cursor_execute", before)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", before)


def test_a_sid_is_kept_as_it_is_up_to_its_columns_length_and_as_a_digest_beyond():
    assert stored_sid("s" * 255) == "s" * 255
    longer = stored_sid("s" * 256)
    assert longer.startswith("sha256:") and len(longer) <= 255
    assert longer == stored_sid("s" * 256) != stored_sid("s" * 255 + "t")
    assert stored_sid("") is None and stored_sid(None) is None and stored_sid(7) is None


def minute_timeout_store(dbsession, cipher, clock, touches=None):
    return SessionStore(
        dbsession=dbsession, cipher=cipher, settings=replace(SETTINGS, idle_timeout=timedelta(minutes=1)), clock=clock,
        recent_touches=RecentTouches() if touches is None else touches,
    )


def assert_idle_a_minute_from_now(store, raw_id, clock):
    """Live 59 s from now, idle at 60 s: the shortest idle timeout run exactly from now."""
    clock.advance(seconds=59)
    assert store.dead_reason(store.find(raw_id)) is None
    clock.advance(seconds=1)
    assert store.dead_reason(store.find(raw_id)) == EndReason.IDLE


def test_a_session_unused_here_is_idle_a_timeout_after_its_last_use(dbsession, cipher, clock, user):
    """At the shortest idle timeout, a minute: signed in and never used again, a session is idle a
    minute later, not two; used 30 s after, a minute after that use. The process served both."""
    store = minute_timeout_store(dbsession, cipher, clock)
    raw_id, _ = store.create(user=user)
    assert_idle_a_minute_from_now(store, raw_id, clock)

    raw_id, _ = store.create(user=user)
    clock.advance(seconds=30)
    used = store.touch(store.find(raw_id))
    assert store.idle_expires_at(used) == clock.now + timedelta(minutes=1)
    assert_idle_a_minute_from_now(store, raw_id, clock)


def test_a_session_used_every_20_s_here_stays_live_and_ends_a_timeout_after_its_last_use(dbsession, cipher, clock, user):
    store = minute_timeout_store(dbsession, cipher, clock)
    raw_id, _ = store.create(user=user)
    for _ in range(13):
        clock.advance(seconds=20)
        session = store.find(raw_id)
        assert store.dead_reason(session) is None
        store.touch(session)
    last_use = clock.now
    assert store.find(raw_id).last_seen_at < last_use  # that use was not written
    clock.now = last_use + timedelta(seconds=59)
    assert store.dead_reason(store.find(raw_id)) is None
    clock.now = last_use + timedelta(minutes=1)
    assert store.dead_reason(store.find(raw_id)) == EndReason.IDLE


def test_a_process_that_did_not_serve_the_last_use_allows_the_minute(dbsession, cipher, clock, user):
    """Another process (or this one restarted) does not know of uses that were not written: from
    the row alone the session is idle a minute after the timeout, never while it may be in use."""
    here = minute_timeout_store(dbsession, cipher, clock)
    raw_id, _ = here.create(user=user)
    clock.advance(seconds=50)
    here.touch(here.find(raw_id))  # not written: within the minute
    elsewhere = minute_timeout_store(dbsession, cipher, clock)
    clock.advance(seconds=69)
    assert elsewhere.dead_reason(elsewhere.find(raw_id)) is None
    assert elsewhere.idle_expires_at(elsewhere.find(raw_id)) == clock.now + timedelta(seconds=1)
    clock.advance(seconds=1)
    assert elsewhere.dead_reason(elsewhere.find(raw_id)) == EndReason.IDLE


def test_a_session_found_idle_here_is_ended_for_every_process(dbsession, cipher, clock, user):
    """Idle here exactly a timeout after the use this process served, where another process allows
    the minute: ended here, so that the other does not serve it, record a use and bring it back for
    this one too (helper-129). Its refresh token is queued for revocation, as the sweep's are."""
    here = minute_timeout_store(dbsession, cipher, clock)
    raw_id, _ = here.create(user=user, tokens=TokenSet(access_token="at", refresh_token="rt"))
    clock.advance(seconds=30)
    here.touch(here.find(raw_id))  # not written: within the minute
    clock.advance(seconds=60)
    found = here.find(raw_id)
    assert here.dead_reason(found) == EndReason.IDLE
    elsewhere = minute_timeout_store(dbsession, cipher, clock)
    assert elsewhere.dead_reason(elsewhere.find(raw_id)) is None  # the minute's doubt
    assert here.end_found_dead(found, EndReason.IDLE) is True
    assert elsewhere.dead_reason(elsewhere.find(raw_id)) == EndReason.IDLE
    assert [r.token_type_hint for r in dbsession.scalars(select(TokenRevocation))] == ["refresh_token"]
    assert here.end_found_dead(found, EndReason.IDLE) is False  # once


def test_a_session_used_since_it_was_found_idle_is_not_ended(dbsession, cipher, clock, user):
    """Found idle here, then used on another process before it was ended: that use was recorded,
    within the timeout, and the session stays live."""
    here = minute_timeout_store(dbsession, cipher, clock)
    raw_id, _ = here.create(user=user)
    clock.advance(seconds=30)
    here.touch(here.find(raw_id))
    clock.advance(seconds=60)
    found = here.find(raw_id)
    assert here.dead_reason(found) == EndReason.IDLE
    elsewhere = minute_timeout_store(dbsession, cipher, clock)
    elsewhere.touch(elsewhere.find(raw_id))  # written: a minute and a half after the last write
    assert here.end_found_dead(found, EndReason.IDLE) is False
    assert elsewhere.dead_reason(elsewhere.find(raw_id)) is None


def test_a_session_found_idle_is_not_ended_when_the_database_will_not_take_the_write(dbsession, cipher, clock, user, caplog):
    """Ending it is for the other processes: the request is answered as for an idle session either
    way. SQLite's write lock held past its busy timeout was the request's 503 after 30 s
    (helper-133); it is logged, and the revoker's sweep ends the session a minute later."""

    def refusing():
        raise OperationalError("BEGIN IMMEDIATE", {}, Exception("database is locked"))

    here = SessionStore(dbsession=dbsession, cipher=cipher, settings=replace(SETTINGS, idle_timeout=timedelta(minutes=1)),
                        clock=clock, recent_touches=RecentTouches(), own_transactions=refusing)
    raw_id, _ = here.create(user=user)
    clock.advance(seconds=61)
    found = here.find(raw_id)
    assert here.dead_reason(found) == EndReason.IDLE
    assert here.end_found_dead(found, EndReason.IDLE) is False
    assert "a session found idle was not ended now (the revoker's sweep will): " in caplog.text
    assert here.find(raw_id).ended_at is None


def test_a_session_found_idle_whose_row_a_refresh_holds_is_not_waited_for(committed, committed_engine, cipher, clock):
    """On PostgreSQL a refresh of the session holds its row (FOR UPDATE) while the provider answers:
    the idle request does not wait for it (SKIP LOCKED); once it is let go, the session is ended."""
    if committed_engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no row locks: its write lock is the busy timeout's (the test above)")
    person = User(issuer="https://idp.example.test", subject="alice", name="Alice", groups=[])
    committed.add(person)
    committed.commit()
    here = SessionStore(dbsession=committed, cipher=cipher, settings=replace(SETTINGS, idle_timeout=timedelta(minutes=1)),
                        clock=clock, own_transactions=lambda: Session(bind=committed_engine))
    raw_id, row = here.create(user=person)
    committed.commit()
    clock.advance(seconds=121)
    found = here.find(raw_id)
    assert here.dead_reason(found) == EndReason.IDLE
    with committed_engine.connect() as refresh:
        refresh.execute(select(UserSession.id).where(UserSession.id == row.id).with_for_update())
        started = time.monotonic()
        assert here.end_found_dead(found, EndReason.IDLE) is False
        assert time.monotonic() - started < 5
        refresh.rollback()
    assert here.end_found_dead(found, EndReason.IDLE) is True
    committed.expire_all()
    assert here.find(raw_id).ended_at is not None


def test_a_row_written_by_another_process_since_allows_the_minute(dbsession, cipher, clock, user):
    """This process served a use, then another process wrote a later one: that process's uses
    after its write are unknown here, so the minute's doubt is back."""
    here = minute_timeout_store(dbsession, cipher, clock)
    raw_id, _ = here.create(user=user)
    clock.advance(seconds=10)
    here.touch(here.find(raw_id))
    elsewhere = minute_timeout_store(dbsession, cipher, clock)
    clock.advance(seconds=60)
    written = elsewhere.touch(elsewhere.find(raw_id)).last_seen_at
    assert written == clock.now
    clock.now = written + timedelta(seconds=119)
    assert here.dead_reason(here.find(raw_id)) is None
    clock.now = written + timedelta(minutes=2)
    assert here.dead_reason(here.find(raw_id)) == EndReason.IDLE


def test_a_row_set_back_is_taken_as_it_is(dbsession, cipher, clock, user):
    """A last_seen_at earlier than the one this process last read was set back (an operator ending
    a session as idle, or a check): idle by the row, at once, whatever this process saw."""
    store = minute_timeout_store(dbsession, cipher, clock)
    raw_id, row = store.create(user=user)
    clock.advance(seconds=30)
    store.touch(store.find(raw_id))
    dbsession.execute(
        update(UserSession).where(UserSession.id == row.id).values(last_seen_at=clock.now - timedelta(seconds=61))
    )
    assert store.dead_reason(store.find(raw_id)) == EndReason.IDLE


def test_a_read_from_before_this_process_wrote_is_not_idle(dbsession, cipher, clock, user):
    """Two requests at once: one writes the session's use, the other read the row just before.
    The older time it read is the one the writer replaced, not a row set back."""
    store = minute_timeout_store(dbsession, cipher, clock)
    raw_id, _ = store.create(user=user)
    clock.advance(seconds=50)
    store.touch(store.find(raw_id))
    clock.advance(seconds=15)
    stale = store.find(raw_id)  # the first request's read
    assert store.touch(store.find(raw_id)).last_seen_at == clock.now  # the second request writes
    assert store.dead_reason(stale) is None  # the first, checked now: its use 15 s ago counts
    assert stale.last_seen_at + timedelta(minutes=1) <= clock.now


def test_last_uses_stay_bounded(clock):
    touches = RecentTouches()
    touches.LIMIT = 4
    for n in range(10):
        touches.used(f"handle-{n}", LastUse(clock.now, clock.now, clock.now))
    assert len(touches._used) <= 4
    assert touches.last_use("handle-9") is not None and touches.last_use("handle-0") is None


def a_read_before_the_write(store, user, clock):
    """A session signed in and used 50 s later (not written: within the minute), then read by a
    request 15 s after that, when its last_seen_at is a minute old and the next use writes it:
    (raw_id, that read)."""
    raw_id, _ = store.create(user=user)
    clock.advance(seconds=50)
    store.touch(store.find(raw_id))
    clock.advance(seconds=15)
    return raw_id, store.find(raw_id)


def test_a_read_from_before_a_write_checked_after_a_later_use_is_not_idle(dbsession, cipher, clock, user):
    """Three requests of a page at once, once last_seen_at is a minute old: two read the old time,
    one of them writes the use, and the third, read after that write, is served before the other
    reader is checked. That reader's old time is the one the write replaced, not a row set back:
    the session was used just now, so it is live. The same when the write was another process's."""
    store = minute_timeout_store(dbsession, cipher, clock)
    raw_id, stale = a_read_before_the_write(store, user, clock)  # the second request's
    assert store.touch(store.find(raw_id)).last_seen_at == clock.now  # the first request writes
    store.touch(store.find(raw_id))  # the third, read after the write
    assert store.dead_reason(stale) is None
    assert store.dead_reason(store.touch(stale)) is None

    here = minute_timeout_store(dbsession, cipher, clock)
    raw_id, stale = a_read_before_the_write(here, user, clock)
    elsewhere = minute_timeout_store(dbsession, cipher, clock)
    assert elsewhere.touch(elsewhere.find(raw_id)).last_seen_at == clock.now  # another process writes
    here.touch(here.find(raw_id))  # a request here, read after that write
    assert here.dead_reason(stale) is None


def test_a_use_that_wrote_or_took_another_requests_write_is_the_last_use(dbsession, cipher, clock, user):
    """The last use is remembered whichever way a request records it. One that wrote last_seen_at:
    idle a timeout after it, not a minute more. One that took the time another request of this
    process is writing (that write still under way, then failed): its own use counts, not the
    one before."""
    store = minute_timeout_store(dbsession, cipher, clock)
    raw_id, _ = store.create(user=user)
    clock.advance(seconds=60)
    written = store.touch(store.find(raw_id))
    assert written.last_seen_at == clock.now == store.find(raw_id).last_seen_at
    assert store.idle_expires_at(written) == clock.now + timedelta(minutes=1)
    assert_idle_a_minute_from_now(store, raw_id, clock)

    raw_id, created = store.create(user=user)
    clock.advance(seconds=60)
    assert store.recent_touches.claim(created.handle, clock.now) is None  # a request is writing it
    clock.advance(seconds=20)
    taken = store.touch(store.find(raw_id))  # read before that write: takes its time
    assert store.find(raw_id).last_seen_at == created.last_seen_at < taken.last_seen_at
    store.recent_touches.release(created.handle)  # that write failed
    assert_idle_a_minute_from_now(store, raw_id, clock)


def test_a_read_from_before_a_write_is_not_idle_while_the_last_uses_are_forgotten(dbsession, cipher, clock, user):
    """As above, with the last uses forgotten (RecentTouches.LIMIT reached, another thread's
    clear()) in the middle of the check: the check goes by one look at the last use, and a stale
    read is read again even when the last use is gone by the time it is ended."""
    store = minute_timeout_store(dbsession, cipher, clock)
    raw_id, stale = a_read_before_the_write(store, user, clock)
    store.touch(store.find(raw_id))  # writes
    store.touch(store.find(raw_id))  # read after the write
    touches = store.recent_touches

    def last_use_then_forget(handle):
        found = touches._used.get(handle)
        touches._used.clear()
        return found

    touches.last_use = last_use_then_forget
    assert store.dead_reason(stale) is None


def test_a_use_served_while_this_process_waited_to_write_is_not_forgotten_by_that_write(
    dbsession, cipher, clock, user
):
    """The request that writes last_seen_at may wait on the row's lock (another process refreshing
    the session's tokens holds it while the provider answers). A request of the same session served
    meanwhile takes the time being written; when the write lands, that later use is still the last
    one: the session is idle a timeout after it, not after the write's start."""
    touches = RecentTouches()
    served = []

    class WaitingWrite:
        def begin(self):
            return contextlib.nullcontext()

        def execute(self, statement):
            clock.advance(seconds=20)  # the lock is held meanwhile; a request arrives
            served.append(store.touch(store.find(raw_id)))
            return dbsession.execute(statement)

    store = SessionStore(
        dbsession=dbsession, cipher=cipher, settings=replace(SETTINGS, idle_timeout=timedelta(minutes=1)), clock=clock,
        recent_touches=touches, own_transactions=lambda: contextlib.nullcontext(WaitingWrite()),
    )
    raw_id, _ = store.create(user=user)
    clock.advance(seconds=60)
    written_at = clock.now
    store.touch(store.find(raw_id))
    assert served[0].last_seen_at == written_at == store.find(raw_id).last_seen_at
    last_use = written_at + timedelta(seconds=20)
    clock.now = last_use + timedelta(seconds=59)
    assert store.dead_reason(store.find(raw_id)) is None
    clock.now = last_use + timedelta(minutes=1)
    assert store.dead_reason(store.find(raw_id)) == EndReason.IDLE
