"""Conversations, their messages, and what they hand to staff."""

from __future__ import annotations

from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    and_,
    literal_column,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from bot.db import Base, utcnow


class ConversationState(StrEnum):
    """Who is answering: the bot, nobody yet (waiting for staff), staff, or nobody (closed)."""

    BOT = "bot"
    WAITING = "waiting"
    STAFF = "staff"
    CLOSED = "closed"


class Priority(IntEnum):
    """Queue order for staff; higher is more urgent."""

    NORMAL = 10
    MEDICAL = 20
    COMPLAINT = 30
    EMERGENCY = 40


class Route(StrEnum):
    """What the engine decided to do with a message."""

    ANSWER = "answer"
    HANDOFF = "handoff"
    CLARIFY = "clarify"
    EMERGENCY = "emergency"
    SILENT = "silent"  # staff own the chat; stored, not answered


class Direction(StrEnum):
    """Inbound from the patient or outbound to them."""

    IN = "in"
    OUT = "out"


class Author(StrEnum):
    """Who wrote a message."""

    PATIENT = "patient"
    BOT = "bot"
    STAFF = "staff"
    SYSTEM = "system"


class Conversation(Base):
    """One thread with one identity; at most one open at a time."""

    __tablename__ = "conversation"
    __table_args__ = (Index("ix_conversation_identity_state", "identity_id", "state"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    # Every inbound text looks up its identity's open conversation: without this index, a scan.
    identity_id: Mapped[int] = mapped_column(ForeignKey("channel_identity.id"), index=True)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id", ondelete="SET NULL"), index=True)
    state: Mapped[str] = mapped_column(String(16), default=ConversationState.BOT)
    priority: Mapped[int] = mapped_column(default=Priority.NORMAL)
    reason: Mapped[str | None] = mapped_column(String(32))
    language: Mapped[str] = mapped_column(String(2), default="en")
    clarify_streak: Mapped[int] = mapped_column(default=0)
    # The form being filled (Rasa's active_loop) and the slots collected so far.
    active_form: Mapped[str | None] = mapped_column(String(64))
    slots: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    last_message_at: Mapped[datetime | None]
    # The staff member replying (set by claim and transfer; cleared on hand back).
    assigned_staff_id: Mapped[int | None] = mapped_column(ForeignKey("staff_user.id"), index=True)
    closed_at: Mapped[datetime | None]
    closed_by_id: Mapped[int | None] = mapped_column(ForeignKey("staff_user.id"))
    outcome: Mapped[str | None] = mapped_column(String(32))

    messages: Mapped[list[Message]] = relationship(back_populates="conversation", order_by="Message.id")


# The predicate of the partial indexes over inbound texts not yet routed. Queries must say it in SQL
# literals (`unprocessed_inbound_where`), never with bound parameters: SQLite's planner, and PostgreSQL's
# generic plans for prepared statements, cannot match `direction = ?` to the index, and the claim then
# read the whole message table, history included, on every routed batch.
UNPROCESSED_INBOUND_SQL = "processed_at IS NULL AND direction = 'in'"


class Message(Base):
    """One text in or out; inbound texts are unique per channel and provider id."""

    __tablename__ = "message"
    __table_args__ = (
        UniqueConstraint("channel", "provider_message_id"),
        # The processor's queue: only unprocessed inbound rows, so finding the next one stays O(1).
        Index(
            "ix_message_unprocessed",
            "id",
            postgresql_where=text(UNPROCESSED_INBOUND_SQL),
            sqlite_where=text(UNPROCESSED_INBOUND_SQL),
        ),
        # The same rows by conversation: a PostgreSQL claim checks that no earlier text of the
        # conversation waits, which must not read the conversation's whole history.
        Index(
            "ix_message_unprocessed_conversation",
            "conversation_id",
            "id",
            postgresql_where=text(UNPROCESSED_INBOUND_SQL),
            sqlite_where=text(UNPROCESSED_INBOUND_SQL),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversation.id"), index=True)
    channel: Mapped[str] = mapped_column(String(16))
    provider_message_id: Mapped[str | None] = mapped_column(String(128))
    direction: Mapped[str] = mapped_column(String(3))
    author_kind: Mapped[str] = mapped_column(String(8))
    author_id: Mapped[int | None]
    # Nullable so retention can purge bodies while keeping the metadata.
    body: Mapped[str | None] = mapped_column(Text)
    # Files the patient attached (MMS links, Telegram file references), apart from the text so a patient
    # cannot pass typed text off as one; staff open them through /staff/messages/{id}/media/{n}.
    media: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))
    lang: Mapped[str | None] = mapped_column(String(2))
    intent: Mapped[str | None] = mapped_column(String(48))
    confidence: Mapped[float | None]
    route: Mapped[str | None] = mapped_column(String(16))
    response_key: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    processed_at: Mapped[datetime | None]
    # Failed processing attempts; after a few the message goes to staff instead of blocking the queue.
    process_errors: Mapped[int] = mapped_column(default=0)

    conversation: Mapped[Conversation] = relationship(back_populates="messages")


class HandoffReason(StrEnum):
    """Why a conversation went to staff."""

    EMERGENCY = "emergency"
    COMPLAINT = "complaint"
    MEDICAL = "medical"
    HUMAN = "human"
    UNCLEAR = "unclear"


# Who a hand-off goes to, by what the patient asked (anything else: unclear, or the front desk).
HANDOFF_REASON_BY_INTENT = {
    "medical_question": HandoffReason.MEDICAL,
    "emergency": HandoffReason.MEDICAL,
    "complaint": HandoffReason.COMPLAINT,
    "speak_to_human": HandoffReason.HUMAN,
}


# An open hand-off: not yet resolved (staff handed the chat back or closed it).
OPEN_HANDOFF_SQL = "resolved_at IS NULL"


class Handoff(Base):
    """A conversation passed to staff, with the time we promised a reply by; at most one open per conversation."""

    __tablename__ = "handoff"
    __table_args__ = (
        # Writers look for the open hand-off before opening one, under the conversation's lock where they
        # take it; the index settles a race between writers that do not (see service.add_open_handoff).
        Index(
            "ix_handoff_one_open_per_conversation",
            "conversation_id",
            unique=True,
            postgresql_where=text(OPEN_HANDOFF_SQL),
            sqlite_where=text(OPEN_HANDOFF_SQL),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversation.id"), index=True)
    reason: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int]
    team: Mapped[str] = mapped_column(String(16))
    due_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_at: Mapped[datetime | None]
    claimed_by_id: Mapped[int | None] = mapped_column(ForeignKey("staff_user.id"))
    # The first staff message to the patient: the response-time target is measured to it.
    first_response_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]


class RequestKind(StrEnum):
    """What a patient asked staff to do."""

    REFILL = "refill"
    APPOINTMENT = "appointment"


class RequestStatus(StrEnum):
    """Where a request stands."""

    OPEN = "open"
    DONE = "done"
    DECLINED = "declined"  # answered: it could not be done, and the patient was told why
    CANCELLED = "cancelled"


class PatientRequest(Base):
    """A refill or appointment request collected by the bot for staff."""

    __tablename__ = "request"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    # Appointment requests say which: book, reschedule or cancel.
    action: Mapped[str | None] = mapped_column(String(16))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default=RequestStatus.OPEN)
    due_at: Mapped[datetime]
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversation.id"), index=True)
    identity_id: Mapped[int] = mapped_column(ForeignKey("channel_identity.id"))
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None]


def unprocessed_inbound_where(entity: Any = Message) -> ColumnElement[bool]:
    """Return `UNPROCESSED_INBOUND_SQL` for Message (or an alias of it), in literals the planners can match."""
    return and_(entity.processed_at.is_(None), entity.direction == literal_column(f"'{Direction.IN.value}'"))
