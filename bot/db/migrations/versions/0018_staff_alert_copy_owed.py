"""record on the alert that its staff group (Telegram) copy could not be queued (staff_alert.copy_owed_at),
so the in-app alert commits without its copy and the alert sweep queues the copy later, once

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import bot.db

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COPY_OWED = "copy_owed_at IS NOT NULL"


def upgrade() -> None:
    # Alerts raised before this revision had their copy queued with them, or were not raised at all.
    with op.batch_alter_table("staff_alert", schema=None) as batch_op:
        batch_op.add_column(sa.Column("copy_owed_at", bot.db.UTCDateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_staff_alert_copy_owed",
        "staff_alert",
        ["id"],
        unique=False,
        postgresql_where=sa.text(COPY_OWED),
        sqlite_where=sa.text(COPY_OWED),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_staff_alert_copy_owed",
        table_name="staff_alert",
        postgresql_where=sa.text(COPY_OWED),
        sqlite_where=sa.text(COPY_OWED),
    )
    with op.batch_alter_table("staff_alert", schema=None) as batch_op:
        batch_op.drop_column("copy_owed_at")
