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
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from types import MappingProxyType

import redis
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from myapp import tracing
from myapp.errors import ServiceUnavailable, describe_outage
from myapp.memo import remember
from myapp.models import Database, UserSession
from myapp.models.meta import utcnow
from myapp.services.audit import AuditEventType, AuditLog
from myapp.services.dpop import DPoPKey, DPoPKeyUnreadable
from myapp.services.http import within
from myapp.services.metrics import Metrics, failure_reason
from myapp.services.oidc import (
    DPoPNotBound,
    OIDCClient,
    OIDCError,
    ProviderResting,
    Providers,
    ProviderUnavailable,
    TokenRequestRefused,
    TokenResponseInvalid,
)
from myapp.services.sessions import EndReason, SessionRecord, SessionRows, UpstreamToken
from myapp.services.tokenset import DPOP, Credential, TokenCipher, TokenSet
from myapp.settings import REFRESH_LOCK_MARGIN, TokenSettings, Upstream

log = logging.getLogger(__name__)

RECENT_REFRESH = timedelta(seconds=30)
PLAINTEXT_CACHE_SIZE = 1024
# How long a session's refused upstream token is not asked for again in the process that was
# refused (TokenManager._upstream_access_token): a refusal is the provider's configuration or policy
# (invalid_scope, invalid_target, an exchange it will not make), which a moment does not change.
REFUSAL_HOLD = timedelta(seconds=30)
_UNVERIFIED = "unverified"


class LoginRequired(Exception):
    """The session has ended or can no longer be refreshed: the user must sign in again."""


class UpstreamTokenRefused(OIDCError):
    """The provider will not issue a token for this upstream (``invalid_scope``, ``invalid_target``,
    ...): that upstream cannot be called, the session and the other upstreams go on."""

    # The session's token generation the refusal is held at, as it is once refused (set by
    # TokenManager._refusal_held_as_it_is; None: the one the request read).
    generation: int | None = None

    def __init__(self, upstream: str, error: str):
        super().__init__(
            f"upstream_token_refused:{error}"[:64],
            f"The sign-in provider would not issue a token for the API {upstream!r} ({error}).",
        )
        self.upstream = upstream
        self.error = error


def _is_lock_timeout(error: OperationalError) -> bool:
    """A lock wait that ran out (another refresh holds the lock), not a database that is gone."""
    code = getattr(getattr(error, "orig", None), "sqlstate", None)
    return code == "55P03" or "database is locked" in str(getattr(error, "orig", error))


def _holding(timeout: float) -> float:
    """How long a lock's holder may spend calling the provider: all but REFRESH_LOCK_MARGIN of the
    lock's timeout, and half of it at least (short timeouts, in tests)."""
    return max(timeout - REFRESH_LOCK_MARGIN, timeout / 2)


class RefreshLockTimeout(ProviderUnavailable):
    def __init__(self):
        super().__init__("Another refresh of this session is taking too long.")


class SingleFlight:
    """One call per key at a time in this process; callers that arrive meanwhile share its result.

    A caller that waits for another's call is traced too when ``span`` names a span (and its
    attributes): its wait is this request's share of the refresh, with ``myapp.lock_wait_ms``, the
    call's ``myapp.outcome`` and ``myapp.shared``, where the leader's own span (made by ``function``)
    is in the leader's request. Without it, such a request showed a gap as long as the refresh."""

    class _Call:
        def __init__(self):
            self.done = threading.Event()
            self.result = None
            self.error: BaseException | None = None

    def __init__(self):
        self._lock = threading.Lock()
        self._calls: dict = {}

    def run(self, key, function: Callable, *, span: tuple[str, dict | None] | None = None):
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if leader:
                call = self._calls[key] = self._Call()
        if not leader:
            if span is None:
                call.done.wait()
            else:
                with tracing.span(*span) as traced:
                    waiting = tracing.Stopwatch()
                    call.done.wait()
                    traced.set_attribute("myapp.lock_wait_ms", waiting.milliseconds())
                    traced.set_attribute("myapp.shared", True)
                    traced.set_attribute("myapp.outcome", "ok" if call.error is None else type(call.error).__name__)
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
                    with within(_holding(self.timeout)):
                        yield dbsession
            except OperationalError as e:
                log.warning("refresh lock not acquired: %s", type(e.orig).__name__ if e.orig else e)
                if _is_lock_timeout(e):
                    raise RefreshLockTimeout() from None
                raise ServiceUnavailable() from None


