"""exchanged upstream tokens: which upstream tokens came from token exchange, and the refresh token an exchange answered with, so that ending a session revokes them

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 11:30:00

An upstream's token obtained by RFC 8693 token exchange has the session's access token as its
source, not the refresh token that ending a session revokes: it is queued for revocation of its
own (its refresh token, when the exchange answered with one, else the access token). Tokens stored
before this revision are marked as not exchanged (nobody knows which were): they are short-lived
access tokens, left to expire as before.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("session_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("exchanged", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("refresh_token", sa.LargeBinary(), nullable=True))


def downgrade():
    # recreate="never": a native DROP COLUMN (SQLite 3.35+), as 0008's downgrade explains.
    with op.batch_alter_table("session_tokens", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("refresh_token")
        batch_op.drop_column("exchanged")
