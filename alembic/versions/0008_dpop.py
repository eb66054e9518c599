"""dpop: a session's own key pair (made with its sign-in) and whether each stored access token is bound to it (RFC 9449)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 04:00:00

Sessions from before this revision have no key and Bearer tokens (NULL in both columns), which is
what they are; so do sign-ins under way.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("login_transactions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dpop_key", sa.LargeBinary(), nullable=True))
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("access_token_type", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("dpop_key", sa.LargeBinary(), nullable=True))
    with op.batch_alter_table("session_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("token_type", sa.String(length=16), nullable=True))


def downgrade():
    # recreate="never": a native DROP COLUMN (SQLite 3.35+). Rebuilding "sessions" on SQLite would
    # drop the old table, and with foreign keys on, cascade into session_tokens and every other child.
    with op.batch_alter_table("session_tokens", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("token_type")
    with op.batch_alter_table("sessions", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("dpop_key")
        batch_op.drop_column("access_token_type")
    with op.batch_alter_table("login_transactions", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("dpop_key")
