"""Lab orders as the lab system reports them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
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
    # When the patient was told their results are in (at the first sweep inside quiet hours).
    result_notified_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ApiKey(Base):
    """A key a lab system uses for the REST API; only its SHA-256 is stored."""

    __tablename__ = "api_key"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the key, to tell keys apart in lists; not enough to use it.
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class LabMessage(Base):
    """One message received from the lab system (HL7 or REST), kept to dedupe and to answer retries alike."""

    __tablename__ = "lab_message"
    __table_args__ = (UniqueConstraint("source", "control_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(8))
    # HL7 MSH-10 (message control id); the lab's retries reuse it.
    control_id: Mapped[str] = mapped_column(String(64))
    message_type: Mapped[str] = mapped_column(String(16))
    ack_code: Mapped[str] = mapped_column(String(2))
    # A readable reason for AE/AR; names segments and fields, never patient data.
    error: Mapped[str | None] = mapped_column(Text)
    order_id: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
