"""store the provider id of every part of a text sent as several messages (a long SMS), so that a reconcile
after a restart never settles another text on one of them: only the first part's id was stored, the later
parts' were kept in the sender's memory

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import bot.db

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Texts split before this revision have only their first part's id on record: the later parts' ids
    # were never stored anywhere and cannot be recovered; texts sent from now on have all of them.
    op.create_table(
        "outbox_part",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("outbox_id", sa.Integer(), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("provider_message_id", sa.String(length=128), nullable=False),
        sa.Column("created_at", bot.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["outbox_id"], ["outbox.id"], name=op.f("fk_outbox_part_outbox_id_outbox")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_part")),
        sa.UniqueConstraint("provider_message_id", name=op.f("uq_outbox_part_provider_message_id")),
    )
    op.create_index(op.f("ix_outbox_part_outbox_id"), "outbox_part", ["outbox_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_outbox_part_outbox_id"), table_name="outbox_part")
    op.drop_table("outbox_part")
