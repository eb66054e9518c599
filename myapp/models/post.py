from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .meta import Base, utcnow
from .user import User


class Post(Base):
    __tablename__ = "posts"
    # AUTOINCREMENT: SQLite gives a deleted highest id to the next row otherwise, and a delete
    # form sent again deleted that other post (migration 0012).
    __table_args__ = (Index("ix_posts_form_token", "form_token", unique=True), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # The one-time token of the form that made this post: a second submit finds it (see views/posts.py).
    form_token: Mapped[str | None] = mapped_column(String(64))

    owner: Mapped[User] = relationship(lazy="joined", innerjoin=True)
