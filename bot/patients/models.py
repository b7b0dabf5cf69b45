"""Patients and the channel identities they reach us from."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from enum import StrEnum

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from bot.db import Base, utcnow


class Channel(StrEnum):
    """Where a message came from or goes to."""

    SMS = "sms"
    TELEGRAM = "telegram"
    WEBCHAT = "webchat"
    TERMINAL = "terminal"


# A web chat verification lapses after this long: a shared computer must not keep access all week.
VERIFIED_SESSION_TTL = timedelta(hours=12)


def verification_holds(*, channel: str, verified_at: datetime | None, now: datetime) -> bool:
    """Return whether a verification holds at an instant; a web chat's lapses after VERIFIED_SESSION_TTL.

    A lapsed web chat verification is ended only when the visitor comes back (or a sweep passes it), so
    until then its row still says verified: whoever trusts an identity asks this, not `verified_at`.
    """
    if verified_at is None:
        return False
    return channel != Channel.WEBCHAT or verified_at > now - VERIFIED_SESSION_TTL


class Patient(Base):
    """A person the clinic cares for."""

    __tablename__ = "patient"

    id: Mapped[int] = mapped_column(primary_key=True)
    external_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    preferred_name: Mapped[str | None] = mapped_column(String(100))
    date_of_birth: Mapped[date | None]
    phone: Mapped[str | None] = mapped_column(String(20), index=True)  # E.164
    language: Mapped[str] = mapped_column(String(2), default="en")
    notes: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    identities: Mapped[list[ChannelIdentity]] = relationship(back_populates="patient")

    @property
    def display_name(self) -> str:
        """Return the name the patient asked to be called, or their first name."""
        return self.preferred_name or self.name.split()[0]


class ChannelIdentity(Base):
    """One address on one channel; linked to a patient once we know who it is."""

    __tablename__ = "channel_identity"
    __table_args__ = (UniqueConstraint("channel", "address"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(128))
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id", ondelete="SET NULL"), index=True)
    verified_at: Mapped[datetime | None]
    verification_method: Mapped[str | None] = mapped_column(String(32))
    # The E.164 number a link made from a shared Telegram contact rests on, so that the link can be checked
    # again whenever the patient file changes (an SMS identity's number is its address). None otherwise.
    linked_phone: Mapped[str | None] = mapped_column(String(20), index=True)
    opted_out_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime | None]

    patient: Mapped[Patient | None] = relationship(back_populates="identities")

    @property
    def is_verified(self) -> bool:
        """Return whether personal information may be shared with this identity."""
        return self.patient_id is not None and verification_holds(
            channel=self.channel, verified_at=self.verified_at, now=utcnow()
        )
