"""No ended session keeps a live token at its provider.

Ending a session (:class:`SessionRows.end_where`) wipes its tokens from the row and, in the same
transaction, queues its refresh token (else its access token) in ``token_revocations``. The
:class:`Revoker` works through that queue in the background of every process: it claims a few due
rows at a time (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so processes share the work), calls the
provider's RFC 7009 endpoint outside any transaction, and deletes each row once the provider has
answered, or tries again later with a growing delay, up to a bound. It also ends the sessions whose
time ran out (absolute or idle), which queues their tokens the same way.
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from myapp.errors import describe_outage, outage_errors
from myapp.models import Database, TokenRevocation, User, UserSession
from myapp.models.meta import utcnow
from myapp.services.metrics import Metrics
from myapp.services.oidc import Providers, Revocation
from myapp.services.sessions import EndReason, SessionRows, idle_after, unreachable_sessions
from myapp.services.tokenset import TokenCipher

log = logging.getLogger(__name__)

BATCH = 50
MAX_ATTEMPTS = 10
# What a revocation of an issuer no provider of this process has comes to (tried again, as a failure).
UNKNOWN_PROVIDER = "unknown_provider"
# A claimed row is left alone this long: long enough for a slow provider, short enough that a
# process killed mid-batch leaves its rows to another soon.
LEASE = timedelta(minutes=2)
FIRST_RETRY = timedelta(minutes=1)
LAST_RETRY = timedelta(hours=1)
SWEEP_INTERVAL = 60.0


@dataclass
class RevokerPass:
    """What one pass did: sessions ended because their time ran out, tokens by outcome."""

    sessions_ended: int = 0
    tokens: dict[str, int] = field(default_factory=dict)


class Revoker:
    def __init__(
        self,
        *,
        database: Database,
        cipher: TokenCipher,
        providers: Providers,
        idle_timeout: timedelta,
        metrics: Metrics,
        clock: Callable[[], datetime] = utcnow,
    ):
        self.database = database
        self.cipher = cipher
        self.providers = providers
        self.idle_timeout = idle_timeout
        self.metrics = metrics
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> RevokerPass:
        """End the sessions whose time ran out, then revoke what is due."""
        done = RevokerPass(sessions_ended=self.end_expired_sessions())
        for outcome in self.revoke_due():
            done.tokens[outcome] = done.tokens.get(outcome, 0) + 1
        return done

    def end_expired_sessions(self) -> int:
        """End (and queue the tokens of) sessions past their absolute or idle limit, those of
        disabled accounts, and those no browser can reach any more (unreachable_sessions), a batch
        at a time.

        What is due is found with a plain read first: on most minutes nothing is, and a write
        transaction (``BEGIN IMMEDIATE`` on SQLite) would hold the database's write lock while the
        sessions are scanned, about a second at 240,000 of them, stalling every sign-in and refresh
        meanwhile. Each end evaluates its condition again as it writes: a session used in between
        is kept.
        """
        now = self.clock()
        conditions = (
            # Dead to every request already (dead_reason); ended, so that their tokens are revoked
            # and enabling the account again brings none of them back. First, as dead_reason says
            # it first: a disabled account's session past its time is told the account is disabled.
            (EndReason.ACCOUNT_DISABLED, UserSession.user_id.in_(select(User.id).where(User.disabled.is_(True)))),
            (EndReason.EXPIRED, UserSession.expires_at <= now),
            (EndReason.IDLE, UserSession.last_seen_at <= now - idle_after(self.idle_timeout)),
        )
        with self.database.read() as reader:
            due = [
                (reason, condition, ids)
                for reason, condition in conditions
                if (ids := reader.scalars(select(UserSession.id).where(UserSession.ended_at.is_(None), condition).limit(500)).all())
            ]
            # Not measured against a session ended just before them: see unreachable_sessions.
            unreachable = unreachable_sessions(reader, ending={session_id for _, _, ids in due for session_id in ids})
        if not due and not unreachable:
            return 0
        with self.database.own_transaction() as dbsession, dbsession.begin():
            rows = SessionRows(dbsession, self.cipher, self.clock)
            ended = sum(rows.end_where(UserSession.id.in_(ids) & condition, reason) for reason, condition, ids in due)
            replaced = rows.end_unreachable(found=unreachable)
        if replaced:
            log.info("ended %d sessions no browser can use any more (sign-ins completed together in one browser)", replaced)
        return ended + replaced

    def revoke_due(self) -> list[str]:
        """Revoke the queued tokens that are due; the outcome of each."""
        if not self._anything_due():
            return []
        claimed = self._claim()
        outcomes = []
        for row in claimed:
            outcome = self._revoke(row)
            outcomes.append(outcome)
            self.metrics.token_revocations.labels(outcome=outcome).inc()
        with self.database.own_transaction() as dbsession, dbsession.begin():
            for row, outcome in zip(claimed, outcomes):
                self._record(dbsession, row, outcome)
        return outcomes

    def _anything_due(self) -> bool:
        # A plain read first: most passes find nothing, and need not take SQLite's write lock for it.
        with self.database.read() as connection:
            due = select(TokenRevocation.id).where(TokenRevocation.next_attempt_at <= self.clock()).limit(1)
            return connection.execute(due).first() is not None

    def _claim(self) -> list[TokenRevocation]:
        now = self.clock()
        with self.database.own_transaction() as dbsession, dbsession.begin():
            rows = dbsession.scalars(
                select(TokenRevocation)
                .where(TokenRevocation.next_attempt_at <= now)
                .order_by(TokenRevocation.id)
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            ).all()
            dbsession.expunge_all()
            dbsession.execute(
                update(TokenRevocation)
                .where(TokenRevocation.id.in_([row.id for row in rows]))
                .values(next_attempt_at=now + LEASE)
            )
            return list(rows)

    def _revoke(self, row: TokenRevocation) -> str:
        client = self.providers.by_issuer(row.issuer)
        if client is None:
            log.warning("a token of issuer %s cannot be revoked here: no provider with that issuer is configured", row.issuer)
            return UNKNOWN_PROVIDER
        token = self.cipher.decrypt(row.token)
        if token is None:
            log.warning("a queued token cannot be decrypted (its key was removed); it cannot be revoked")
            return "unreadable"
        return str(client.revoke(token, row.token_type_hint))

    def _record(self, dbsession: Session, row: TokenRevocation, outcome: str) -> None:
        attempts = row.attempts + 1
        # An issuer this process does not know may be one that others know (a rolling deployment
        # adding a provider): tried again like a failure, for their revokers to take.
        again = outcome in (Revocation.FAILED, UNKNOWN_PROVIDER)
        if not again or attempts >= MAX_ATTEMPTS:
            if again:
                log.warning("giving up revoking a token of %s after %d attempts", row.issuer, attempts)
            dbsession.execute(delete(TokenRevocation).where(TokenRevocation.id == row.id))
            return
        delay = min(FIRST_RETRY * 2 ** (attempts - 1), LAST_RETRY)
        dbsession.execute(
            update(TokenRevocation)
            .where(TokenRevocation.id == row.id)
            .values(attempts=attempts, next_attempt_at=self.clock() + delay)
        )

    def start(self, interval: float) -> None:
        """Run in a daemon thread of this process, every ``interval`` seconds (the session sweep
        at most once a minute), until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, args=(interval,), name="myapp revoker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self, interval: float) -> None:
        last_sweep = float("-inf")
        while not self._stop.wait(interval):
            try:
                if time.monotonic() - last_sweep >= SWEEP_INTERVAL:
                    last_sweep = time.monotonic()
                    self.end_expired_sessions()
                self.revoke_due()
            except outage_errors() as e:  # the database unreachable: one line a pass, as a request's 503 logs it
                log.warning("revoker pass failed: %s; trying again in %ss", describe_outage(e), interval)
            except Exception:  # nothing must end the thread; the next pass tries again
                log.warning("revoker pass failed; trying again in %ss", interval, exc_info=True)
