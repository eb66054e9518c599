"""posts never reuse an id: on SQLite, the posts table's key is AUTOINCREMENT

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 22:30:00

SQLite gives a new row the highest id in use plus one: once the post with the highest id was
deleted, the next post got its id. A delete form sent again (a double click, Back and resubmit)
then deleted another person's post, where it should have found none (404), and old links and
audit lines named a post they never meant (helper-135). With AUTOINCREMENT SQLite never gives an
id again that it gave from then on. The ids of posts deleted from the top before this revision
are not on record anywhere: the highest of them may be given once more (helper-137). The table is
rebuilt with its rows, ids, indexes and foreign key as they are; nothing references it.
PostgreSQL's sequence never gave an id twice: nothing changes there.
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("posts", recreate="always", table_kwargs={"sqlite_autoincrement": True}):
            pass


def downgrade():
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("posts", recreate="always", table_kwargs={"sqlite_autoincrement": False}):
            pass
