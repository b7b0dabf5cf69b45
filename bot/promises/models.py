"""The promise ledger: every commitment made to a patient, with its due time."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from bot.db import Base, utcnow


class PromiseKind(StrEnum):
    """What was promised."""

    LAB_RESULT = "lab_result"
    HANDOFF_REPLY = "handoff_reply"
    REQUEST_ANSWER = "request_answer"
    COMPLAINT_FOLLOWUP = "complaint_followup"
    CALLBACK = "callback"


class PromiseStatus(StrEnum):
    """Open until its event happens (kept) or it no longer applies (cancelled)."""

    OPEN = "open"
    KEPT = "kept"
    CANCELLED = "cancelled"


class Promise(Base):
    """A commitment to a patient; one per subject and kind."""

    __tablename__ = "promise"
    __table_args__ = (UniqueConstraint("kind", "subject_type", "subject_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id", ondelete="CASCADE"), index=True)
    identity_id: Mapped[int | None] = mapped_column(ForeignKey("channel_identity.id"))
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversation.id"))
    kind: Mapped[str] = mapped_column(String(24))
    subject_type: Mapped[str] = mapped_column(String(24))
    subject_id: Mapped[int]
    # A key into the messages catalogue, never free text: the reason is told to the patient.
    reason_key: Mapped[str] = mapped_column(String(48))
    due_at: Mapped[datetime] = mapped_column(index=True)
    status: Mapped[str] = mapped_column(String(16), default=PromiseStatus.OPEN, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    kept_at: Mapped[datetime | None]
