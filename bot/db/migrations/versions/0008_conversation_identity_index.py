"""index conversation.identity_id: every inbound text finds its open conversation by it

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_conversation_identity_id"), "conversation", ["identity_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_conversation_identity_id"), table_name="conversation")
