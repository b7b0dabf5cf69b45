"""The outbox: every text to a patient, with a unique key, so nothing is lost or sent twice."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from bot.db import Base, utcnow


class OutboxStatus(StrEnum):
    """A text's life: pending → sending → sent → delivered, or failed/cancelled/unknown."""

    PENDING = "pending"
    SENDING = "sending"
    UNKNOWN = "unknown"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    CANCELLED = "cancelled"


# Provider status callbacks only move a text forward along this order (see `moves_forward`): pending,
# sending (or unknown), sent, then either delivered and read, or undelivered/failed.
STATUS_RANK = {
    OutboxStatus.PENDING: 0,
    OutboxStatus.SENDING: 1,
    OutboxStatus.UNKNOWN: 1,
    OutboxStatus.SENT: 2,
    OutboxStatus.DELIVERED: 3,
    OutboxStatus.UNDELIVERED: 3,
    OutboxStatus.FAILED: 3,
    OutboxStatus.READ: 4,
    OutboxStatus.CANCELLED: 5,
}
# A text that failed did not reach the patient, whatever a later callback says: failure is terminal.
FAILURES = frozenset({OutboxStatus.UNDELIVERED, OutboxStatus.FAILED})
_REACHED = frozenset({OutboxStatus.DELIVERED, OutboxStatus.READ})


def moves_forward(current: str, new: str) -> bool:
    """Return whether a text (or a part) in status `current` may move to `new`.

    Delivery and failure are two ends, not steps of one line: a late "read" or "delivered" never undoes
    "failed" or "undelivered", nor a late failure a delivery (callbacks come in any order, and a
    contradictory one is the later news only by chance). Along each end a status only moves up the rank.
    """
    old, to = OutboxStatus(current), OutboxStatus(new)
    if old in FAILURES or (old in _REACHED and to in FAILURES):
        return False
    return STATUS_RANK[to] > STATUS_RANK[old]


class OutboxMessage(Base):
    """One text to deliver; `key` makes every effect on a patient exactly-once."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_due", "status", "next_attempt_at"),
        # Texts in flight, by address: a claim checks each candidate against it to keep a patient's
        # texts in order across senders, so it must stay a tiny index, not a scan of the address's texts.
        Index(
            "ix_outbox_in_flight",
            "identity_id",
            "id",
            postgresql_where=text("status = 'sending'"),
            sqlite_where=text("status = 'sending'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(128), unique=True)
    channel: Mapped[str] = mapped_column(String(16))
    identity_id: Mapped[int] = mapped_column(ForeignKey("channel_identity.id"), index=True)
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversation.id"))
    message_id: Mapped[int | None] = mapped_column(ForeignKey("message.id"))
    body: Mapped[str | None] = mapped_column(Text)
    buttons: Mapped[list[Any]] = mapped_column(default=list)
    # Emergency instructions jump the queue.
    priority: Mapped[int] = mapped_column(default=0)
    # Sent even to an opted-out number: the patient texted an emergency and asked for help.
    bypass_opt_out: Mapped[bool] = mapped_column(default=False)
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    first_attempt_at: Mapped[datetime | None]
    provider_message_id: Mapped[str | None] = mapped_column(String(128), index=True)
    # A text the channel sends as several messages (Telegram's 4,096 characters): how many leading parts
    # have reached the provider. An attempt cut short after some parts resumes after them.
    parts_sent: Mapped[int] = mapped_column(default=0, server_default="0")
    error_code: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class OutboxPart(Base):
    """One provider message of a text sent as several (a long SMS): each provider id belongs to one outbox row.

    The row's `provider_message_id` holds one id; a reconcile after a restart must know the others too,
    or it would take a split text's later parts for an identical text's own (see TwilioSmsChannel.reconcile).
    """

    __tablename__ = "outbox_part"

    id: Mapped[int] = mapped_column(primary_key=True)
    outbox_id: Mapped[int] = mapped_column(ForeignKey("outbox.id"), index=True)
    # Which part of the text, from 0.
    part: Mapped[int]
    provider_message_id: Mapped[str] = mapped_column(String(128), unique=True)
    # This part's own delivery status and error code, from its status callbacks (see outbox.record_status):
    # the row's status is derived from its parts'. Stored once the part reached the provider: "sent".
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.SENT, server_default="sent")
    error_code: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EarlyStatus(Base):
    """A provider's status callback for a message id no text of ours had recorded yet, kept until one does.

    Twilio calls back within moments of accepting a message, sometimes before the sender has recorded the
    send (its transaction is still open, or the send's answer was lost and a reconcile finds the message
    later), and never calls again once answered. The sender applies these as it records the id
    (outbox._apply_early); a sweep lets go of those no text ever took (outbox.EARLY_STATUS_KEPT).
    """

    __tablename__ = "early_status"
    # Twilio retries a callback: each status of a message is kept once.
    __table_args__ = (UniqueConstraint("provider_message_id", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    provider_message_id: Mapped[str] = mapped_column(String(128))
    # The outbox status the callback names (delivered, read, undelivered or failed).
    status: Mapped[str] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(32))
    # What the error code says of the recipient for good ("opted_out"), as the channel read it on arrival.
    recipient_state: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
