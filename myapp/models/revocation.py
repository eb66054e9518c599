from datetime import datetime

from sqlalchemy import Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from .meta import Base, utcnow


class TokenRevocation(Base):
    """A token of an ended session, still to be revoked at its provider (RFC 7009).

    Written in the same transaction that ends the session (which wipes the token from the session
    row), so that no ended session keeps a live token at the provider; the revoker works through
    the rows in the background and deletes each once the provider has answered.
    """

    __tablename__ = "token_revocations"
    __table_args__ = (Index("ix_token_revocations_next_attempt_at", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    issuer: Mapped[str] = mapped_column(String(512))
    # Encrypted like the session's tokens (myapp.tokens.encryption_keys).
    token: Mapped[bytes] = mapped_column(LargeBinary)
    token_type_hint: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    attempts: Mapped[int] = mapped_column(default=0)