class RedisRefreshLock:
    """A Redis lock around the same short transaction, for deployments that choose Redis."""

    # Locks Redis may hold for this process without its knowing: an acquire whose answer was lost
    # (Redis slow, or cut once it had the command), a release that did not arrive. Each would hold
    # up its session's refreshes, in every process, for the whole lease; the next use of the lock
    # here drops them first (each only if still this process's own). Bounded: beyond, they expire.
    ORPHANS_LIMIT = 1024

    def __init__(self, redis_client, transactions: Callable[[], Session], *, timeout: float):
        self.redis = redis_client
        self.transactions = transactions
        self.timeout = timeout
        # (lock name, token) pairs, oldest first: a name may have several (all but one expired).
        self._orphans: dict[tuple[str, str], None] = {}
        self._orphans_lock = threading.Lock()

    @contextlib.contextmanager
    def locked(self, session_id: int) -> Iterator[Session]:
        name = f"myapp:refresh:{session_id}"
        token = uuid.uuid4().hex
        lock = self.redis.lock(name, timeout=self.timeout, blocking_timeout=self.timeout)
        asked = False
        try:
            self._drop_orphans()
            asked = True
            acquired = lock.acquire(token=token)
        except redis.RedisError as e:
            if asked:
                self._orphan(name, token)
            log.warning("refresh lock unavailable: %s", describe_outage(e))
            raise ServiceUnavailable("The refresh lock (Redis) is unavailable.") from None
        if not acquired:
            raise RefreshLockTimeout()
        try:
            # The lease runs out after ``timeout``: the holder's calls to the provider end before.
            with within(_holding(self.timeout)), self.transactions() as dbsession, dbsession.begin():
                yield dbsession
        finally:
            try:
                lock.release()
            except redis.exceptions.LockNotOwnedError:
                pass  # the lease ran out
            except redis.RedisError:
                self._orphan(name, token)

    def _orphan(self, name: str, token: str) -> None:
        with self._orphans_lock:
            if len(self._orphans) < self.ORPHANS_LIMIT:
                self._orphans[name, token] = None

    def _drop_orphans(self) -> None:
        """Release the locks this process may hold unknowingly; a RedisError (Redis still out of
        reach) leaves the rest for next time."""
        with self._orphans_lock:
            orphans, self._orphans = list(self._orphans), {}
        try:
            while orphans:
                name, token = orphans[0]
                with contextlib.suppress(redis.exceptions.LockNotOwnedError):  # expired, or never taken
                    self.redis.lock(name).do_release(token)
                orphans.pop(0)
        finally:
            for name, token in orphans:
                self._orphan(name, token)


