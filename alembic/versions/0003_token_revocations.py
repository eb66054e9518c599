"""token revocations: the tokens of ended sessions, still to be revoked at the provider

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 10:40:00

The tokens of sessions that ended before this revision were already wiped from their rows, so
there is nothing to carry over.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "token_revocations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("issuer", sa.String(length=512), nullable=False),
        sa.Column("token", sa.LargeBinary(), nullable=False),
        sa.Column("token_type_hint", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_token_revocations")),
    )
    with op.batch_alter_table("token_revocations", schema=None) as batch_op:
        batch_op.create_index("ix_token_revocations_next_attempt_at", ["next_attempt_at"], unique=False)


def downgrade():
    with op.batch_alter_table("token_revocations", schema=None) as batch_op:
        batch_op.drop_index("ix_token_revocations_next_attempt_at")
    op.drop_table("token_revocations")
