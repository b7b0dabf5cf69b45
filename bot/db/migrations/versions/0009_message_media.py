"""keep a message's attachments (MMS links, Telegram file references) in their own column, not in its text

Until now they were appended to the body as "[media] <link>" lines, which a patient could also type.
Those lines move to the new column.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MARK = "[media] "

message = sa.table(
    "message",
    sa.column("id", sa.Integer),
    sa.column("direction", sa.String),
    sa.column("body", sa.Text),
    sa.column("media", sa.JSON(none_as_null=True)),
)


def split_media(body: str) -> tuple[str, list[str]]:
    """Return the text and the attachment links of a body stored the old way."""
    lines = body.split("\n")
    media = [line.removeprefix(MARK) for line in lines if line.startswith(MARK)]
    text = "\n".join(line for line in lines if not line.startswith(MARK))
    return text, media


def upgrade() -> None:
    op.add_column("message", sa.Column("media", sa.JSON(none_as_null=True), nullable=True))
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(message.c.id, message.c.body).where(message.c.direction == "in", message.c.body.like("%[media] %"))
    ).all()
    for row in rows:
        text, media = split_media(row.body)
        if media:
            bind.execute(message.update().where(message.c.id == row.id).values(body=text, media=media))


def downgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(message.c.id, message.c.body, message.c.media).where(message.c.media.is_not(None))).all()
    for row in rows:
        body = (row.body or "") + "".join(f"\n{MARK}{link}" for link in row.media or [])
        bind.execute(message.update().where(message.c.id == row.id).values(body=body))
    op.drop_column("message", "media")
