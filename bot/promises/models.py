"""The promise ledger: every commitment made to a patient, with its due time."""

from __future__ import annotations

from datetime import date, datetime
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
    # The time the last update promised the next one by; None until the first late update.
    next_update_at: Mapped[datetime | None]
    # Passed to staff after too many working days late, or because the patient cannot be texted.
    escalated_at: Mapped[datetime | None]
    escalation_reason: Mapped[str | None] = mapped_column(String(24))


class UpdateKind(StrEnum):
    """What a sweep did about a promise on a day."""

    LATE_UPDATE = "late_update"
    RESULTS_READY = "results_ready"
    ESCALATION = "escalation"
    CALL_LIST = "call_list"


class PromiseUpdate(Base):
    """One sweep effect on a promise; UNIQUE(promise, clinic-local date, kind) makes it exactly once."""

    __tablename__ = "promise_update"
    __table_args__ = (UniqueConstraint("promise_id", "local_date", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    promise_id: Mapped[int] = mapped_column(ForeignKey("promise.id", ondelete="CASCADE"), index=True)
    local_date: Mapped[date]
    kind: Mapped[str] = mapped_column(String(16))
    # The text queued for the patient, when there was one (none for call-list entries).
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id"))
    channel: Mapped[str | None] = mapped_column(String(16))
    reason_key: Mapped[str | None] = mapped_column(String(48))
    next_update_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SchedulerHeartbeat(Base):
    """The scheduler's last sign of life, for readiness checks; one row per scheduler name."""

    __tablename__ = "scheduler_heartbeat"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    beat_at: Mapped[datetime] = mapped_column(default=utcnow)
