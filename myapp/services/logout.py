"""Signing out: because the person asked (RP-initiated logout), or because the provider said so
(back-channel logout)."""

import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from myapp.errors import ServiceUnavailable
from myapp.models import SeenLogoutToken, User, insert_ignoring_duplicates
from myapp.models.meta import utcnow
from myapp.services.audit import AuditEventType, AuditLog
from myapp.services.oidc import (
    CLOCK_SKEW,
    MAX_TOKEN_AGE,
    OIDCClient,
    OIDCError,
    Providers,
    ProviderUnavailable,
    Revocation,
    unverified_issuer,
)
from myapp.services.sessions import EndReason, SessionRecord, SessionStore
from myapp.services.tokens import TokenManager
from myapp.services.tokenset import TokenSet

log = logging.getLogger(__name__)

# A slow provider must not hold up the local sign-out.
REVOCATION_TIMEOUT = 5.0


class LogoutService:
    def __init__(
        self,
        *,
        dbsession: Session,
        providers: Providers,
        tokens: TokenManager,
        sessions: SessionStore,
        audit: AuditLog,
        clock: Callable[[], datetime] = utcnow,
    ):
        self.dbsession = dbsession
        self.providers = providers
        self.tokens = tokens
        self.sessions = sessions
        self.audit = audit
        self.clock = clock

    def logout(self, session: SessionRecord, *, ip_address: str | None) -> str | None:
        """End the person's session, revoke its refresh token, record it; return where the browser
        goes next to sign out at the provider too (None when the provider offers no such page).

        Never fails open: when the refresh lock cannot be had (Redis down, a refresh stuck), the
        session ends without it and its tokens go to the revoker.
        """
        client = self.providers.of_session(session.provider, session.user_issuer)
        try:
            # Under the refresh lock: a refresh racing this logout can neither store new tokens
            # afterwards nor leave one unrevoked.
            tokens = self.tokens.end_session(session.id, EndReason.LOGOUT)
        except (ProviderUnavailable, ServiceUnavailable) as e:
            log.warning("signing out without the refresh lock: %s", getattr(e, "message", e))
            current = self.sessions.rows.read(session.id)
            # Ending moves whatever tokens the row holds at that moment to the revoker, and a
            # refresh that lands later finds the session ended and keeps nothing.
            if not self.sessions.rows.end(session.id, EndReason.LOGOUT):
                return self._ended_meanwhile(client, session)
            outcome = "refresh lock unavailable; revocation queued"
            id_token = current.tokens.id_token if current else None
        else:
            if tokens is None:
                return self._ended_meanwhile(client, session)
            revocation = self.revoke_at_provider(client, tokens) if client is not None else None
            if revocation is Revocation.FAILED or revocation is None:
                # Not answered, or a provider this process does not know: queued, for the revoker of a
                # process that knows it (in a rolling deployment) to revoke.
                self.sessions.rows.revoke_later(session.user_issuer, tokens)
            outcome = {
                Revocation.REVOKED: "refresh token revoked at the provider",
                Revocation.FAILED: "revocation queued (the provider did not answer)",
                None: "revocation queued (this process does not know the provider)",
            }.get(revocation, "")
            id_token = tokens.id_token
        self.audit.record(
            AuditEventType.LOGOUT,
            user_id=session.user_id,
            actor_id=session.user_id,
            session_handle=session.handle,
            ip_address=ip_address,
            detail=outcome,
        )
        return client.end_session_url(id_token_hint=id_token) if client is not None else None

    @staticmethod
    def _ended_meanwhile(client: OIDCClient | None, session: SessionRecord) -> str | None:
        """A sign-out of a session another request ended meanwhile (a second click, another tab, on
        any process): that one revokes and records it, so this one has nothing to add. Its ID
        token went with it; the provider's page is still where the browser goes."""
        log.info("sign-out of session %s, which another request had just ended", session.handle)
        return client.end_session_url(id_token_hint=None) if client is not None else None

    def signed_out_already(self, session: SessionRecord) -> str | None:
        """Where a sign-out of a session that a sign-out here ended already goes on to (the
        browser never had that one's answer): the provider's sign-out page, as for a sign-out that
        finds its session ended meanwhile."""
        return self._ended_meanwhile(self.providers.of_session(session.provider, session.user_issuer), session)

    @staticmethod
    def revoke_at_provider(client: OIDCClient, tokens: TokenSet) -> Revocation:
        """RFC 7009, bounded so that a slow provider cannot hold up the local sign-out."""
        timeout = min(client.settings.http_timeout, REVOCATION_TIMEOUT)
        if tokens.refresh_token:
            return client.revoke(tokens.refresh_token, "refresh_token", timeout=timeout)
        if tokens.access_token:
            return client.revoke(tokens.access_token, "access_token", timeout=timeout)
        return Revocation.NOT_OFFERED

    def backchannel_logout(self, logout_token: str, *, ip_address: str | None) -> tuple[dict, int]:
        """Validate a logout token with the keys and rules of the provider its ``iss`` names, refuse
        a replay, end the sessions it names at that provider only, and record it against each person
        signed out. Returns (claims, sessions ended)."""
        if not logout_token:
            # A provider that posts JSON, or names it otherwise, is told so, not sent to check its
            # issuer (helper-142).
            raise OIDCError(
                "missing_token", "The request has no logout_token (it is sent as a form: application/x-www-form-urlencoded)."
            )
        issuer = unverified_issuer(logout_token)
        if issuer is None:
            raise OIDCError("malformed_token", "The logout token is not a signed JWT that names its issuer.")
        client = self.providers.by_issuer(issuer)
        if client is None:
            raise OIDCError("unknown_issuer", "The logout token is not from a provider this app trusts.")
        claims = client.validate_logout_token(logout_token)
        self.dbsession.execute(delete(SeenLogoutToken).where(SeenLogoutToken.expires_at < self.clock()))
        issuer = client.settings.issuer
        if not self._first_sighting(issuer, claims):
            raise OIDCError("replayed_jti", "This logout token was already used.")
        # Users are keyed by (issuer, sub): only this provider's people, and so its sessions.
        of_issuer = select(User.id).where(User.issuer == issuer)
        if claims.get("sub") is not None:
            of_issuer = of_issuer.where(User.subject == claims["sub"])
        by_sid, without_sid = Counter(), Counter()  # user id -> sessions ended
        if claims.get("sid") is not None:
            # With the user named too, their sessions whose sid is unknown (an ID token that named
            # none) may be the one the provider ended: those end as well (SPEC.md: "else all of
            # that user's"). Without a user, nothing tells whose such a session is.
            ended = []
            self.sessions.end_by_provider_sid(
                of_issuer, claims["sid"], EndReason.BACKCHANNEL, unknown_sid_too=claims.get("sub") is not None,
                ended=ended,
            )
            for row in ended:
                (by_sid if row.provider_sid is not None else without_sid)[row.user_id] += 1
        else:
            for user_id in self.dbsession.scalars(of_issuer).all():
                without_sid[user_id] += self.sessions.end_all_for_user(user_id, EndReason.BACKCHANNEL)
        for user_id in sorted(set(by_sid) | {uid for uid, n in without_sid.items() if n}):
            self.audit.record(
                AuditEventType.BACKCHANNEL_LOGOUT,
                user_id=user_id,
                ip_address=ip_address,
                detail=_how_ended(by_sid[user_id], without_sid[user_id], sid_named=claims.get("sid") is not None),
            )
        return claims, by_sid.total() + without_sid.total()

    def _first_sighting(self, issuer: str, claims: dict) -> bool:
        """Record the jti; False if some process recorded it before (atomic: INSERT .. ON CONFLICT)."""
        now = self.clock()
        # Keep the record as long as the token could still be accepted: until it expires, and
        # never past the oldest issue time the checks accept.
        horizon = claims["iat"] + MAX_TOKEN_AGE
        if claims.get("exp") is not None:
            horizon = min(horizon, claims["exp"])
        remaining = max(horizon - now.timestamp(), 0) + CLOCK_SKEW
        return insert_ignoring_duplicates(
            self.dbsession,
            SeenLogoutToken,
            {"issuer": issuer, "jti": claims["jti"], "expires_at": now + timedelta(seconds=remaining)},
            ["issuer", "jti"],
        )


def _how_ended(by_sid: int, without_sid: int, *, sid_named: bool) -> str:
    """A back-channel logout's audit detail: how many of a person's sessions it ended, and how
    they were found (by the token's sid, or by its sub: all of theirs, or those without a sid)."""
    if not sid_named:
        how = "by sub"
    elif not without_sid:
        how = "by sid"
    elif not by_sid:
        how = "by sub: signed in without a sid"
    else:
        how = f"{by_sid} by sid, {without_sid} by sub: signed in without a sid"
    return f"{by_sid + without_sid} session(s) ended ({how})"
