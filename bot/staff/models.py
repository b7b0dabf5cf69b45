"""Staff accounts and the append-only audit trail."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from bot.db import Base, utcnow


class Role(StrEnum):
    """What a staff member may do."""

    ADMIN = "admin"
    STAFF = "staff"
    CLINICIAN = "clinician"


class StaffUser(Base):
    """A person who works the inbox; the password is an argon2id hash."""

    __tablename__ = "staff_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(200))
    disabled_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEvent(Base):
    """Who did what to which record; rows are never updated or deleted."""

    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor_kind: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    subject_type: Mapped[str | None] = mapped_column(String(32))
    subject_id: Mapped[str | None] = mapped_column(String(64))
    # The patient whose data was touched, when there is one (staff access to patient data is audited).
    patient_id: Mapped[int | None] = mapped_column(index=True)
    # "ok", or why it was refused or failed.
    outcome: Mapped[str] = mapped_column(String(16), default="ok", server_default="ok")
    # Ids and codes only; never message bodies, names or phone numbers.
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class StaffSession(Base):
    """A signed-in browser; the cookie holds a random token and only its SHA-256 is stored."""

    __tablename__ = "staff_session"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff_user.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    end_reason: Mapped[str | None] = mapped_column(String(16))


class LoginAttempt(Base):
    """One sign-in attempt, kept to throttle guessing per account and per address."""

    __tablename__ = "login_attempt"
    __table_args__ = (
        Index("ix_login_attempt_email_at", "email", "at"),
        Index("ix_login_attempt_ip_at", "ip", "at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254))
    ip: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    succeeded: Mapped[bool] = mapped_column(default=False)


class CannedReply(Base):
    """Approved wording staff insert into a reply; placeholders are filled per patient."""

    __tablename__ = "canned_reply"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(120), unique=True)
    body_en: Mapped[str] = mapped_column(Text)
    body_es: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class StaffNote(Base):
    """An internal note on a conversation and its patient; never sent."""

    __tablename__ = "staff_note"

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversation.id"), index=True)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id", ondelete="SET NULL"), index=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("staff_user.id"))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ComplaintStatus(StrEnum):
    """A complaint case's progress."""

    OPEN = "open"
    INVESTIGATING = "investigating"
    RESOLVED = "resolved"


class ComplaintCase(Base):
    """A complaint: what it is about, who owns it, what was done, and what the patient was told."""

    __tablename__ = "complaint_case"

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversation.id"), index=True)
    # One case per complaint hand-off, so a retried hand-off never opens two.
    handoff_id: Mapped[int | None] = mapped_column(ForeignKey("handoff.id"), unique=True)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id", ondelete="SET NULL"), index=True)
    summary: Mapped[str] = mapped_column(Text, default="")
    category: Mapped[str] = mapped_column(String(32), default="other")
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("staff_user.id"))
    status: Mapped[str] = mapped_column(String(16), default=ComplaintStatus.OPEN, index=True)
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When the patient was told they would hear back (the acknowledgement's promise).
    due_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    resolved_by_id: Mapped[int | None] = mapped_column(ForeignKey("staff_user.id"))
    resolution_message_id: Mapped[int | None] = mapped_column(ForeignKey("message.id"))


class ComplaintAction(Base):
    """One thing staff did about a complaint."""

    __tablename__ = "complaint_action"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("complaint_case.id"), index=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff_user.id"))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReviewStatus(StrEnum):
    """Whether an admin has looked at a wrong answer's wording."""

    PENDING = "pending"
    REVIEWED = "reviewed"


class Incident(Base):
    """A message staff marked as wrong, the correction the patient was sent, and its content review."""

    __tablename__ = "incident"

    id: Mapped[int] = mapped_column(primary_key=True)
    # One incident per wrong message: a double click never sends two corrections.
    message_id: Mapped[int] = mapped_column(ForeignKey("message.id"), unique=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversation.id"), index=True)
    reported_by_id: Mapped[int] = mapped_column(ForeignKey("staff_user.id"))
    # Internal: what was wrong. Never sent.
    explanation: Mapped[str] = mapped_column(Text, default="")
    author_kind: Mapped[str] = mapped_column(String(8))
    intent: Mapped[str | None] = mapped_column(String(48))
    response_key: Mapped[str | None] = mapped_column(String(64))
    correction_message_id: Mapped[int | None] = mapped_column(ForeignKey("message.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    review_status: Mapped[str] = mapped_column(String(16), default=ReviewStatus.PENDING, index=True)
    reviewed_by_id: Mapped[int | None] = mapped_column(ForeignKey("staff_user.id"))
    reviewed_at: Mapped[datetime | None]
    review_note: Mapped[str | None] = mapped_column(Text)


class AlertKind(StrEnum):
    """Why staff are alerted."""

    EMERGENCY = "emergency"
    SLA_BREACH = "sla_breach"


UNKEYED_ALERT_SQL = "message_id IS NULL"
COPY_OWED_SQL = "copy_owed_at IS NOT NULL"


class StaffAlert(Base):
    """An in-app alert (and, when configured, a staff Telegram message).

    An emergency alert belongs to the patient message that raised it (`message_id`): every emergency
    message alerts staff, even in a hand-off they already acknowledged, and a retried message never
    alerts twice. Alerts that no one message raised (an overdue hand-off) are once per hand-off and kind.
    The staff group's copy is queued beside the alert but never holds it back: when queueing it fails,
    `copy_owed_at` says so, and the alert sweep queues it later (once: its outbox key is the alert's).
    """

    __tablename__ = "staff_alert"
    __table_args__ = (
        UniqueConstraint("kind", "message_id"),
        Index(
            "ix_staff_alert_once_per_handoff",
            "kind",
            "handoff_id",
            unique=True,
            postgresql_where=text(UNKEYED_ALERT_SQL),
            sqlite_where=text(UNKEYED_ALERT_SQL),
        ),
        # The alert sweep reads only the few alerts whose copy is owed, never the clinic's whole history.
        Index(
            "ix_staff_alert_copy_owed",
            "id",
            postgresql_where=text(COPY_OWED_SQL),
            sqlite_where=text(COPY_OWED_SQL),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(24))
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversation.id"), index=True)
    handoff_id: Mapped[int] = mapped_column(ForeignKey("handoff.id"))
    message_id: Mapped[int | None] = mapped_column(ForeignKey("message.id"))
    priority: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by_id: Mapped[int | None] = mapped_column(ForeignKey("staff_user.id"))
    # When queueing the staff group's copy first failed; cleared when the alert sweep queues it.
    copy_owed_at: Mapped[datetime | None]


class OwedAlertKind(StrEnum):
    """Which alert a patient message still owes staff."""

    EMERGENCY = "emergency"  # the rules (or a sure classifier) saw an emergency: hand-off and alert
    POSSIBLE_EMERGENCY = "possible_emergency"  # a possible one in a chat staff own: alert only


class OwedAlert(Base):
    """A staff alert a patient message should have raised but could not; the alert sweep raises it later.

    Written in the message's own transaction (beside the patient's reply) when raising the alert failed,
    and deleted in the transaction that finally raises it, so the alert is late but never lost, and
    raised once (the alert itself is unique per kind and message).
    """

    __tablename__ = "owed_alert"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int | None] = mapped_column(ForeignKey("message.id"), unique=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversation.id"))
    kind: Mapped[str] = mapped_column(String(24))
    # The emergency's kind as the safety rules named it ("self_harm"…), for the hand-off's audit trail.
    emergency_kind: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    attempts: Mapped[int] = mapped_column(default=0)
    last_attempt_at: Mapped[datetime | None]
