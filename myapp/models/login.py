from datetime import datetime

from sqlalchemy import Index, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .meta import Base, utcnow


class LoginTransaction(Base):
    """A sign-in in progress: what the callback needs, bound to the browser that started it.

    Only hashes of ``state`` and of the browser's binding cookie are stored; the nonce and the PKCE
    verifier are encrypted like tokens. Single-use: the callback deletes the row.
    """

    __tablename__ = "login_transactions"
    __table_args__ = (Index("ix_login_transactions_expires_at", "expires_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    state_hash: Mapped[str] = mapped_column(String(64), unique=True)
    browser_hash: Mapped[str] = mapped_column(String(64))
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    code_verifier: Mapped[bytes] = mapped_column(LargeBinary)
    next_path: Mapped[str] = mapped_column(String(2000), default="/")
    # The provider it was started for: only that provider's callback may complete it (mix-up defence).
    provider: Mapped[str] = mapped_column(String(64), default="default", server_default="default")
    # What it asked the provider for (step-up): the callback checks the ID token against them.
    acr_values: Mapped[str | None] = mapped_column(String(1000))
    max_age: Mapped[int | None]
    # The DPoP key made for this sign-in (encrypted), whose thumbprint the authorization request
    # named in dpop_jkt (RFC 9449 section 10); the session keeps it. None without DPoP.
    dpop_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


class SeenLogoutToken(Base):
    """A back-channel logout token already honoured, kept until it would have expired anyway."""

    __tablename__ = "seen_logout_tokens"
    __table_args__ = (
        UniqueConstraint("issuer", "jti", name="uq_seen_logout_tokens_issuer_jti"),
        Index("ix_seen_logout_tokens_expires_at", "expires_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    issuer: Mapped[str] = mapped_column(String(512))
    jti: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[datetime]
