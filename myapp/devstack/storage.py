"""The provider's memory: dicts behind one lock, so every check-and-change is atomic.

waitress serves many threads and the BFF refreshes concurrently: reuse detection and single-use
codes must decide under the lock. Secrets (cookie values, codes, tokens) are kept only as
SHA-256 hashes. Nothing here does I/O, so the lock is never held for long.
"""

import hashlib
import logging
import secrets
import threading
import time
from collections import Counter
from enum import StrEnum

from myapp.devstack.models import (
    MFA_ACR,
    PASSWORD_ACR,
    AuthorizationCode,
    IssuedToken,
    Login,
    ProviderSession,
    TokenFamily,
    User,
)

log = logging.getLogger(__name__)

CODE_LIFETIME = 60
PURGE_INTERVAL = 60


class Stat(StrEnum):
    AUTHORIZATION_CODE_GRANTS = "authorization_code_grants"
    REFRESH_GRANTS = "refresh_grants"
    REFRESH_REUSE_DETECTED = "refresh_reuse_detected"
    # A rotated refresh token used again within refresh_token_reuse_interval: accepted.
    REFRESH_REUSE_IN_GRACE = "refresh_reuse_in_grace"
    REVOCATIONS = "revocations"
    BACKCHANNEL_LOGOUTS_SENT = "backchannel_logouts_sent"
    BACKCHANNEL_LOGOUT_FAILURES = "backchannel_logout_failures"
    TOKEN_EXCHANGES = "token_exchanges"


