"""index conversation.identity_id (every inbound text finds its open conversation by it) and the outbox's
texts in flight by address (each claim checks them to keep a patient's texts in order)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_conversation_identity_id"), "conversation", ["identity_id"], unique=False)
    op.create_index(
        "ix_outbox_in_flight",
        "outbox",
        ["identity_id", "id"],
        unique=False,
        postgresql_where=sa.text("status = 'sending'"),
        sqlite_where=sa.text("status = 'sending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_in_flight", table_name="outbox")
    op.drop_index(op.f("ix_conversation_identity_id"), table_name="conversation")
