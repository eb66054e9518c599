"""post form tokens and audit indexes: a double-submitted form makes one post; the audit log filters by user and event

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 17:30:00

``posts.form_token`` is the one-time token of the form that created the post: a second submit of
the same form finds the post the first one made instead of making another. Posts made before this
revision have none. The audit indexes serve /admin/audit's filters and its keyset paging (newest
first by id).
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("posts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("form_token", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_posts_form_token", ["form_token"], unique=True)
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index("ix_audit_events_user_id_id", ["user_id", "id"], unique=False)
        batch_op.create_index("ix_audit_events_event_id", ["event", "id"], unique=False)


def downgrade():
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_event_id")
        batch_op.drop_index("ix_audit_events_user_id_id")
    with op.batch_alter_table("posts", schema=None) as batch_op:
        batch_op.drop_index("ix_posts_form_token")
        batch_op.drop_column("form_token")
