"""key emergency alerts on the patient message that raised them, so that every emergency message alerts
staff (a second, different emergency in a hand-off staff already acknowledged was silent) and a retried
message still alerts once; alerts no message raised (an overdue hand-off) stay once per hand-off and kind

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNKEYED = "message_id IS NULL"


def upgrade() -> None:
    # Alerts raised before this revision have no message on record: they keep the old once-per-hand-off
    # rule (the partial index), which is what they were raised under.
    with op.batch_alter_table("staff_alert", schema=None) as batch_op:
        batch_op.add_column(sa.Column("message_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(op.f("fk_staff_alert_message_id_message"), "message", ["message_id"], ["id"])
        batch_op.drop_constraint("uq_staff_alert_kind_handoff_id", type_="unique")
        batch_op.create_unique_constraint(op.f("uq_staff_alert_kind_message_id"), ["kind", "message_id"])
    op.create_index(
        "ix_staff_alert_once_per_handoff",
        "staff_alert",
        ["kind", "handoff_id"],
        unique=True,
        postgresql_where=sa.text(UNKEYED),
        sqlite_where=sa.text(UNKEYED),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_staff_alert_once_per_handoff",
        table_name="staff_alert",
        postgresql_where=sa.text(UNKEYED),
        sqlite_where=sa.text(UNKEYED),
    )
    # The old rule allowed one alert per hand-off and kind: the first of each is kept.
    op.execute(
        "DELETE FROM staff_alert WHERE id NOT IN (SELECT MIN(id) FROM staff_alert GROUP BY kind, handoff_id)"
    )
    with op.batch_alter_table("staff_alert", schema=None) as batch_op:
        batch_op.drop_constraint("uq_staff_alert_kind_message_id", type_="unique")
        batch_op.create_unique_constraint(op.f("uq_staff_alert_kind_handoff_id"), ["kind", "handoff_id"])
        batch_op.drop_constraint("fk_staff_alert_message_id_message", type_="foreignkey")
        batch_op.drop_column("message_id")
