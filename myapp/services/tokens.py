"""A valid access token for a session, refreshed at most once at a time across every process.

Within a process, concurrent callers for one session share one refresh (:class:`SingleFlight`).
Across processes, the refresh runs under a lock: the session row ``SELECT ... FOR UPDATE`` on
PostgreSQL, SQLite's write lock (``BEGIN IMMEDIATE``), or a Redis lock, each around a short
transaction of its own. Under the lock the session is read again, so a worker that waited uses
the tokens another one just stored instead of asking the provider again; what it learns is written
through :class:`SessionRows`, the one writer of a session's tokens and end.
"""

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta

import redis
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from myapp.models import UserSession
from myapp.models.meta import utcnow
from myapp.services.audit import AuditEventType, AuditLog
from myapp.services.metrics import Metrics, failure_reason
from myapp.services.oidc import OIDCClient, OIDCError, ProviderUnavailable, TokenRequestRefused
from myapp.services.sessions import EndReason, SessionRecord, SessionRows
from myapp.services.tokenset import TokenCipher, TokenSet
from myapp.settings import TokenSettings

log = logging.getLogger(__name__)

RECENT_REFRESH = timedelta(seconds=30)
PLAINTEXT_CACHE_SIZE = 1024
_UNVERIFIED = "unverified"


class LoginRequired(Exception):
    """The session has ended or can no longer be refreshed: the user must sign in again."""


class RefreshLockTimeout(ProviderUnavailable):
    def __init__(self):
        super().__init__("Another refresh of this session is taking too long.")


class SingleFlight:
    """One call per key at a time in this process; callers that arrive meanwhile share its result."""

    class _Call:
        def __init__(self):
            self.done = threading.Event()
            self.result = None
            self.error: BaseException | None = None

    def __init__(self):
        self._lock = threading.Lock()
        self._calls: dict = {}

    def run(self, key, function: Callable):
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if leader:
                call = self._calls[key] = self._Call()
        if not leader:
            call.done.wait()
            if call.error is not None:
                raise call.error
            return call.result
        try:
            call.result = function()
            return call.result
        except BaseException as e:
            call.error = e
            raise
        finally:
            with self._lock:
                del self._calls[key]
            call.done.set()


class DatabaseRefreshLock:
    """The session row, locked in a short transaction of its own (never the request's)."""

    def __init__(self, transactions: Callable[[], Session], *, timeout: float):
        self.transactions = transactions
        self.timeout = timeout

    @contextlib.contextmanager
    def locked(self, session_id: int) -> Iterator[Session]:
        """A transaction holding the lock on ``session_id``, committed when the block ends."""
        with self.transactions() as dbsession:
            try:
                with dbsession.begin():
                    if dbsession.get_bind().dialect.name == "postgresql":
                        # Wait for another process's refresh, but not forever.
                        dbsession.execute(text(f"SET LOCAL lock_timeout = '{int(self.timeout * 1000)}ms'"))
                    # The session row only (never its user's): the reads that follow, each a fresh
                    # snapshot under READ COMMITTED, see whatever another worker committed before.
                    dbsession.execute(select(UserSession.id).where(UserSession.id == session_id).with_for_update())
                    yield dbsession
            except OperationalError as e:
                log.warning("refresh lock not acquired: %s", type(e.orig).__name__ if e.orig else e)
                raise RefreshLockTimeout() from None


class RedisRefreshLock:
    """A Redis lock around the same short transaction, for deployments that choose Redis."""

    def __init__(self, redis_client, transactions: Callable[[], Session], *, timeout: float):
        self.redis = redis_client
        self.transactions = transactions
        self.timeout = timeout

    @contextlib.contextmanager
    def locked(self, session_id: int) -> Iterator[Session]:
        lock = self.redis.lock(f"myapp:refresh:{session_id}", timeout=self.timeout, blocking_timeout=self.timeout)
        try:
            acquired = lock.acquire()
        except redis.RedisError as e:
            log.warning("refresh lock unavailable: %s", type(e).__name__)
            raise ProviderUnavailable("The refresh lock (Redis) is unavailable.") from None
        if not acquired:
            raise RefreshLockTimeout()
        try:
            with self.transactions() as dbsession, dbsession.begin():
                yield dbsession
        finally:
            with contextlib.suppress(redis.RedisError):
                lock.release()


