"""One-time codes that link an anonymous web chat session to a patient on file.

A visitor gives the phone number and date of birth on file; if both match exactly one patient,
a 6-digit code goes to that patient's phone (and to a verified Telegram chat, if linked). The
answer is the same whether or not anything matched: an unmatched request stores a decoy code
that was never sent, so it also counts towards the per-phone limit. Codes are stored as salted
HMACs, expire after 10 minutes, are single use and die after 5 wrong attempts.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, String, func, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from bot.channels import outbox
from bot.channels.models import OutboxMessage, OutboxStatus
from bot.clinic_settings import load_clinic
from bot.conversations.domain import Domain
from bot.conversations.models import Author, Conversation, Direction, Message
from bot.conversations.service import open_conversation
from bot.db import Base, utcnow
from bot.patients.models import Channel, ChannelIdentity, Patient, verification_holds
from bot.patients.service import get_by_phone, get_or_create_identity
from bot.staff import audit

log = logging.getLogger(__name__)

CODE_DIGITS = 6
CODE_TTL = timedelta(minutes=10)
MAX_WRONG_ATTEMPTS = 5
MAX_CODES_PER_PHONE = 3
MAX_CODES_PER_SESSION = 5
CODE_LIMIT_WINDOW = timedelta(hours=1)
# How long a verified session lasts is bot.patients.models.VERIFIED_SESSION_TTL: is_verified honours it.
VERIFICATION_METHOD = "otp"


class VerificationCode(Base):
    """One code issued to a web chat session; only hashes are stored."""

    __tablename__ = "verification_code"
    __table_args__ = (
        Index("ix_verification_code_phone_hash_created_at", "phone_hash", "created_at"),
        Index("ix_verification_code_identity_id_created_at", "identity_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # The web chat identity that asked; only it can use the code.
    identity_id: Mapped[int] = mapped_column(ForeignKey("channel_identity.id", ondelete="CASCADE"))
    # None when the details matched nobody: a decoy that was never sent and can never verify.
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id", ondelete="CASCADE"))
    # A hash of the E.164 number, for the per-phone limit without another copy of the number.
    phone_hash: Mapped[str] = mapped_column(String(64))
    salt: Mapped[str] = mapped_column(String(32))
    code_hash: Mapped[str] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class StartResult(StrEnum):
    """What asking for a code did, as far as the visitor may know."""

    SENT = "sent"  # said the same way whether or not the details matched
    TOO_MANY = "too_many"


class CheckResult(StrEnum):
    """What entering a code did."""

    VERIFIED = "verified"
    WRONG = "wrong"
    DEAD = "dead"  # expired, used, out of attempts, or never requested


@dataclass(frozen=True)
class StartOutcome:
    """The visitor-facing result and, for the audit and tests, the code row."""

    result: StartResult
    code_id: int | None = None


@dataclass(frozen=True)
class CheckOutcome:
    """The result of one attempt; attempts_left only for a wrong code."""

    result: CheckResult
    code_id: int | None = None
    patient_id: int | None = None
    attempts_left: int = 0


def new_code() -> str:
    """Return a uniformly random 6-digit code."""
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def hash_code(*, code: str, salt: str) -> str:
    """Return the salted HMAC of a code."""
    return hmac.new(bytes.fromhex(salt), code.encode("ascii"), hashlib.sha256).hexdigest()


def hash_phone(phone: str) -> str:
    """Return the stored form of a phone number used only for counting requests."""
    return hashlib.sha256(f"clinicbot-otp-phone:{phone}".encode()).hexdigest()


def _render(domain: Domain, key: str, *, lang: str, values: dict[str, str]) -> str:
    return domain.render(key, lang=lang, slots={}, values=values)


def recent_code_counts(*, session: Session, identity_id: int, phone_hash: str, now: datetime) -> tuple[int, int]:
    """Return how many codes this phone and this session asked for in the last hour."""
    since = now - CODE_LIMIT_WINDOW
    per_phone = session.scalar(
        select(func.count()).where(VerificationCode.phone_hash == phone_hash, VerificationCode.created_at > since)
    )
    per_session = session.scalar(
        select(func.count()).where(VerificationCode.identity_id == identity_id, VerificationCode.created_at > since)
    )
    return per_phone or 0, per_session or 0


def _matching_patient(*, session: Session, phone: str, date_of_birth: date) -> Patient | None:
    patient = get_by_phone(session=session, phone=phone)
    if patient is None or patient.date_of_birth is None:
        return None
    # Both factors must match; the comparison cost does not depend on which one failed.
    return patient if patient.date_of_birth == date_of_birth else None


def do_start_verification(
    *, session: Session, identity: ChannelIdentity, phone: str, date_of_birth: date, domain: Domain
) -> StartOutcome:
    """Issue a code for a web chat session; text it to the patient only if phone and birth date match."""
    assert identity.channel == Channel.WEBCHAT, "codes link web chat sessions only"
    now = utcnow()
    phone_hash = hash_phone(phone)
    per_phone, per_session = recent_code_counts(
        session=session, identity_id=identity.id, phone_hash=phone_hash, now=now
    )
    if per_phone >= MAX_CODES_PER_PHONE or per_session >= MAX_CODES_PER_SESSION:
        log.info("verification code refused for identity %s: hourly limit", identity.id)
        return StartOutcome(StartResult.TOO_MANY)
    patient = _matching_patient(session=session, phone=phone, date_of_birth=date_of_birth)
    code, salt = new_code(), secrets.token_hex(16)
    row = VerificationCode(
        identity_id=identity.id,
        patient_id=patient.id if patient is not None else None,
        phone_hash=phone_hash,
        salt=salt,
        code_hash=hash_code(code=code, salt=salt),
        created_at=now,
        expires_at=now + CODE_TTL,
    )
    session.add(row)
    session.flush()
    # A newer code supersedes older ones: only the latest can be used, so kill the rest.
    session.execute(
        update(VerificationCode)
        .where(
            VerificationCode.identity_id == identity.id,
            VerificationCode.id != row.id,
            VerificationCode.used_at.is_(None),
        )
        .values(used_at=now)
    )
    sent_to: list[int] = []
    if patient is not None:
        clinic = load_clinic(session=session)
        text = _render(domain, "utter_otp_code", lang=patient.language, values={"clinic_name": clinic.name, "code": code})
        sms = get_or_create_identity(session=session, channel=Channel.SMS, address=phone)
        queued = outbox.enqueue(session=session, key=f"otp:{row.id}", identity=sms, body=text, priority=50)
        if queued is not None:
            sent_to.append(queued)
        for telegram in _verified_identities(session=session, patient_id=patient.id, channel=Channel.TELEGRAM):
            queued = outbox.enqueue(
                session=session, key=f"otp:{row.id}:telegram:{telegram.id}", identity=telegram, body=text, priority=50
            )
            if queued is not None:
                sent_to.append(queued)
    audit.record(
        session=session,
        actor_kind="patient",
        action="verification.code_requested",
        subject_type="channel_identity",
        subject_id=identity.id,
        details={"code_id": row.id, "patient_id": row.patient_id, "outbox_ids": sent_to},
    )
    log.info("verification code %s issued for identity %s (outbox %s)", row.id, identity.id, sent_to or "none")
    return StartOutcome(StartResult.SENT, row.id)


def _verified_identities(*, session: Session, patient_id: int, channel: str) -> list[ChannelIdentity]:
    return list(
        session.scalars(
            select(ChannelIdentity).where(
                ChannelIdentity.patient_id == patient_id,
                ChannelIdentity.channel == channel,
                ChannelIdentity.verified_at.is_not(None),
                ChannelIdentity.opted_out_at.is_(None),
            )
        )
    )


def _cancel_code_texts(*, session: Session, code_id: int) -> None:
    """Withdraw a code's texts that have not left yet (the SMS channel may be off in development)."""
    session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.key.like(f"otp:{code_id}%"),
            OutboxMessage.status == OutboxStatus.PENDING,
        )
        .values(status=OutboxStatus.CANCELLED, error_code="code_closed", updated_at=utcnow())
    )


