"""step-up: how each session signed in, and what a sign-in asked for

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 18:40:00

``sessions.acr``, ``amr`` (a JSON list) and ``auth_time`` come from the ID token of the sign-in
that made the session; sessions from before this revision have none, which satisfies no
step-up rule (such a session is asked to sign in again where a rule applies). A login
transaction records the ``acr_values`` and ``max_age`` it asked the provider for, so that the
callback can check the answer against them.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("acr", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("amr", sa.String(length=1000), nullable=True))
        batch_op.add_column(sa.Column("auth_time", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("login_transactions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("acr_values", sa.String(length=1000), nullable=True))
        batch_op.add_column(sa.Column("max_age", sa.Integer(), nullable=True))


def downgrade():
    # recreate="never": a native DROP COLUMN (SQLite 3.35+). Rebuilding "sessions" on SQLite would
    # drop the old table, and with foreign keys on, cascade into session_tokens and every other child.
    with op.batch_alter_table("login_transactions", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("max_age")
        batch_op.drop_column("acr_values")
    with op.batch_alter_table("sessions", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("auth_time")
        batch_op.drop_column("amr")
        batch_op.drop_column("acr")
