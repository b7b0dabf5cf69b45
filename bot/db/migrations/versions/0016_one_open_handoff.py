"""allow at most one open hand-off per conversation, in the database: the writers that open one look for
an open one first, most under the conversation's lock, and a unique index now settles a race between
those that do not; hand-offs opened twice before this revision are resolved down to the oldest

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-28
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import bot.db

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = "resolved_at IS NULL"

handoff = sa.table(
    "handoff",
    sa.column("id", sa.Integer()),
    sa.column("conversation_id", sa.Integer()),
    sa.column("created_at", bot.db.UTCDateTime()),
    sa.column("claimed_at", bot.db.UTCDateTime()),
    sa.column("claimed_by_id", sa.Integer()),
    sa.column("first_response_at", bot.db.UTCDateTime()),
    sa.column("resolved_at", bot.db.UTCDateTime()),
)
promise = sa.table(
    "promise",
    sa.column("kind", sa.String()),
    sa.column("subject_type", sa.String()),
    sa.column("subject_id", sa.Integer()),
    sa.column("status", sa.String()),
)


def _resolve_duplicates(connection: sa.Connection) -> None:
    """Keep each conversation's oldest open hand-off (then the lowest id) and resolve the others now.

    A resolved duplicate is settled as closing a chat settles its hand-off: its reply promise still open is
    cancelled. What staff did on a duplicate is not lost: the kept hand-off takes the earliest claim and
    first staff reply among its duplicates where it has none of its own (inbox, SLA alerts and reports
    read them there).
    """
    rows = connection.execute(
        sa.select(handoff.c.id, handoff.c.conversation_id, handoff.c.claimed_at, handoff.c.claimed_by_id,
                  handoff.c.first_response_at)
        .where(handoff.c.resolved_at.is_(None))
        .order_by(handoff.c.conversation_id, handoff.c.created_at, handoff.c.id)
    ).all()  # fmt: skip
    kept: dict[int, sa.Row] = {}
    dropped: dict[int, list[sa.Row]] = {}
    for row in rows:
        if row.conversation_id in kept:
            dropped.setdefault(row.conversation_id, []).append(row)
        else:
            kept[row.conversation_id] = row
    if not dropped:
        return
    now = datetime.now(tz=UTC)
    for conversation_id, others in dropped.items():
        keeper = kept[conversation_id]
        taken: dict[str, object] = {}
        claims = sorted((o for o in others if o.claimed_at is not None), key=lambda o: (o.claimed_at, o.id))
        if keeper.claimed_at is None and claims:
            taken.update(claimed_at=claims[0].claimed_at, claimed_by_id=claims[0].claimed_by_id)
        replies = sorted(o.first_response_at for o in others if o.first_response_at is not None)
        if keeper.first_response_at is None and replies:
            taken["first_response_at"] = replies[0]
        if taken:
            connection.execute(sa.update(handoff).where(handoff.c.id == keeper.id).values(**taken))
    ids = sorted(o.id for others in dropped.values() for o in others)
    connection.execute(sa.update(handoff).where(handoff.c.id.in_(ids)).values(resolved_at=now))
    connection.execute(
        sa.update(promise)
        .where(
            promise.c.subject_type == "handoff",
            promise.c.subject_id.in_(ids),
            promise.c.kind == "handoff_reply",
            promise.c.status == "open",
        )
        .values(status="cancelled")
    )


def upgrade() -> None:
    _resolve_duplicates(op.get_bind())
    op.create_index(
        "ix_handoff_one_open_per_conversation",
        "handoff",
        ["conversation_id"],
        unique=True,
        postgresql_where=sa.text(OPEN),
        sqlite_where=sa.text(OPEN),
    )


def downgrade() -> None:
    # The duplicates resolved on the way up stay resolved: nothing tells them apart from hand-offs staff closed.
    op.drop_index(
        "ix_handoff_one_open_per_conversation",
        table_name="handoff",
        postgresql_where=sa.text(OPEN),
        sqlite_where=sa.text(OPEN),
    )
