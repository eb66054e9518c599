"""A valid access token for a session, refreshed at most once at a time across every process.

Within a process, concurrent callers for one session share one refresh (:class:`SingleFlight`).
Across processes, the refresh runs under a lock held in the session store: the session row
``SELECT ... FOR UPDATE`` on PostgreSQL, SQLite's write lock (``BEGIN IMMEDIATE``), or a Redis
lock. Under the lock the row is read again, so a worker that waited uses the tokens another one
just stored instead of asking the provider again.
"""

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

import redis
from sqlalchemy import select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from myapp.models import User, UserSession
from myapp.models.meta import utcnow
from myapp.services.audit import AuditEventType, AuditLog
from myapp.services.login import token_set
from myapp.services.metrics import Metrics, failure_reason
from myapp.services.oidc import OIDCClient, OIDCError, ProviderUnavailable, TokenRequestRefused
from myapp.services.sessions import EndReason, TokenCipher, TokenSet
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

    def __init__(self, session_factory: Callable[[], Session], *, timeout: float):
        self.session_factory = session_factory
        self.timeout = timeout

    @contextlib.contextmanager
    def locked(self, session_id: int):
        with self.session_factory() as dbsession:
            try:
                with dbsession.begin():
                    if dbsession.get_bind().dialect.name == "postgresql":
                        # Wait for another process's refresh, but not forever.
                        dbsession.execute(text(f"SET LOCAL lock_timeout = '{int(self.timeout * 1000)}ms'"))
                    row = dbsession.scalars(
                        select(UserSession).where(UserSession.id == session_id).with_for_update()
                    ).one_or_none()
                    yield dbsession, row
            except OperationalError as e:
                log.warning("refresh lock not acquired: %s", type(e.orig).__name__ if e.orig else e)
                raise RefreshLockTimeout() from None


