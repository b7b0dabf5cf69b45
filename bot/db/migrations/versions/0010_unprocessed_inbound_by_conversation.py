"""index inbound texts not yet routed by conversation: a PostgreSQL claim checks that no earlier text of
the conversation is waiting, and without it that check read the conversation's whole history

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNPROCESSED_INBOUND = "processed_at IS NULL AND direction = 'in'"


def upgrade() -> None:
    op.create_index(
        "ix_message_unprocessed_conversation",
        "message",
        ["conversation_id", "id"],
        unique=False,
        postgresql_where=sa.text(UNPROCESSED_INBOUND),
        sqlite_where=sa.text(UNPROCESSED_INBOUND),
    )


def downgrade() -> None:
    op.drop_index("ix_message_unprocessed_conversation", table_name="message")
