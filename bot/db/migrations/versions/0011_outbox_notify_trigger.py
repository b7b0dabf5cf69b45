"""wake the outbox sender from the database: on PostgreSQL, a trigger notifies `clinicbot_outbox` whenever a
text is queued, in place of a NOTIFY statement sent by each code path that queues one

Every path that inserts into the outbox (replies, staff messages, promise updates, alerts) now wakes
the deployment's sender, even in another app replica, and queuing a text costs no extra round trip.
NOTIFY is delivered when the transaction commits, once per transaction (PostgreSQL folds repeats).
SQLite has no NOTIFY: there the sender is woken in-process or by its worker's socket.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION clinicbot_outbox_queued() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('clinicbot_outbox', '');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER outbox_queued AFTER INSERT ON outbox "
        "FOR EACH ROW EXECUTE FUNCTION clinicbot_outbox_queued()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER outbox_queued ON outbox")
    op.execute("DROP FUNCTION clinicbot_outbox_queued()")