class RedisRefreshLock:
    """A Redis lock around the same short transaction, for deployments that choose Redis."""

    def __init__(self, redis_client, session_factory: Callable[[], Session], *, timeout: float):
        self.redis = redis_client
        self.session_factory = session_factory
        self.timeout = timeout

    @contextlib.contextmanager
    def locked(self, session_id: int):
        lock = self.redis.lock(f"myapp:refresh:{session_id}", timeout=self.timeout, blocking_timeout=self.timeout)
        try:
            acquired = lock.acquire()
        except redis.RedisError as e:
            log.warning("refresh lock unavailable: %s", type(e).__name__)
            raise ProviderUnavailable("The refresh lock (Redis) is unavailable.") from None
        if not acquired:
            raise RefreshLockTimeout()
        try:
            with self.session_factory() as dbsession, dbsession.begin():
                row = dbsession.scalars(select(UserSession).where(UserSession.id == session_id)).one_or_none()
                yield dbsession, row
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

    def access_token(self, row: UserSession, *, stale: str | None = None) -> str:
        """The session's access token, refreshed first when it is due or when ``stale`` was refused.

        ``row`` is the request's snapshot of the session; only the refresh reads it again, locked.
        Raises :class:`LoginRequired` or :class:`ProviderUnavailable`.
        """
        if stale is None and row.access_token is not None and self._fresh(row.access_token_expires_at):
            token = self._plaintexts.get(row.access_token)
            if token is None:
                token = self.cipher.decrypt(row.access_token)
                if len(self._plaintexts) >= PLAINTEXT_CACHE_SIZE:
                    self._plaintexts.clear()
                if token:
                    self._plaintexts[row.access_token] = token
            if token:
                return token
        return self.flights.run(row.id, lambda: self._refresh(row.id, stale))

    def end_session(self, session_id: int, reason: str) -> TokenSet:
        """End a session under the refresh lock and return the tokens it held, so that a refresh
        racing a logout can neither store new tokens afterwards nor leave one unrevoked."""
        with self.lock.locked(session_id) as (dbsession, row):
            if row is None or row.ended_at is not None:
                return TokenSet()
            tokens = self.cipher.tokens_of(row)
            row.ended_at = self.clock()
            row.end_reason = reason
            row.access_token = row.refresh_token = row.id_token = None
            return tokens

    def _fresh(self, expires_at: datetime | None) -> bool:
        # Without an expiry the token is used until the upstream refuses it (reactive refresh).
        return expires_at is None or expires_at - self.settings.refresh_leeway > self.clock()

    def _refresh(self, session_id: int, stale: str | None) -> str:
        with self.lock.locked(session_id) as (dbsession, row):
            outcome = self._refresh_locked(dbsession, row, stale)
        # Raised only now, so that an ended session and its audit record were committed first.
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _refresh_locked(self, dbsession: Session, row: UserSession | None, stale: str | None):
        if row is None or row.ended_at is not None:
            return LoginRequired()
        previous = self.cipher.tokens_of(row)
        current = previous.access_token
        if current and current != stale and self._fresh(row.access_token_expires_at):
            return current  # refreshed by another worker while this one waited for the lock
        if current and current == stale and self._recently_refreshed(row):
            # The upstream refuses a token minted moments ago: a new one would not help, and
            # refreshing on every such 401 would hammer the provider.
            return current
        if not previous.refresh_token:
            return self._end(dbsession, row, "no refresh token")
        try:
            response = self.oidc.refresh(previous.refresh_token)
        except TokenRequestRefused as e:
            if e.error != "invalid_grant":
                self._audit(dbsession, row, f"provider refused: {e.error}")
                return ProviderUnavailable(f"The provider refused to refresh ({e.error}).")
            return self._after_invalid_grant(dbsession, row, previous.refresh_token)
        except OIDCError as e:
            self._audit(dbsession, row, e.reason)
            return e if isinstance(e, ProviderUnavailable) else ProviderUnavailable(e.message)
        tokens = token_set(response, self.clock(), previous=previous)
        if response.get("id_token"):
            verdict = self._check_refreshed_id_token(response["id_token"], tokens.access_token, row.user)
            if verdict == _UNVERIFIED:
                tokens = replace(tokens, id_token=previous.id_token)
            elif verdict is not None:
                return self._end(dbsession, row, verdict)
        # The new refresh token (if the provider rotates) is stored before the lock is released,
        # and only into a session that is still the one this refresh started from.
        stored = dbsession.execute(
            update(UserSession)
            .where(
                UserSession.id == row.id,
                UserSession.ended_at.is_(None),
                UserSession.token_generation == row.token_generation,
            )
            .values(
                access_token=self.cipher.encrypt(tokens.access_token),
                refresh_token=self.cipher.encrypt(tokens.refresh_token),
                id_token=self.cipher.encrypt(tokens.id_token),
                access_token_expires_at=tokens.access_token_expires_at,
                token_generation=row.token_generation + 1,
                refreshed_at=self.clock(),
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        if stored != 1:
            # Ended (a logout) while the provider answered: the new tokens must not outlive it.
            if tokens.refresh_token and tokens.refresh_token != previous.refresh_token:
                self.oidc.revoke(tokens.refresh_token, "refresh_token")
            return LoginRequired()
        self.metrics.refreshes.inc()
        return tokens.access_token

    def _recently_refreshed(self, row: UserSession) -> bool:
        return row.refreshed_at is not None and self.clock() - row.refreshed_at < RECENT_REFRESH

    def _after_invalid_grant(self, dbsession: Session, row: UserSession, used: str):
        # Another worker, outside this lock, may have rotated the refresh token already.
        dbsession.expire(row)
        dbsession.refresh(row)
        if row.ended_at is None and self.cipher.decrypt(row.refresh_token) not in (None, used):
            token = self.cipher.decrypt(row.access_token)
            if token:
                return token
        # Expired, revoked, or reused and its family revoked: this session cannot go on.
        return self._end(dbsession, row, "invalid_grant")

    def _check_refreshed_id_token(self, id_token: str, access_token: str, user: User) -> str | None:
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
        if claims.get("iss") != user.issuer or claims.get("sub") != user.subject:
            return "refreshed ID token names another user"
        return None

    def _end(self, dbsession: Session, row: UserSession, why: str) -> LoginRequired:
        row.ended_at = self.clock()
        row.end_reason = EndReason.REFRESH_FAILED
        row.access_token = row.refresh_token = row.id_token = None
        self._audit(dbsession, row, f"{why}; session ended")
        return LoginRequired()

    def _audit(self, dbsession: Session, row: UserSession, detail: str) -> None:
        self.metrics.refresh_failures.labels(reason=failure_reason(detail.split(";")[0])).inc()
        AuditLog(dbsession=dbsession).record(
            AuditEventType.REFRESH_FAILED, user_id=row.user_id, session_handle=row.handle, detail=detail
        )
