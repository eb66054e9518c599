from datetime import datetime

from sqlalchemy import ForeignKey, Index, LargeBinary, String, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .meta import Base, utcnow
from .user import User


class UserSession(Base):
    """A signed-in browser. The cookie carries a random id; this row holds only its SHA-256.

    ``handle`` is a second, non-secret random name for the row, used in URLs such as
    ``/account/sessions/{handle}/revoke``. Tokens are Fernet-encrypted. An ended session keeps its
    row (tokens wiped) so the browser can be told why it was signed out, until purged.
    """

    __tablename__ = "sessions"
    __table_args__ = (
        Index("ix_sessions_user_id_ended_at", "user_id", "ended_at"),
        Index("ix_sessions_provider_sid", "provider_sid"),
        Index("ix_sessions_browser_binding", "browser_binding"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    id_hash: Mapped[str] = mapped_column(String(64), unique=True)
    handle: Mapped[str] = mapped_column(String(32), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    end_reason: Mapped[str | None] = mapped_column(String(32))
    user_agent: Mapped[str] = mapped_column(String(512), default="")
    ip_address: Mapped[str] = mapped_column(String(64), default="")
    # The provider it signed in with (myapp.providers; "default" for myapp.oidc.*).
    provider: Mapped[str] = mapped_column(String(64), default="default", server_default="default")
    provider_sid: Mapped[str | None] = mapped_column(String(255))
    # How the person signed in (the ID token's acr, amr as a JSON list, auth_time): step-up rules read them.
    acr: Mapped[str | None] = mapped_column(String(255))
    amr: Mapped[str | None] = mapped_column(String(1000))
    auth_time: Mapped[datetime | None]
    csrf_token: Mapped[str] = mapped_column(String(64))
    access_token: Mapped[bytes | None] = mapped_column(LargeBinary)
    refresh_token: Mapped[bytes | None] = mapped_column(LargeBinary)
    id_token: Mapped[bytes | None] = mapped_column(LargeBinary)
    access_token_expires_at: Mapped[datetime | None]
    # "DPoP" for a token bound to the session's key (RFC 9449); None: Bearer.
    access_token_type: Mapped[str | None] = mapped_column(String(16))
    # The session's own DPoP key pair (private JWK, encrypted like the tokens); None without DPoP.
    dpop_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Incremented by every refresh: a worker that waited for the lock sees another one's work.
    token_generation: Mapped[int] = mapped_column(default=0)
    refreshed_at: Mapped[datetime | None]
    # The SHA-256 of the login-binding cookie of the browser that signed in (as its login transaction
    # keeps it); None for sessions from before 0009. A browser holds one session cookie, so of the
    # live sessions with one binding only the one it used last can still be reached: sign-ins
    # completed together in several tabs leave the others, which the revoker's sweep ends.
    browser_binding: Mapped[str | None] = mapped_column(String(64))

    user: Mapped[User] = relationship(lazy="joined", innerjoin=True)



class SessionToken(Base):
    """An upstream's own access token for a session (SPEC.md "Tokens for each upstream"), encrypted
    like the session's. Written only under the session's refresh lock; gone with the session, which
    queues an exchanged one (its refresh token, else its access token) for revocation: its source
    is the session's access token, not the refresh token whose revocation covers the others."""

    __tablename__ = "session_tokens"
    __table_args__ = (UniqueConstraint("session_id", "upstream", name="uq_session_tokens_session_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    upstream: Mapped[str] = mapped_column(String(64))
    access_token: Mapped[bytes] = mapped_column(LargeBinary)
    # "DPoP" for a token bound to the session's key; None: Bearer.
    token_type: Mapped[str | None] = mapped_column(String(16))
    # What the token was minted for: the upstream's settings digest (settings.Upstream.minted_for)
    # bound to the token (services.sessions.minted_label). One that is not the upstream's now (a
    # restart changed its server or its token's parameters) is never sent, and neither is one
    # stored before it was recorded (None) or written since by code that does not know it.
    minted_for: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[datetime | None]
    refreshed_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Obtained by token exchange (RFC 8693) rather than with the session's refresh token.
    exchanged: Mapped[bool] = mapped_column(default=False, server_default=false())
    # A refresh token the exchange answered with, encrypted; never used, kept to be revoked. A row
    # named "~..." (no upstream's name: SessionRows.keep_for_revocation) keeps only such a token.
    refresh_token: Mapped[bytes | None] = mapped_column(LargeBinary)
