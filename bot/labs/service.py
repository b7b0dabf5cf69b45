"""Read lab orders."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.labs.models import OPEN_LAB_STATUSES, LabOrder, LabStatus

RECENT_RESULTS = timedelta(days=14)


def orders_to_report(*, session: Session, patient_id: int, now: datetime) -> list[LabOrder]:
    """Return a patient's open orders and those resulted in the last two weeks, oldest first."""
    return list(
        session.scalars(
            select(LabOrder)
            .where(
                LabOrder.patient_id == patient_id,
                (LabOrder.status.in_(OPEN_LAB_STATUSES))
                | ((LabOrder.status == LabStatus.RESULTED) & (LabOrder.resulted_at >= now - RECENT_RESULTS)),
            )
            .order_by(LabOrder.ordered_at, LabOrder.id)
        )
    )
