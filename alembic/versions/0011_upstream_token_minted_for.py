"""upstream tokens minted for: what each upstream's own token was asked for with and sent to, so that one minted before a restart that changed the upstream is never sent

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 09:00:00

A session's token of an upstream's own was found by the upstream's name alone: after a restart
that pointed that name at another server, or changed the token's scope, resources, parameters or
exchange, the stored token went on to the server now behind the name until it expired. Each token
now records a digest of the settings it was minted for (``settings.Upstream.minted_for``); one
that differs is not sent, and another is asked for. Tokens stored before this revision have none
(nobody knows what they were minted for): each is asked for again once, at its session's next
call to that upstream.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("session_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("minted_for", sa.String(length=64), nullable=True))


def downgrade():
    # recreate="never": a native DROP COLUMN (SQLite 3.35+), as 0008's downgrade explains.
    with op.batch_alter_table("session_tokens", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("minted_for")