class TokenManager:
    """Give me a valid access token for this session. One instance per process."""

    def __init__(
        self,
        *,
        lock,
        providers: Providers,
        cipher: TokenCipher,
        settings: TokenSettings,
        upstreams: Mapping[str, Upstream] = MappingProxyType({}),
        clock: Callable[[], datetime] = utcnow,
        metrics: Metrics | None = None,
        database: Database | None = None,
    ):
        self.metrics = metrics or Metrics()
        self.lock = lock
        self.database = database
        self.providers = providers
        self.upstreams = upstreams
        self.cipher = cipher
        self.settings = settings
        self.clock = clock
        self.flights = SingleFlight()
        # Decrypted access tokens by ciphertext: a request with a fresh token skips Fernet. Bounded,
        # in this process only, and a ciphertext changes with every refresh.
        self._plaintexts: dict[bytes, str] = {}
        # Upstreams' own tokens by (session handle, upstream), as last read or minted in this process:
        # the handle is random and never reused, unlike a row id (SQLite gives a purged one again).
        self._upstream_tokens: dict[tuple[str, str], UpstreamToken] = {}
        # Sessions' DPoP keys by ciphertext, like the access tokens.
        self._dpop_keys: dict[bytes, DPoPKey] = {}
        # Upstream tokens the provider refused, by (session handle, upstream): until when, why, and
        # the session's token generation then (its tokens changed since: asked again).
        self._refused: dict[tuple[str, str], tuple[datetime, str, int]] = {}
        # The provider's last failure for a session (by its handle) and target, when (perf_counter)
        # and its words: shared with the callers that were waiting for the lock meanwhile (_locked).
        self._provider_failures: dict[tuple[str, str | None], tuple[float, str]] = {}
        # Providers (and upstreams) already warned of tokens that live no longer than the leeway.
        self._warned_short_lived: set[str] = set()

    def access_token(self, session: SessionRecord, *, upstream: str | None = None, stale: str | None = None) -> Credential:
        """The access token to send to ``upstream`` for this session: the session's own, or, for an
        upstream with a token of its own, that one; with the session's DPoP key when it is bound to
        it. Refreshed first when it is due or when ``stale`` was refused.

        ``session`` is the request's snapshot; only the refresh reads it again, locked.
        Raises :class:`LoginRequired`, :class:`ProviderUnavailable` or :class:`UpstreamTokenRefused`.
        """
        target = self.upstreams.get(upstream) if upstream is not None else None
        if target is not None and target.has_own_token:
            return self._upstream_access_token(session, target, stale)
        if stale is None and session.access_token is not None and self._fresh(session.access_token_expires_at):
            token = self._plaintexts.get(session.access_token)
            if token is None:
                token = self.cipher.decrypt(session.access_token)
                if token:
                    remember(self._plaintexts, session.access_token, token, PLAINTEXT_CACHE_SIZE)
            credential = self._known(token, session.access_token_type, session) if token else None
            if credential is not None:
                return credential
        # Keyed by the session's random handle, never its row id: SQLite gives a purged highest
        # id to the next row, and a caller must never share another session's refresh.
        return self.flights.run(
            session.handle, lambda: self._refresh(session, stale), span=("token.refresh", None)
        )

    def _known(self, token: str, token_type: str | None, session: SessionRecord) -> Credential | None:
        """A stored token as it is sent, without the lock; None when it is bound to a key this
        process cannot read (the refresh, reading the session again under its lock, ends it)."""
        if token_type != DPOP:
            return Credential(token)
        key = self._dpop_key(session.dpop_key)
        return None if key is None else Credential(token, key)

    def _dpop_key(self, ciphertext: bytes | None) -> DPoPKey | None:
        """The session's DPoP key from its stored ciphertext (cached); None when there is none or
        it cannot be read."""
        if ciphertext is None:
            return None
        key = self._dpop_keys.get(ciphertext)
        if key is None:
            try:
                key = DPoPKey.from_json(self.cipher.decrypt(ciphertext))
            except DPoPKeyUnreadable:
                return None
            remember(self._dpop_keys, ciphertext, key, PLAINTEXT_CACHE_SIZE)
        return key

    def _session_key(self, session: SessionRecord, tokens: TokenSet) -> DPoPKey | None:
        """The key of a session read under the lock (its ``tokens`` decrypted); raises
        :class:`DPoPKeyUnreadable` when it has one that no encryption key in use can read."""
        if session.dpop_key is None:
            if tokens.bound:
                raise DPoPKeyUnreadable()  # a bound token without its key is never sent as Bearer
            return None
        if tokens.dpop_key is None:
            raise DPoPKeyUnreadable()
        return DPoPKey.from_json(tokens.dpop_key)

    def end_session(self, session_id: int, reason: EndReason) -> TokenSet | None:
        """End a session under the refresh lock and return its own tokens, for the caller to revoke
        (the upstreams' exchanged tokens go to the revoker's queue): a refresh racing a logout can
        neither store new tokens afterwards nor leave one unrevoked. None when it had ended already
        (another request's sign-out, say): nothing was done here. Raises
        :class:`ProviderUnavailable` when the lock cannot be had."""
        with self.lock.locked(session_id) as dbsession:
            rows = SessionRows(dbsession, self.cipher, self.clock)
            current = rows.read(session_id)
            if current is None or current.session.ended_at is not None:
                return None
            # The caller revokes the session's own tokens; the upstreams' exchanged ones are queued.
            rows.end(session_id, reason, revoke=False, revoke_exchanged=True)
            return current.tokens

    def _warn_if_short_lived(self, source: str, expires_at: datetime | None) -> None:
        """Log once per process for ``source`` when a token just issued is already within the
        refresh leeway of its expiry: every call would refresh it, a configuration mismatch."""
        if expires_at is None or self._fresh(expires_at) or source in self._warned_short_lived:
            return
        self._warned_short_lived.add(source)
        log.warning(
            "Access tokens for %s expire within myapp.tokens.refresh_leeway (%d s) of being issued,"
            " so every call refreshes them; set the leeway below the tokens' lifetime",
            source, self.settings.refresh_leeway.total_seconds(),
        )

    def _fresh(self, expires_at: datetime | None) -> bool:
        # Without an expiry the token is used until the upstream refuses it (reactive refresh).
        return expires_at is None or expires_at - self.settings.refresh_leeway > self.clock()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Session]:
        """A session for reads that need no lock: on the database's plain reads, never SQLite's
        ``BEGIN IMMEDIATE`` of the lock's transactions, which waits for a refresh holding the
        write lock through its call to the provider (helper-144). The lock's transactions when
        there is no database (unit tests)."""
        if self.database is None:
            with self.lock.transactions() as dbsession:
                yield dbsession
            return
        with self.database.read() as connection, Session(bind=connection) as dbsession:
            yield dbsession

    def _resting(self, session: SessionRecord) -> bool:
        """Whether the session's provider is not to be asked now (oidc.client.TokenEndpointRest)."""
        client = self.providers.of_session(session.provider, session.user_issuer)
        return client is not None and client.token_endpoint_rest.resting()

    def _while_resting(self, session: SessionRecord, stale: str | None, upstream: Upstream | None = None):
        """While the session's provider rests: what the work under the lock would give without
        asking it, read again without the lock (a token another process stored meanwhile, or the
        very one the upstream refused moments after it was minted, whose 401 goes back: ``_serves``),
        an ended session signed out; else :class:`ProviderResting`, a 503 at once, with no lock,
        transaction or audit record for each call (helper-143). Raises what it does not return."""
        with self._reading() as dbsession:
            rows = SessionRows(dbsession, self.cipher, self.clock)
            current = rows.read(session.id)
            stored = rows.upstream_token(session.id, upstream.name, minted_for=upstream.minted_for) if upstream else None
        if current is None or current.session.ended_at is not None:
            raise LoginRequired()
        record, tokens = current
        if upstream is None:
            usable = self._serves(tokens.access_token, record.access_token_expires_at, record.refreshed_at, stale)
            token, token_type = tokens.access_token, tokens.token_type
        else:
            usable = (
                stored is not None and self._takes(upstream, stored)
                and self._serves(stored.access_token, stored.expires_at, stored.refreshed_at, stale)
            )
            token, token_type = (stored.access_token, stored.token_type) if usable else (None, None)
        if not usable:
            raise ProviderResting()
        try:
            key = self._session_key(record, tokens)
        except DPoPKeyUnreadable:
            raise ProviderResting() from None  # the work under the lock ends it, once the provider is asked
        if upstream is not None:
            self._remember_upstream_token((session.handle, upstream.name), stored)
        return Credential.of(token, token_type, key)

    def _refresh(self, session: SessionRecord, stale: str | None) -> Credential:
        if self._resting(session):
            return self._while_resting(session, stale)
        with tracing.span("token.refresh") as span:
            outcome = self._locked(session, None, lambda rows: self._refresh_locked(rows, session.id, stale), span)
            span.set_attribute("myapp.outcome", type(outcome).__name__ if isinstance(outcome, BaseException) else "ok")
        # Raised only now, so that an ended session and its audit record were committed first.
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _locked(self, session: SessionRecord, target: str | None, work: Callable[[SessionRows], object], span):
        """``work`` under the session's refresh lock, for ``target`` (an upstream's own token, or
        None: the session's own): its outcome, a credential or the exception to raise.

        A provider that failed (:class:`ProviderUnavailable`) for this session and target while this
        caller waited for the lock is this caller's outcome too, not asked again: every caller of a
        refresh in flight shares its result, a failure included (SPEC.md), where each caller that
        waited on the lock (a call moments later, in a flight of its own once the first ended) asked
        the provider again in turn, each waiting its timeout: ten calls to two upstreams against a
        provider that did not answer took 3 to 15 s, seven token requests with one refresh token
        (helper-131). Not across targets: what the provider answered for one upstream's target (an
        answer it could not use) says nothing of another's (helper-134). Any other outcome clears
        it, so that a caller that waited since is not given a failure a later call has outlived
        (a Redis or SQLite lock does not serve its waiters in turn: helper-134). In this process; a
        caller that comes after the failure asks again. Each sharer gets an exception of its own."""
        key = (session.handle, target)
        waiting = tracing.Stopwatch()
        with self.lock.locked(session.id) as dbsession:
            span.set_attribute("myapp.lock_wait_ms", waiting.milliseconds())
            failed = self._provider_failures.get(key)
            if failed is not None and failed[0] > waiting.started:
                return ProviderUnavailable(failed[1])
            outcome = work(SessionRows(dbsession, self.cipher, self.clock))
            # Before the lock is let go: a caller that takes it next must see it.
            if isinstance(outcome, ProviderUnavailable):
                remember(self._provider_failures, key, (time.perf_counter(), outcome.message), PLAINTEXT_CACHE_SIZE)
            else:
                self._provider_failures.pop(key, None)
        return outcome

    def _refresh_locked(self, rows: SessionRows, session_id: int, stale: str | None):
        current = rows.read(session_id)
        if current is None or current.session.ended_at is not None:
            return LoginRequired()
        session, previous = current
        try:
            key = self._session_key(session, previous)
        except DPoPKeyUnreadable:
            # Its tokens cannot be used without it (a removed encryption key, say): sign in again.
            return self._end(rows, session, "DPoP key unreadable")
        token = previous.access_token
        if self._serves(token, session.access_token_expires_at, session.refreshed_at, stale):
            return Credential.of(token, previous.token_type, key)
        if not previous.refresh_token:
            return self._end(rows, session, "no refresh token")
        client = self.providers.of_session(session.provider, session.user_issuer)
        if client is None:
            return self._end(rows, session, f"provider {session.provider!r} is no longer configured")
        try:
            # The proof is made here, under the session's refresh lock: single-flight holds for DPoP too.
            response = client.refresh(previous.refresh_token, dpop=key)
        except TokenRequestRefused as e:
            if e.error == "invalid_dpop_proof":
                # The provider will not take this session's key any more: only a new sign-in helps.
                return self._end(rows, session, "invalid_dpop_proof")
            if e.error != "invalid_grant":
                self._audit(rows, session, f"provider refused: {e.error}")
                return ProviderUnavailable(f"The provider refused to refresh ({e.error}).")
            return self._after_invalid_grant(rows, session, previous.refresh_token, key)
        except DPoPNotBound as e:
            return self._end_unbound(rows, session, e)
        except OIDCError as e:
            if isinstance(e, TokenResponseInvalid) and not self._keep_successor(rows, session, previous, e.refresh_token):
                return LoginRequired()
            if not isinstance(e, ProviderResting):  # not asked (it began to rest meanwhile): nothing to record
                self._audit(rows, session, e.reason)
            return e if isinstance(e, ProviderUnavailable) else ProviderUnavailable(e.message)
        tokens = TokenSet.from_response(response, self.clock(), previous=previous)
        self._warn_if_short_lived(f"provider {client.settings.name!r}", tokens.access_token_expires_at)
        if response.get("id_token"):
            verdict = self._check_refreshed_id_token(client, response["id_token"], tokens.access_token, session)
            if verdict == _UNVERIFIED:
                tokens = replace(tokens, id_token=previous.id_token)
            elif verdict is not None:
                self._revoke_if_rotated(rows, session, tokens, previous.refresh_token)
                return self._end(rows, session, verdict)
        # The new refresh token (if the provider rotates) is stored before the lock is released,
        # and only into a session that is still the one this refresh started from.
        if not rows.write_tokens(session.id, tokens, expected_generation=session.token_generation):
            # Ended (a logout) while the provider answered: the new tokens must not outlive it.
            self._revoke_if_rotated(rows, session, tokens, previous.refresh_token)
            return LoginRequired()
        self.metrics.refreshes.inc()
        return Credential.of(tokens.access_token, tokens.token_type, key)

    # -- an upstream's own token (SPEC.md "Tokens for each upstream") --

    def _upstream_access_token(self, session: SessionRecord, upstream: Upstream, stale: str | None) -> Credential:
        key = (session.handle, upstream.name)
        if stale is None:
            known = self._upstream_tokens.get(key)
            if known is None or not self._fresh(known.expires_at):
                with self._reading() as dbsession:
                    known = SessionRows(dbsession, self.cipher, self.clock).upstream_token(
                        session.id, upstream.name, minted_for=upstream.minted_for
                    )
                self._remember_upstream_token(key, known)
            if known is not None and self._fresh(known.expires_at) and self._takes(upstream, known):
                credential = self._known(known.access_token, known.token_type, session)
                if credential is not None:
                    return credential
        refused = self._refused.get(key)
        if refused is not None:
            until, error, generation = refused
            # A request that read the session before the refusal's generation (the work under the
            # lock changed it: _refusal_held_as_it_is) is held too; one that read it since, not.
            if until > self.clock() and session.token_generation <= generation:
                # Not asked again so soon: each call would be one more token request and one more
                # audit record of the same refusal (a misconfigured scope, on every page and call).
                raise UpstreamTokenRefused(upstream.name, error)
            self._refused.pop(key, None)
        # The same lock as the session's own refresh: every use of its one refresh token, for any
        # upstream, is single-flight per session across threads and processes.
        return self.flights.run(
            key, lambda: self._mint_upstream_token(session, key, upstream, stale),
            span=("token.upstream", {"myapp.upstream": upstream.name}),
        )

    @staticmethod
    def _takes(upstream: Upstream, token: UpstreamToken) -> bool:
        """Whether a stored token may go to ``upstream``: only one recorded as minted for the
        upstream as it is set now (its server, scope, resources, parameters, exchange:
        Upstream.minted_for), never one minted before a restart changed that under the same name,
        nor one stored before it was recorded (None); and one bound to the session's key never goes
        to an upstream that takes Bearer tokens (``dpop = false``, set since it was minted).
        Another is asked for instead, at once (without a proof for ``dpop = false``)."""
        return token.minted_for == upstream.minted_for and (upstream.dpop or token.token_type != DPOP)

    def _remember_upstream_token(self, key: tuple[str, str], token: UpstreamToken | None) -> None:
        if token is None:
            self._upstream_tokens.pop(key, None)
            return
        remember(self._upstream_tokens, key, token, PLAINTEXT_CACHE_SIZE)

    def _mint_upstream_token(
        self, session: SessionRecord, key: tuple[str, str], upstream: Upstream, stale: str | None
    ) -> Credential:
        session_id = session.id
        if self._resting(session):
            return self._while_resting(session, stale, upstream)
        with tracing.span("token.upstream", {"myapp.upstream": upstream.name}) as span:
            outcome = self._locked(session, upstream.name, lambda rows: self._refusal_held_as_it_is(
                rows, session_id, self._mint_upstream_token_locked(rows, session_id, upstream, stale)
            ), span)
            span.set_attribute("myapp.outcome", type(outcome).__name__ if isinstance(outcome, BaseException) else "ok")
        if isinstance(outcome, BaseException):
            self._upstream_tokens.pop(key, None)
            if isinstance(outcome, UpstreamTokenRefused):
                generation = session.token_generation if outcome.generation is None else outcome.generation
                held = (self.clock() + REFUSAL_HOLD, outcome.error, generation)
                remember(self._refused, key, held, PLAINTEXT_CACHE_SIZE)
            raise outcome
        token, dpop = outcome
        self._remember_upstream_token(key, token)
        return Credential.of(token.access_token, token.token_type, dpop)

    def _mint_upstream_token_locked(self, rows: SessionRows, session_id: int, upstream: Upstream, stale: str | None):
        current = rows.read(session_id)
        if current is None or current.session.ended_at is not None:
            return LoginRequired()
        session, own = current
        try:
            key = self._session_key(session, own)
        except DPoPKeyUnreadable:
            return self._end(rows, session, "DPoP key unreadable")
        stored = rows.upstream_token(session_id, upstream.name, minted_for=upstream.minted_for)
        if (
            stored is not None
            and self._takes(upstream, stored)
            and self._serves(stored.access_token, stored.expires_at, stored.refreshed_at, stale)
        ):
            return stored, key
        client = self.providers.of_session(session.provider, session.user_issuer)
        if client is None:
            return self._end(rows, session, f"provider {session.provider!r} is no longer configured")
        # An upstream that takes Bearer tokens (``dpop = false``) gets one asked for without a proof.
        dpop = key if upstream.dpop else None
        request = {"scope": upstream.scope, "resources": upstream.resources, "params": upstream.token_params, "dpop": dpop}
        try:
            if upstream.exchange:
                subject = self._refresh_locked(rows, session_id, None)  # the session's own, fresh
                if isinstance(subject, BaseException):
                    return subject
                try:
                    response = client.exchange_token(subject.token, **request)
                except TokenRequestRefused as e:
                    if e.error != "invalid_grant":
                        raise
                    # About the subject token, the session's own access token (one the provider no
                    # longer takes though it looks fresh here: no expires_in, a clock ahead), not its
                    # refresh token: the session's own refresh tells which, and the exchange is asked
                    # once more with its new token. Its refusal ends the session, as a refresh's does.
                    if subject.token != own.access_token or not own.refresh_token:
                        # Refreshed for this very exchange (it was due), or nothing to refresh it
                        # with: there is nothing newer to offer, and only this upstream is out of reach.
                        raise
                    fresh = self._refresh_locked(rows, session_id, subject.token)
                    if isinstance(fresh, BaseException):
                        return fresh
                    if fresh.token == subject.token:
                        raise  # minted moments ago (RECENT_REFRESH): nothing newer to offer
                    response = client.exchange_token(fresh.token, **request)
            else:
                if not own.refresh_token:
                    # Nothing to ask with (the provider issued none): only this upstream is out of reach,
                    # and the session goes on with its own access token until that expires.
                    self._audit(rows, session, f"token for upstream {upstream.name} needs a refresh token; there is none")
                    return UpstreamTokenRefused(upstream.name, "no_refresh_token")
                response = client.refresh(own.refresh_token, **request)
        except TokenRequestRefused as e:
            if e.error == "invalid_grant" and upstream.exchange:
                # The session's access token, fresh from the provider, is refused all the same: the
                # provider will not exchange it (its policy), and only this upstream is out of reach.
                self._audit(rows, session, f"token for upstream {upstream.name} refused: {e.error}")
                return UpstreamTokenRefused(upstream.name, e.error)
            if e.error == "invalid_grant":
                return self._refused_for_upstream(rows, session, upstream, own, without_proof=dpop is None and key is not None)
            if e.error == "invalid_dpop_proof":
                # The provider will not take the session's key: as for a refresh.
                return self._end(rows, session, f"{e.error} for upstream {upstream.name}")
            self._audit(rows, session, f"token for upstream {upstream.name} refused: {e.error}")
            return UpstreamTokenRefused(upstream.name, e.error)
        except DPoPNotBound as e:
            # Bearer where a bound token was asked for (dpop = required), for this target only: that
            # token is never used, and only this upstream is out of reach. The session's own tokens
            # are bound and alive (a refresh answered so, unlike this, ends it: _end_unbound).
            if not self._keep_refused_answer(rows, session, own, upstream, e.issued()):
                return LoginRequired()
            self._audit(rows, session, f"{e.reason} (token for upstream {upstream.name})")
            return UpstreamTokenRefused(upstream.name, e.reason)
        except OIDCError as e:
            if isinstance(e, TokenResponseInvalid) and not self._keep_refused_answer(rows, session, own, upstream, e.issued()):
                return LoginRequired()
            if not isinstance(e, ProviderResting):  # not asked (it began to rest meanwhile): nothing to record
                self._audit(rows, session, f"{e.reason} (token for upstream {upstream.name})")
            return e if isinstance(e, ProviderUnavailable) else ProviderUnavailable(e.message)
        now = self.clock()
        issued = TokenSet.from_response(response, now)
        if not upstream.exchange and response.get("id_token"):
            # A refresh response like any other: its ID token must name this session's user.
            verdict = self._check_refreshed_id_token(client, response["id_token"], issued.access_token, session)
            if verdict not in (None, _UNVERIFIED):
                self._revoke_if_rotated(rows, session, issued, own.refresh_token)
                return self._end(rows, session, verdict)
        minted = UpstreamToken(
            issued.access_token, issued.access_token_expires_at, now, issued.token_type, upstream.minted_for,
            exchanged=upstream.exchange,
        )
        self._warn_if_short_lived(f"upstream {upstream.name!r}", minted.expires_at)
        rotated = response.get("refresh_token")
        if not upstream.exchange and not self._keep_successor(
            rows, session, own, rotated if isinstance(rotated, str) else None
        ):
            return LoginRequired()
        # An exchange's refresh token is only stored, never used, and revoked with the session: at
        # Keycloak it belongs to the session's own client session, and revoking it now would end
        # that (and with it the session's own refresh token). One that replaces a stored one is not
        # revoked now either, for the same reason: kept, and revoked with it (docs/architecture.md).
        kept = issued.refresh_token if upstream.exchange else None
        written = rows.write_upstream_token(session.id, upstream.name, minted, refresh_token=kept)
        if not written:
            # Ended while the provider answered: what it issued goes nowhere, and is queued, unless
            # the session was replaced in the same session at the provider as one that goes on
            # (its end revoked nothing: revoking this could end that one's, as for its own tokens).
            if upstream.exchange:
                rows.revoke_issued_later(session, TokenSet(access_token=issued.access_token, refresh_token=kept))
            return LoginRequired()
        if (
            stored is not None and stored.exchanged and not self._takes(upstream, stored)
            and (stored.expires_at is None or stored.expires_at > now)
        ):
            # A token this upstream no longer takes (set to dpop = false, or its server or token
            # settings changed), replaced while live: exchanged, so no refresh token's revocation
            # covers it, and its row, which queued it at the session's end, now holds the new one.
            # Nobody keeps it: queued now.
            rows.revoke_issued_later(session, TokenSet(access_token=stored.access_token))
        self.metrics.refreshes.inc()
        return minted, dpop

    def _keep_refused_answer(
        self, rows: SessionRows, session: SessionRecord, own: TokenSet, upstream: Upstream, issued: TokenSet
    ) -> bool:
        """What an answer for ``upstream``'s token that is not used carried that the provider would
        take all the same (``issued``), never dropped: an exchange's as _keep_refused_exchange says,
        a refresh grant's rotated refresh token kept as the session's (_keep_successor). False when
        the session ended meanwhile."""
        if upstream.exchange:
            return self._keep_refused_exchange(rows, session, issued)
        return self._keep_successor(rows, session, own, issued.refresh_token)

    @staticmethod
    def _keep_refused_exchange(rows: SessionRows, session: SessionRecord, issued: TokenSet) -> bool:
        """What an exchange answer refused for its access token carried that the provider would take
        all the same, never dropped: its refresh token kept to be revoked with the session, as a used
        answer's is (not revoked now, for the reason in _mint_upstream_token_locked), in a row of its
        own (``keep_for_revocation``: the upstream's row holds only a token it can use); else its access
        token, queued now (``token_type_hint=access_token``: a grant of its own that nothing else
        revokes, and at Keycloak an access token only goes on the revoked list, its client session
        stays), unless the session holds it (the subject token itself, the session's own, or one an
        upstream's row serves: ``revoke_issued_later`` leaves those alone). Both through
        ``revoke_issued_later``. False when the session ended meanwhile."""
        if issued.refresh_token:
            if rows.keep_for_revocation(session.id, issued.refresh_token):
                return True
            rows.revoke_issued_later(session, TokenSet(refresh_token=issued.refresh_token))
            return False
        if issued.access_token:
            rows.revoke_issued_later(session, TokenSet(access_token=issued.access_token))
        return True

    def _refused_for_upstream(
        self, rows: SessionRows, session: SessionRecord, upstream: Upstream, own: TokenSet, *, without_proof: bool
    ):
        """``invalid_grant`` for an upstream's own token asked for with the session's refresh token:
        the refresh token is dead, or the provider will not give it a token for that target. Entra
        ID answers so for a resource the person has not consented to, or that conditional access
        keeps from them (``consent_required``, AADSTS65001), whose refusal ended every session that
        called it, and at every sign-in with it on the dashboard (helper-131); so does a provider
        that binds refresh tokens to the session's key (RFC 9449 section 5) for a token asked for
        without a proof (``dpop = false``, ``without_proof``). The session's own refresh tells
        which: the session ends only when that is refused too (one made in the last 30 s counts as
        not refused); else only this upstream cannot have a token, as for an exchange refused."""
        checked = self._refresh_locked(rows, session.id, own.access_token)
        if isinstance(checked, BaseException):
            return checked
        how = " without a DPoP proof" if without_proof else ""
        self._audit(rows, session, f"token for upstream {upstream.name} refused{how}: invalid_grant")
        return UpstreamTokenRefused(upstream.name, "invalid_grant")

    @staticmethod
    def _refusal_held_as_it_is(rows: SessionRows, session_id: int, outcome):
        """An upstream's refusal, held at the session's token generation as it is once refused:
        the work under the lock may have changed it (the session's own refresh that told what an
        ``invalid_grant`` meant, a refused answer's successor kept, a refresh that was due before an
        exchange). Held at the one the request read, the next call asked the provider again at once
        (helper-134, helper-137)."""
        if isinstance(outcome, UpstreamTokenRefused):
            outcome.generation = rows.generation(session_id)
        return outcome

    def _serves(self, token: str | None, expires_at: datetime | None, refreshed_at: datetime | None,
                stale: str | None) -> bool:
        """Whether the stored token answers this caller, read under the lock, without a new one:
        only while it is fresh by its own expiry (one that expired meanwhile, on a slow call or
        behind a lock a killed process held, is refreshed), and then either minted by another
        worker while this one waited, or the very one the upstream refused moments after it was
        minted (a new one would not help, and refreshing on every such 401 would hammer the
        provider)."""
        if not token or not self._fresh(expires_at):
            return False
        return token != stale or (refreshed_at is not None and self.clock() - refreshed_at < RECENT_REFRESH)

    def _after_invalid_grant(self, rows: SessionRows, session: SessionRecord, used: str, key: DPoPKey | None):
        # Another worker, outside this lock, may have rotated the refresh token already.
        current = rows.read(session.id)
        if current is not None and current.session.ended_at is None and current.tokens.refresh_token not in (None, used):
            if current.tokens.access_token:
                return Credential.of(current.tokens.access_token, current.tokens.token_type, key)
        # Expired, revoked, or reused and its family revoked: this session cannot go on.
        return self._end(rows, session, "invalid_grant")

    def _check_refreshed_id_token(
        self, client: OIDCClient, id_token: object, access_token: str, session: SessionRecord
    ) -> str | None:
        """None if it names this user; _UNVERIFIED if it cannot be checked right now (keep the
        new access and refresh tokens, not this ID token); otherwise why the session must end."""
        if not isinstance(id_token, str):
            # Not even text: no token to check. Kept out like one that cannot be checked now, with
            # the new access and refresh tokens (a rotating provider spent the old refresh token).
            log.warning("a refresh of session %s answered an ID token that is not a string; keeping the previous one",
                        session.handle)
            return _UNVERIFIED
        try:
            claims = client.validate_id_token(id_token, nonce=None, access_token=access_token)
        except ProviderUnavailable:
            return _UNVERIFIED
        except OIDCError as e:
            if e.reason == "unknown_key":
                return _UNVERIFIED  # a key rotated within the refetch interval
            return f"refreshed ID token refused: {e.reason}"
        if claims.get("iss") != session.user_issuer or claims.get("sub") != session.user_subject:
            return "refreshed ID token names another user"
        return None

    def _end_unbound(self, rows: SessionRows, session: SessionRecord, refused: DPoPNotBound) -> LoginRequired:
        """DPoP is required and the provider answered with Bearer tokens: they are revoked (a
        rotating provider spent the old refresh token on them, so the session cannot go on)."""
        rows.revoke_issued_later(session, refused.issued())
        return self._end(rows, session, "dpop_not_bound")

    @staticmethod
    def _keep_successor(rows: SessionRows, session: SessionRecord, own: TokenSet, rotated: str | None) -> bool:
        """A refresh token the provider issued in place of the session's (it spent that one) on an
        answer whose access token is not the session's own (an upstream's token, or one refused):
        stored now, under the lock, the session's own access and ID tokens staying as they are.
        Not revoked: the session goes on with it (a rotating provider would refuse the spent one),
        and a provider that ties refresh tokens to the sign-in's session at the provider (Keycloak)
        would end the session's own with it. False when the session ended meanwhile: then it is
        revoked (unless that end left a live session beside it, ``revoke_issued_later``), and the
        session is over."""
        if not rotated or rotated == own.refresh_token:
            return True
        if rows.write_tokens(
            session.id, replace(own, refresh_token=rotated), expected_generation=session.token_generation,
            new_access_token=False,
        ):
            return True
        rows.revoke_issued_later(session, TokenSet(refresh_token=rotated))
        return False

    @staticmethod
    def _revoke_if_rotated(rows: SessionRows, session: SessionRecord, issued: TokenSet, spent: str | None) -> None:
        """An answer that is not kept, whose refresh token the provider issued in place of ``spent``
        (it spent that one on this answer): the new one is queued for revocation with the tokens
        issued with it, so that no ended session keeps a live token (unless that end left a live
        session beside it, ``revoke_issued_later``)."""
        if issued.refresh_token not in (None, spent):
            rows.revoke_issued_later(session, issued)

    def _end(self, rows: SessionRows, session: SessionRecord, why: str) -> LoginRequired:
        rows.end(session.id, EndReason.REFRESH_FAILED)
        self._audit(rows, session, f"{why}; session ended")
        return LoginRequired()

    def _audit(self, rows: SessionRows, session: SessionRecord, detail: str) -> None:
        # The handle is the row's public name (as in /account/sessions); the detail holds no token.
        log.info("refresh failed for session %s: %s", session.handle, detail)
        self.metrics.refresh_failures.labels(reason=failure_reason(detail.split(";")[0])).inc()
        AuditLog(dbsession=rows.dbsession).record(
            AuditEventType.REFRESH_FAILED, user_id=session.user_id, session_handle=session.handle, detail=detail
        )
