"""foundation: users, sessions, posts, audit events

Revision ID: 0001
Revises: 
Create Date: 2026-11-29 13:03:22.570699
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("users",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("issuer", sa.String(length=512), nullable=False),
    sa.Column("subject", sa.String(length=255), nullable=False),
    sa.Column("name", sa.String(length=255), nullable=False),
    sa.Column("email", sa.String(length=320), nullable=True),
    sa.Column("groups", sa.JSON(), nullable=False),
    sa.Column("disabled", sa.Boolean(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    sa.UniqueConstraint("issuer", "subject", name="uq_users_issuer_subject")
    )
    op.create_table("audit_events",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("event", sa.String(length=64), nullable=False),
    sa.Column("user_id", sa.Integer(), nullable=True),
    sa.Column("actor_id", sa.Integer(), nullable=True),
    sa.Column("session_handle", sa.String(length=32), nullable=True),
    sa.Column("ip_address", sa.String(length=64), nullable=False),
    sa.Column("detail", sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(["actor_id"], ["users.id"], name=op.f("fk_audit_events_actor_id_users"), ondelete="SET NULL"),
    sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_audit_events_user_id_users"), ondelete="SET NULL"),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events"))
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index("ix_audit_events_created_at", ["created_at"], unique=False)

    op.create_table("posts",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("owner_id", sa.Integer(), nullable=False),
    sa.Column("title", sa.String(length=200), nullable=False),
    sa.Column("body", sa.Text(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name=op.f("fk_posts_owner_id_users"), ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_posts"))
    )
    with op.batch_alter_table("posts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_posts_owner_id"), ["owner_id"], unique=False)

    op.create_table("sessions",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("id_hash", sa.String(length=64), nullable=False),
    sa.Column("handle", sa.String(length=32), nullable=False),
    sa.Column("user_id", sa.Integer(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("end_reason", sa.String(length=32), nullable=True),
    sa.Column("user_agent", sa.String(length=512), nullable=False),
    sa.Column("ip_address", sa.String(length=64), nullable=False),
    sa.Column("provider_sid", sa.String(length=255), nullable=True),
    sa.Column("csrf_token", sa.String(length=64), nullable=False),
    sa.Column("access_token", sa.LargeBinary(), nullable=True),
    sa.Column("refresh_token", sa.LargeBinary(), nullable=True),
    sa.Column("id_token", sa.LargeBinary(), nullable=True),
    sa.Column("access_token_expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("token_generation", sa.Integer(), nullable=False),
    sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_sessions_user_id_users"), ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
    sa.UniqueConstraint("handle", name=op.f("uq_sessions_handle")),
    sa.UniqueConstraint("id_hash", name=op.f("uq_sessions_id_hash"))
    )
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.create_index("ix_sessions_provider_sid", ["provider_sid"], unique=False)
        batch_op.create_index("ix_sessions_user_id_ended_at", ["user_id", "ended_at"], unique=False)



def downgrade():
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_sessions_user_id_ended_at")
        batch_op.drop_index("ix_sessions_provider_sid")

    op.drop_table("sessions")
    with op.batch_alter_table("posts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_posts_owner_id"))

    op.drop_table("posts")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_created_at")

    op.drop_table("audit_events")
    op.drop_table("users")
