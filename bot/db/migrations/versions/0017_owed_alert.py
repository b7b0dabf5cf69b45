"""record the staff alert a patient message owes when raising it failed (owed_alert), so the alert sweep
raises it later, once, instead of the failure being only logged

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import bot.db

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "owed_alert",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("conversation_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("emergency_kind", sa.String(length=32), nullable=True),
        sa.Column("created_at", bot.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_attempt_at", bot.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["conversation_id"], ["conversation.id"], name=op.f("fk_owed_alert_conversation_id_conversation")
        ),
        sa.ForeignKeyConstraint(["message_id"], ["message.id"], name=op.f("fk_owed_alert_message_id_message")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_owed_alert")),
        sa.UniqueConstraint("message_id", name=op.f("uq_owed_alert_message_id")),
    )


def downgrade() -> None:
    op.drop_table("owed_alert")
