"""Lab orders as the lab system reports them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from bot.db import Base, utcnow


class LabStatus(StrEnum):
    """An order's progress; only RESULTED and CANCELLED are final."""

    ORDERED = "ordered"
    COLLECTED = "collected"
    IN_LAB = "in_lab"
    RESULTED = "resulted"
    CANCELLED = "cancelled"


OPEN_LAB_STATUSES = (LabStatus.ORDERED, LabStatus.COLLECTED, LabStatus.IN_LAB)


class LabOrder(Base):
    """One lab test ordered for a patient, with when its result is expected."""

    __tablename__ = "lab_order"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id", ondelete="CASCADE"), index=True)
    # Never sent to patients over SMS or Telegram; shown to staff only.
    test_name: Mapped[str] = mapped_column(String(200))
    ordered_at: Mapped[datetime]
    expected_by: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16), default=LabStatus.ORDERED)
    resulted_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
