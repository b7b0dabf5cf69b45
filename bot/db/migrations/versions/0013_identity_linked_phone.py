"""keep the number a Telegram chat was linked by (a shared contact), so that the link follows the patient
file: it is withdrawn when that number is later filed for another patient or for two

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Links made before this revision have no number on record: they stay as they are (the number they
    # rest on was never stored), and a chat that shares its contact again is recorded in full.
    op.add_column("channel_identity", sa.Column("linked_phone", sa.String(length=20), nullable=True))
    op.create_index("ix_channel_identity_linked_phone", "channel_identity", ["linked_phone"])


def downgrade() -> None:
    op.drop_index("ix_channel_identity_linked_phone", table_name="channel_identity")
    op.drop_column("channel_identity", "linked_phone")
