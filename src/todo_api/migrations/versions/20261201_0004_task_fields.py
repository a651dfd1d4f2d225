"""task fields every frontend needs: priority, due date, tags, completed_at

Existing rows get the defaults (priority none, no due date, no tags); a task already done gets its `updated_at`
as `completed_at`, the best record there is of when it was finished.

Indexes, each led by the owner and ended by the tie-breaker `id`, so the new sorts and the tag filter are index
scans for one owner: priority (its rank), due_at ascending and descending (tasks without one last in both, by a
sentinel per direction), and on PostgreSQL a GIN index over (owner, tags) for `tags @> ARRAY[…]`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError

from todo_api.db import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The sort keys of due_at, one per direction, so that "no due date" comes last either way (see tasks.repository).
DUE_KEYS = {
    "postgresql": ("coalesce(due_at, 'infinity'::timestamptz)", "coalesce(due_at, '-infinity'::timestamptz)"),
    "sqlite": ("coalesce(due_at, '9999-12-31 23:59:59.999999')", "coalesce(due_at, '')"),
}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    tags_type = postgresql.ARRAY(sa.Text()) if dialect == "postgresql" else sa.Text()
    tags_default = sa.text("'{}'") if dialect == "postgresql" else sa.text("'[]'")
    op.add_column("tasks", sa.Column("priority", sa.SmallInteger(), nullable=False, server_default="0"))
    op.add_column("tasks", sa.Column("due_at", UTCDateTime(), nullable=True))
    op.add_column("tasks", sa.Column("tags", tags_type, nullable=False, server_default=tags_default))
    op.add_column("tasks", sa.Column("completed_at", UTCDateTime(), nullable=True))
    op.execute("UPDATE tasks SET completed_at = updated_at WHERE completed")
    op.create_index("ix_tasks_owner_priority", "tasks", ["user_id", "priority", "id"])
    ascending, descending = DUE_KEYS[dialect]
    op.execute(f"CREATE INDEX ix_tasks_owner_due_asc ON tasks (user_id, ({ascending}), id)")
    op.execute(f"CREATE INDEX ix_tasks_owner_due_desc ON tasks (user_id, ({descending}), id)")
    if dialect == "postgresql":
        _tag_index()


def _tag_index() -> None:
    """A GIN index over (owner, tags), so `user_id = … AND tags @> …` is one index scan for one owner whatever
    other owners tag: it needs btree_gin (a trusted extension: Neon and PostgreSQL's own contrib have it). Where
    it cannot be created, a GIN index over the tags alone, which the planner combines with the owner's index."""
    bind = op.get_bind()
    try:
        with bind.begin_nested():
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS btree_gin")
    except DBAPIError:
        op.execute("CREATE INDEX ix_tasks_tags ON tasks USING gin (tags)")
        return
    op.execute("CREATE INDEX ix_tasks_owner_tags ON tasks USING gin (user_id, tags)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_tasks_owner_tags")
        op.execute("DROP INDEX IF EXISTS ix_tasks_tags")
    op.execute("DROP INDEX ix_tasks_owner_due_desc")
    op.execute("DROP INDEX ix_tasks_owner_due_asc")
    op.drop_index("ix_tasks_owner_priority", table_name="tasks")
    for column in ("completed_at", "tags", "due_at", "priority"):
        op.drop_column("tasks", column)