class TokenManager:
    """Give me a valid access token for this session. One instance per process."""

    def __init__(
        self,
        *,
        lock,
        oidc: OIDCClient,
        cipher: TokenCipher,
        settings: TokenSettings,
        clock: Callable[[], datetime] = utcnow,
        metrics: Metrics | None = None,
    ):
        self.metrics = metrics or Metrics()
        self.lock = lock
        self.oidc = oidc
        self.cipher = cipher
        self.settings = settings
        self.clock = clock
        self.flights = SingleFlight()
        # Decrypted access tokens by ciphertext: a request with a fresh token skips Fernet. Bounded,
        # in this process only, and a ciphertext changes with every refresh.
        self._plaintexts: dict[bytes, str] = {}

    def access_token(self, session: SessionRecord, *, stale: str | None = None) -> str:
        """The session's access token, refreshed first when it is due or when ``stale`` was refused.

        ``session`` is the request's snapshot; only the refresh reads it again, locked.
        Raises :class:`LoginRequired` or :class:`ProviderUnavailable`.
        """
        if stale is None and session.access_token is not None and self._fresh(session.access_token_expires_at):
            token = self._plaintexts.get(session.access_token)
            if token is None:
                token = self.cipher.decrypt(session.access_token)
                if len(self._plaintexts) >= PLAINTEXT_CACHE_SIZE:
                    self._plaintexts.clear()
                if token:
                    self._plaintexts[session.access_token] = token
            if token:
                return token
        return self.flights.run(session.id, lambda: self._refresh(session.id, stale))

    def end_session(self, session_id: int, reason: EndReason) -> TokenSet:
        """End a session under the refresh lock and return the tokens it held, for the caller to
        revoke: a refresh racing a logout can neither store new tokens afterwards nor leave one
        unrevoked. Raises :class:`ProviderUnavailable` when the lock cannot be had."""
        with self.lock.locked(session_id) as dbsession:
            rows = SessionRows(dbsession, self.cipher, self.clock)
            current = rows.read(session_id)
            if current is None or current.session.ended_at is not None:
                return TokenSet()
            rows.end(session_id, reason, revoke=False)
            return current.tokens

    def _fresh(self, expires_at: datetime | None) -> bool:
        # Without an expiry the token is used until the upstream refuses it (reactive refresh).
        return expires_at is None or expires_at - self.settings.refresh_leeway > self.clock()

    def _refresh(self, session_id: int, stale: str | None) -> str:
        with self.lock.locked(session_id) as dbsession:
            outcome = self._refresh_locked(SessionRows(dbsession, self.cipher, self.clock), session_id, stale)
        # Raised only now, so that an ended session and its audit record were committed first.
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _refresh_locked(self, rows: SessionRows, session_id: int, stale: str | None):
        current = rows.read(session_id)
        if current is None or current.session.ended_at is not None:
            return LoginRequired()
        session, previous = current
        token = previous.access_token
        if token and token != stale and self._fresh(session.access_token_expires_at):
            return token  # refreshed by another worker while this one waited for the lock
        if token and token == stale and self._recently_refreshed(session):
            # The upstream refuses a token minted moments ago: a new one would not help, and
            # refreshing on every such 401 would hammer the provider.
            return token
        if not previous.refresh_token:
            return self._end(rows, session, "no refresh token")
        try:
            response = self.oidc.refresh(previous.refresh_token)
        except TokenRequestRefused as e:
            if e.error != "invalid_grant":
                self._audit(rows, session, f"provider refused: {e.error}")
                return ProviderUnavailable(f"The provider refused to refresh ({e.error}).")
            return self._after_invalid_grant(rows, session, previous.refresh_token)
        except OIDCError as e:
            self._audit(rows, session, e.reason)
            return e if isinstance(e, ProviderUnavailable) else ProviderUnavailable(e.message)
        tokens = TokenSet.from_response(response, self.clock(), previous=previous)
        if response.get("id_token"):
            verdict = self._check_refreshed_id_token(response["id_token"], tokens.access_token, session)
            if verdict == _UNVERIFIED:
                tokens = replace(tokens, id_token=previous.id_token)
            elif verdict is not None:
                return self._end(rows, session, verdict)
        # The new refresh token (if the provider rotates) is stored before the lock is released,
        # and only into a session that is still the one this refresh started from.
        if not rows.write_tokens(session.id, tokens, expected_generation=session.token_generation):
            # Ended (a logout) while the provider answered: the new tokens must not outlive it.
            if tokens.refresh_token != previous.refresh_token:
                rows.revoke_later(session.user_issuer, tokens)
            return LoginRequired()
        self.metrics.refreshes.inc()
        return tokens.access_token

    def _recently_refreshed(self, session: SessionRecord) -> bool:
        return session.refreshed_at is not None and self.clock() - session.refreshed_at < RECENT_REFRESH

    def _after_invalid_grant(self, rows: SessionRows, session: SessionRecord, used: str):
        # Another worker, outside this lock, may have rotated the refresh token already.
        current = rows.read(session.id)
        if current is not None and current.session.ended_at is None and current.tokens.refresh_token not in (None, used):
            if current.tokens.access_token:
                return current.tokens.access_token
        # Expired, revoked, or reused and its family revoked: this session cannot go on.
        return self._end(rows, session, "invalid_grant")

    def _check_refreshed_id_token(self, id_token: str, access_token: str, session: SessionRecord) -> str | None:
        """None if it names this user; _UNVERIFIED if it cannot be checked right now (keep the
        new access and refresh tokens, not this ID token); otherwise why the session must end."""
        try:
            claims = self.oidc.validate_id_token(id_token, nonce=None, access_token=access_token)
        except ProviderUnavailable:
            return _UNVERIFIED
        except OIDCError as e:
            if e.reason == "unknown_key":
                return _UNVERIFIED  # a key rotated within the refetch interval
            return f"refreshed ID token refused: {e.reason}"
        if claims.get("iss") != session.user_issuer or claims.get("sub") != session.user_subject:
            return "refreshed ID token names another user"
        return None

    def _end(self, rows: SessionRows, session: SessionRecord, why: str) -> LoginRequired:
        rows.end(session.id, EndReason.REFRESH_FAILED)
        self._audit(rows, session, f"{why}; session ended")
        return LoginRequired()

    def _audit(self, rows: SessionRows, session: SessionRecord, detail: str) -> None:
        self.metrics.refresh_failures.labels(reason=failure_reason(detail.split(";")[0])).inc()
        AuditLog(dbsession=rows.dbsession).record(
            AuditEventType.REFRESH_FAILED, user_id=session.user_id, session_handle=session.handle, detail=detail
        )