def do_check_code(
    *, session: Session, identity: ChannelIdentity, code: str, domain: Domain, lang: str
) -> CheckOutcome:
    """Try a code for a web chat session; a correct one links the session to the patient."""
    now = utcnow()
    row = session.scalars(
        select(VerificationCode)
        .where(VerificationCode.identity_id == identity.id)
        .order_by(VerificationCode.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return CheckOutcome(CheckResult.DEAD)
    # Count the attempt atomically first, so concurrent guesses cannot exceed the limit.
    counted = session.execute(
        update(VerificationCode)
        .where(
            VerificationCode.id == row.id,
            VerificationCode.used_at.is_(None),
            VerificationCode.attempts < MAX_WRONG_ATTEMPTS,
            VerificationCode.expires_at > now,
        )
        .values(attempts=VerificationCode.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    if counted.rowcount != 1:
        return CheckOutcome(CheckResult.DEAD, row.id)
    session.refresh(row)
    correct = hmac.compare_digest(hash_code(code=code, salt=row.salt), row.code_hash)
    if not correct or row.patient_id is None:
        left = MAX_WRONG_ATTEMPTS - row.attempts
        if left > 0:
            log.info("verification code %s: wrong attempt %s", row.id, row.attempts)
            return CheckOutcome(CheckResult.WRONG, row.id, attempts_left=left)
        _cancel_code_texts(session=session, code_id=row.id)
        audit.record(session=session, actor_kind="system", action="verification.code_locked",
                     subject_type="channel_identity", subject_id=identity.id,
                     details={"code_id": row.id})  # fmt: skip
        log.info("verification code %s locked after %s wrong attempts", row.id, row.attempts)
        return CheckOutcome(CheckResult.DEAD, row.id)
    used = session.execute(
        update(VerificationCode)
        .where(VerificationCode.id == row.id, VerificationCode.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if used.rowcount != 1:
        return CheckOutcome(CheckResult.DEAD, row.id)
    # Correct: give this attempt back so the count stays "wrong attempts".
    row.attempts -= 1
    _link(session=session, identity=identity, patient_id=row.patient_id, code_id=row.id, domain=domain, lang=lang)
    return CheckOutcome(CheckResult.VERIFIED, row.id, row.patient_id)


def _link(
    *, session: Session, identity: ChannelIdentity, patient_id: int, code_id: int, domain: Domain, lang: str
) -> None:
    """Link the session to the patient, audit it, and tell the visitor in the chat."""
    patient = session.get(Patient, patient_id)
    assert patient is not None
    previous = identity.patient_id if identity.is_verified else None
    identity.patient_id, identity.verified_at, identity.verification_method = patient_id, utcnow(), VERIFICATION_METHOD
    conversation = open_conversation(session=session, identity=identity)
    # Serialise with the inbound processor so this reply's outbox id orders after earlier replies.
    session.execute(select(Conversation.id).where(Conversation.id == conversation.id).with_for_update())
    conversation.patient_id = patient_id
    audit.record(
        session=session,
        actor_kind="patient",
        action="identity.verified",
        subject_type="channel_identity",
        subject_id=identity.id,
        details={"patient_id": patient_id, "code_id": code_id, "method": VERIFICATION_METHOD,
                 "previous_patient_id": previous},
    )  # fmt: skip
    clinic = load_clinic(session=session)
    text = _render(domain, "utter_verify_success", lang=lang,
                   values={"name": patient.display_name, "clinic_name": clinic.name})  # fmt: skip
    message = Message(
        conversation_id=conversation.id,
        channel=conversation.channel,
        direction=Direction.OUT,
        author_kind=Author.SYSTEM,
        body=text,
        lang=lang,
        response_key="utter_verify_success",
    )
    session.add(message)
    session.flush()
    outbox.enqueue(
        session=session,
        key=f"verified:{code_id}",
        identity=identity,
        body=text,
        conversation_id=conversation.id,
        message_id=message.id,
    )
    log.info("identity %s verified as patient %s with code %s", identity.id, patient_id, code_id)


def do_end_verification(*, session: Session, identity: ChannelIdentity, reason: str) -> bool:
    """Stop sharing personal information with a web chat session; return whether it was verified."""
    if identity.channel != Channel.WEBCHAT or identity.verified_at is None:
        return False
    identity.verified_at = None
    # Keep patient_id: staff still see whose conversation it was.
    audit.record(
        session=session,
        actor_kind="patient" if reason == "signed_out" else "system",
        action="identity.verification_ended",
        subject_type="channel_identity",
        subject_id=identity.id,
        details={"patient_id": identity.patient_id, "reason": reason},
    )
    log.info("identity %s verification ended (%s)", identity.id, reason)
    return True


def expire_stale_verification(*, session: Session, identity: ChannelIdentity, now: datetime | None = None) -> bool:
    """End a web chat verification older than VERIFIED_SESSION_TTL; return whether it ended."""
    if identity.channel != Channel.WEBCHAT or identity.verified_at is None:
        return False
    if verification_holds(channel=identity.channel, verified_at=identity.verified_at, now=now or utcnow()):
        return False
    return do_end_verification(session=session, identity=identity, reason="expired")

