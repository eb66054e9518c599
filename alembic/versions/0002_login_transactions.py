"""login transactions and seen logout tokens

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 13:12:04.056664
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("login_transactions",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("state_hash", sa.String(length=64), nullable=False),
    sa.Column("browser_hash", sa.String(length=64), nullable=False),
    sa.Column("nonce", sa.LargeBinary(), nullable=False),
    sa.Column("code_verifier", sa.LargeBinary(), nullable=False),
    sa.Column("next_path", sa.String(length=2000), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_login_transactions")),
    sa.UniqueConstraint("state_hash", name=op.f("uq_login_transactions_state_hash"))
    )
    with op.batch_alter_table("login_transactions", schema=None) as batch_op:
        batch_op.create_index("ix_login_transactions_expires_at", ["expires_at"], unique=False)

    op.create_table("seen_logout_tokens",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("issuer", sa.String(length=512), nullable=False),
    sa.Column("jti", sa.String(length=255), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_seen_logout_tokens")),
    sa.UniqueConstraint("issuer", "jti", name="uq_seen_logout_tokens_issuer_jti")
    )
    with op.batch_alter_table("seen_logout_tokens", schema=None) as batch_op:
        batch_op.create_index("ix_seen_logout_tokens_expires_at", ["expires_at"], unique=False)



def downgrade():
    with op.batch_alter_table("seen_logout_tokens", schema=None) as batch_op:
        batch_op.drop_index("ix_seen_logout_tokens_expires_at")

    op.drop_table("seen_logout_tokens")
    with op.batch_alter_table("login_transactions", schema=None) as batch_op:
        batch_op.drop_index("ix_login_transactions_expires_at")

    op.drop_table("login_transactions")
