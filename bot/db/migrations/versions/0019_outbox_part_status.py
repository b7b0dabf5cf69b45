"""record each part's delivery status and error code with a split text's parts (outbox_part), so that a status
callback for a later part counts: the text is delivered only when every part is, and failed when any part is

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMNs with a constant default on both backends. A stored part reached Twilio: "sent" until
    # its callbacks say more (parts stored before this revision have had theirs ignored).
    op.add_column(
        "outbox_part", sa.Column("status", sa.String(length=16), nullable=False, server_default="sent")
    )
    op.add_column("outbox_part", sa.Column("error_code", sa.String(length=32), nullable=True))


def downgrade() -> None:
    op.drop_column("outbox_part", "error_code")
    op.drop_column("outbox_part", "status")
