"""providers and upstream tokens: sessions and sign-ins record their provider; a token per (session, upstream)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 18:00:00

Every session and login transaction that exists before this revision was made with the one
provider of the first release, which myapp.oidc.* now names ``default``: they are given that
name. (A deployment that later lists its providers under other names keeps those sessions
working: a session whose provider name is unknown is matched to a provider by its user's issuer.)
``session_tokens`` holds each upstream's own access token for a session, encrypted like the
session's tokens; it starts empty (the first call to such an upstream asks for one).
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provider", sa.String(length=64), nullable=False, server_default="default"))
    with op.batch_alter_table("login_transactions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provider", sa.String(length=64), nullable=False, server_default="default"))
    op.create_table(
        "session_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("upstream", sa.String(length=64), nullable=False),
        sa.Column("access_token", sa.LargeBinary(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name=op.f("fk_session_tokens_session_id_sessions"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_session_tokens")),
        sa.UniqueConstraint("session_id", "upstream", name=op.f("uq_session_tokens_session_id")),
    )


def downgrade():
    op.drop_table("session_tokens")
    with op.batch_alter_table("login_transactions", schema=None) as batch_op:
        batch_op.drop_column("provider")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("provider")
