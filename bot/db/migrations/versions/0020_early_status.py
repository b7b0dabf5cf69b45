"""keep a delivery status callback that comes before the sender has recorded its message's id (early_status),
and apply it when the sender does: such a callback was acknowledged and dropped, and Twilio never sends it again

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import bot.db

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "early_status",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider_message_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error_code", sa.String(length=32), nullable=True),
        sa.Column("recipient_state", sa.String(length=16), nullable=True),
        sa.Column("received_at", bot.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_early_status")),
        sa.UniqueConstraint(
            "provider_message_id", "status", name=op.f("uq_early_status_provider_message_id_status")
        ),
    )
    # The sweep that lets go of callbacks no text took reads them by age.
    op.create_index(op.f("ix_early_status_received_at"), "early_status", ["received_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_early_status_received_at"), table_name="early_status")
    op.drop_table("early_status")
