"""remember how many parts of a multi-part text reached the provider, so an attempt cut short after some
parts resumes after them instead of leaving the patient with half a message

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN on both backends (SQLite takes it with a constant default): the table keeps its
    # partial indexes and, on PostgreSQL, its trigger.
    op.add_column("outbox", sa.Column("parts_sent", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("outbox", "parts_sent")