class Stats:
    """What the provider saw, for tests and benchmarks (``GET /_dev/idp/stats``)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = Counter({name.value: 0 for name in Stat})

    def increment(self, name: Stat) -> None:
        with self._lock:
            self._counts[name.value] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class TokenRejected(Exception):
    """A refresh token that cannot be used; the message is safe to send to the client."""


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


class ProviderStore:
    def __init__(self, clock=time.time, reuse_interval: float = 0):
        self.clock = clock
        self.reuse_interval = reuse_interval
        self.stats = Stats()
        self._lock = threading.Lock()
        self._sessions: dict[str, ProviderSession] = {}
        self._codes: dict[str, AuthorizationCode] = {}
        self._tokens: dict[str, IssuedToken] = {}
        self._next_purge = clock() + PURGE_INTERVAL

    # Browser sessions at the provider

    def find_session(self, key: str | None) -> ProviderSession | None:
        if not key:
            return None
        with self._lock:
            return self._sessions.get(digest(key))

    def find_session_by_sid(self, sid: str) -> ProviderSession | None:
        with self._lock:
            return next((s for s in self._sessions.values() if s.sid == sid), None)

    def sign_in(
        self, key: str | None, user: User, *, second_factor: bool = False
    ) -> tuple[str, ProviderSession, ProviderSession | None]:
        """Authenticate ``user`` in the browser holding session ``key``.

        The same user keeps the session (and its sid) with a fresh ``auth_time``; another user
        ends it. Returns the cookie value, the live session, and the session that was ended.
        """
        now = int(self.clock())
        with self._lock:
            current = self._sessions.get(digest(key)) if key else None
            if current is not None and current.user == user:
                current.auth_time = now
                current.acr, current.amr = _strength(second_factor)
                return key, current, None
            if current is not None:
                del self._sessions[current.key_hash]
            new_key = secrets.token_urlsafe(32)
            acr, amr = _strength(second_factor)
            session = ProviderSession(
                key_hash=digest(new_key), sid=secrets.token_urlsafe(16), user=user, auth_time=now, acr=acr, amr=amr
            )
            self._sessions[session.key_hash] = session
            return new_key, session, current

    def end_session(self, session: ProviderSession) -> bool:
        """End ``session``; False when it had already ended."""
        with self._lock:
            return self._sessions.pop(session.key_hash, None) is not None

    # Authorization codes

    def save_code(self, code: str, record: AuthorizationCode) -> None:
        with self._lock:
            self._purge_expired()
            self._codes[digest(code)] = record
            session = next((s for s in self._sessions.values() if s.sid == record.login.sid), None)
            if session is not None:
                session.client_ids.add(record.client_id)

    def nonce_in_use(self, client_id: str, nonce: str) -> bool:
        now = self.clock()
        with self._lock:
            return any(
                c.client_id == client_id and c.nonce == nonce and c.expires_at > now for c in self._codes.values()
            )

    def redeem_code(self, code: str, client_id: str) -> AuthorizationCode | None:
        """Spend ``code`` once. A replay revokes whatever the first use issued (RFC 6749 4.1.2)."""
        with self._lock:
            record = self._codes.get(digest(code))
            if record is None or record.client_id != client_id or record.expires_at <= self.clock():
                return None
            if record.used:
                if record.family is not None:
                    record.family.revoked = True
                log.warning("authorization code replayed by client %s; its tokens are revoked", client_id)
                return None
            record.used = True
            return record

    def start_family(self, record: AuthorizationCode) -> TokenFamily:
        with self._lock:
            record.family = TokenFamily(client_id=record.client_id, login=record.login, scope=record.scope)
            return record.family

    # Access and refresh tokens

    def save_tokens(self, family: TokenFamily, token: dict, refresh_token_lifetime: int, *, jkt: str | None = None) -> None:
        now = self.clock()
        with self._lock:
            self._purge_expired()
            if jkt is not None and family.jkt is None:
                family.jkt = jkt
            self._tokens[digest(token["access_token"])] = IssuedToken(
                kind="access_token", family=family, scope=token["scope"], expires_at=now + token["expires_in"], jkt=jkt
            )
            if "refresh_token" in token:
                # A refresh token keeps the scope of the login, whatever a refresh narrowed (RFC 6749 6).
                self._tokens[digest(token["refresh_token"])] = IssuedToken(
                    kind="refresh_token", family=family, scope=family.scope, expires_at=now + refresh_token_lifetime
                )

    def save_exchanged(self, subject: IssuedToken, token: dict, *, jkt: str | None = None) -> None:
        """An access token issued by token exchange (RFC 8693) on ``subject``: a grant of its own,
        of the same sign-in, so that revoking that sign-in's refresh token leaves it live (RFC 7009
        section 2.1 covers one grant) and only its own revocation, or its expiry, ends it."""
        family = TokenFamily(client_id=subject.family.client_id, login=subject.family.login, scope=token["scope"], jkt=jkt)
        with self._lock:
            self._tokens[digest(token["access_token"])] = IssuedToken(
                kind="access_token", family=family, scope=token["scope"], expires_at=self.clock() + token["expires_in"],
                jkt=jkt,
            )

    def find_refresh_token(self, value: str) -> IssuedToken:
        """The live refresh token ``value``; presenting a rotated one revokes its family."""
        with self._lock:
            record = self._tokens.get(digest(value))
            if record is None or record.kind != "refresh_token":
                raise TokenRejected("The refresh token is unknown.")
            self._check_refresh_token(record)
            return record

    def use_refresh_token(self, record: IssuedToken, *, rotate: bool) -> TokenFamily:
        """Check ``record`` again and, when rotating, spend it: of two concurrent uses, one wins."""
        with self._lock:
            if self._check_refresh_token(record):
                self.stats.increment(Stat.REFRESH_REUSE_IN_GRACE)
            if rotate and not record.rotated:
                record.rotated = True
                record.rotated_at = self.clock()
            return record.family

    def _check_refresh_token(self, record: IssuedToken) -> bool:
        """Refuses a token that cannot be used; True when it is a spent one still in its grace."""
        if record.family.revoked or record.revoked:
            raise TokenRejected("The refresh token has been revoked.")
        if record.expires_at <= self.clock():
            raise TokenRejected("The refresh token has expired.")
        if record.rotated and self.clock() - record.rotated_at <= self.reuse_interval:
            # Like Okta's grace period and Auth0's reuse interval: the client that rotated it may
            # have died before storing the answer; the family lives on.
            return True
        if record.rotated:
            record.family.revoked = True
            self.stats.increment(Stat.REFRESH_REUSE_DETECTED)
            log.warning(
                "refresh token reuse by client %s for %s: every token of that login is revoked",
                record.family.client_id,
                record.family.login.user.subject,
            )
            raise TokenRejected("The refresh token was already used; every token of this login is now revoked.")
        return False

    def find_token(self, value: str, kind_hint: str | None = None) -> IssuedToken | None:
        # A wrong hint is only a hint (RFC 7009 2.1): the token is found whatever its kind.
        with self._lock:
            return self._tokens.get(digest(value))

    def revoke(self, record: IssuedToken) -> None:
        """Revoke one access token, or a refresh token and its whole family (RFC 7009 2.1)."""
        with self._lock:
            if record.kind == "refresh_token":
                record.family.revoked = True
            record.revoked = True

    def active_access_token(self, value: str) -> IssuedToken | None:
        with self._lock:
            record = self._tokens.get(digest(value))
            if (
                record is None
                or record.kind != "access_token"
                or record.revoked
                or record.family.revoked
                or record.expires_at <= self.clock()
            ):
                return None
            return record

    def _purge_expired(self) -> None:
        now = self.clock()
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_INTERVAL
        self._codes = {k: c for k, c in self._codes.items() if c.expires_at > now}
        self._tokens = {k: t for k, t in self._tokens.items() if t.expires_at > now}


def new_login(session: ProviderSession) -> Login:
    return Login(user=session.user, sid=session.sid, auth_time=session.auth_time, acr=session.acr, amr=session.amr)


def _strength(second_factor: bool) -> tuple[str, tuple[str, ...]]:
    return (MFA_ACR, ("pwd", "otp")) if second_factor else (PASSWORD_ACR, ("pwd",))
