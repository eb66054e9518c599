"""session browser binding: which browser's sign-in made a session, so that sessions no browser can reach any more are ended

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 03:10:00

Sign-ins completed at the same moment in several tabs of one browser each made a session, of
which the browser keeps one cookie. The column holds the SHA-256 of the browser's login-binding
cookie (what login_transactions.browser_hash holds), for the revoker's sweep to end the others.
Sessions from before this revision have none (NULL) and are left as they are.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("browser_binding", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_sessions_browser_binding", ["browser_binding"], unique=False)


def downgrade():
    # recreate="never": a native DROP COLUMN (SQLite 3.35+), as 0008's downgrade explains.
    with op.batch_alter_table("sessions", schema=None, recreate="never") as batch_op:
        batch_op.drop_index("ix_sessions_browser_binding")
        batch_op.drop_column("browser_binding")
