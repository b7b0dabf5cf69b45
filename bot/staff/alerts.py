"""In-app alerts for staff: emergencies and hand-offs past their response time."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.staff.models import StaffAlert


def open_alert_count(*, session: Session) -> int:
    """Return how many alerts no one has acknowledged yet."""
    return (
        session.scalar(
            select(func.count()).select_from(StaffAlert).where(StaffAlert.acknowledged_at.is_(None))
        )
        or 0
    )
