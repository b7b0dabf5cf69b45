"""Link a Telegram chat to a patient: the sender's own phone number, or a one-time deep-link token.

A Telegram chat id says nothing about who is writing, so a new chat is unverified and gets no
personal information. It becomes verified in one of two ways:

- the patient taps "Share my phone number" and Telegram sends the account's own number (we check
  that the contact is the sender's, not a contact picked from their address book), and that number
  is on file for exactly one patient;
- staff (or the portal) give the patient a `t.me/<bot>?start=<token>` link; the token is random,
  single-use and short-lived, and only its SHA-256 is stored.

Nothing here imports the Telegram SDK: the channel adapter parses updates and calls these flows.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import ForeignKey, String, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from bot.channels import outbox
from bot.channels.models import OutboxMessage
from bot.clinic_settings import load_clinic
from bot.conversations.models import Author, Conversation, Direction, Message, Route
from bot.db import Base, utcnow
from bot.patients.models import Channel, ChannelIdentity, Patient
from bot.patients.service import (
    TELEGRAM_CONTACT,
    InvalidPhoneError,
    get_by_phone,
    link_identity,
    normalize_phone,
)
from bot.staff import audit

if TYPE_CHECKING:
    from bot.conversations.domain import Domain
from bot.conversations.rendering import clinic_values

log = logging.getLogger(__name__)

LINKED = "utter_telegram_linked"
LINK_FAILED = "utter_telegram_link_failed"
CONTACT_NOT_OWN = "utter_telegram_contact_not_own"
SHARE_PHONE_BUTTON = "utter_telegram_share_phone_button"
# Replies that tell an unverified patient we need to know who they are: on Telegram they carry
# the "Share my phone number" button, which is the quickest way to prove it.
ASKS_FOR_VERIFICATION = frozenset({"utter_lab_results_unverified", "utter_verify_needed"})
OFFERS_CONTACT_BUTTON = ASKS_FOR_VERIFICATION | {CONTACT_NOT_OWN}

METHOD_CONTACT = TELEGRAM_CONTACT
METHOD_DEEPLINK = "telegram_deeplink"
DEFAULT_TOKEN_TTL = timedelta(hours=24)
# 32 URL-safe characters: inside Telegram's 64-character limit for a /start parameter.
TOKEN_BYTES = 24


class TelegramLinkToken(Base):
    """A one-time deep-link token that links a Telegram chat to a patient; only its hash is kept."""

    __tablename__ = "telegram_link_token"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    used_by_identity_id: Mapped[int | None] = mapped_column(
        ForeignKey("channel_identity.id", ondelete="SET NULL")
    )


@dataclass(frozen=True)
class KeyboardHint:
    """A reply keyboard a channel should attach to a text, decided from the conversation state."""

    request_contact_label: str | None = None
    remove: bool = False


def hash_token(token: str) -> str:
    """Return the stored form of a link token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_link_token(*, session: Session, patient_id: int, ttl: timedelta = DEFAULT_TOKEN_TTL) -> str:
    """Create a single-use token that links the chat that presents it to this patient; return it once."""
    if ttl <= timedelta(0):
        raise ValueError("ttl must be positive")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    row = TelegramLinkToken(token_hash=hash_token(token), patient_id=patient_id, expires_at=utcnow() + ttl)
    session.add(row)
    session.flush()
    audit.record(
        session=session, actor_kind="system", action="link_token.created",
        subject_type="patient", subject_id=patient_id, details={"token_id": row.id},
    )  # fmt: skip
    return token


def _refuse(*, session: Session, identity: ChannelIdentity, reason: str, details: dict[str, Any]) -> None:
    audit.record(
        session=session, actor_kind="patient", action="identity.link_refused",
        subject_type="channel_identity", subject_id=identity.id, details={"reason": reason, **details},
    )  # fmt: skip
    log.info("identity %s not linked: %s", identity.id, reason)


def telegram_phone(raw: str) -> str:
    """Return the E.164 form of a phone number from a Telegram contact (sent without the plus)."""
    raw = raw.strip()
    return normalize_phone(raw if raw.startswith("+") else f"+{raw}")


def do_link_by_contact(
    *, session: Session, identity: ChannelIdentity, phone: str, own: bool, update_id: int
) -> str:
    """Link a chat from a shared contact, if it is the sender's own number on file; return the reply key."""
    if not own:
        # Anyone can share someone else's contact card; only the account's own number proves anything.
        _refuse(session=session, identity=identity, reason="contact_not_own", details={"update_id": update_id})
        return CONTACT_NOT_OWN
    try:
        number = telegram_phone(phone)
    except InvalidPhoneError:
        number = None
    patient = get_by_phone(session=session, phone=number) if number is not None else None
    if number is None or patient is None:
        _refuse(session=session, identity=identity, reason="no_single_patient", details={"update_id": update_id})
        return LINK_FAILED
    # The number is kept (never logged): if the clinic later files it for someone else too, the link ends.
    link_identity(session=session, identity=identity, patient_id=patient.id, method=METHOD_CONTACT,
                  actor_kind="patient", details={"update_id": update_id}, linked_phone=number)  # fmt: skip
    return LINKED


def do_link_by_token(*, session: Session, identity: ChannelIdentity, token: str, update_id: int) -> str:
    """Link a chat with a one-time token; return the reply key."""
    digest = hash_token(token)
    now = utcnow()
    # One conditional UPDATE claims the token, so two chats racing for it cannot both win.
    claimed = session.execute(
        update(TelegramLinkToken)
        .where(
            TelegramLinkToken.token_hash == digest,
            TelegramLinkToken.used_at.is_(None),
            TelegramLinkToken.expires_at > now,
        )
        .values(used_at=now, used_by_identity_id=identity.id)
        .execution_options(synchronize_session=False)
    ).rowcount
    row = session.scalars(select(TelegramLinkToken).where(TelegramLinkToken.token_hash == digest)).first()
    if row is None:
        _refuse(session=session, identity=identity, reason="token_unknown", details={"update_id": update_id})
        return LINK_FAILED
    session.refresh(row)
    if claimed != 1:
        if row.used_by_identity_id == identity.id and identity.patient_id == row.patient_id and identity.is_verified:
            # The same chat tapped the same link twice: it is linked, say so rather than alarm them.
            return LINKED
        reason = "token_used" if row.used_at is not None else "token_expired"
        _refuse(session=session, identity=identity, reason=reason, details={"update_id": update_id, "token_id": row.id})
        return LINK_FAILED
    patient = session.get(Patient, row.patient_id)
    if patient is None:
        _refuse(session=session, identity=identity, reason="patient_gone", details={"token_id": row.id})
        return LINK_FAILED
    link_identity(session=session, identity=identity, patient_id=patient.id, method=METHOD_DEEPLINK,
                  actor_kind="patient", details={"update_id": update_id, "token_id": row.id})  # fmt: skip
    return LINKED


# -- replies that do not come from the engine --------------------------------------------------


class _Values(dict[str, Any]):
    """Placeholder values; an unknown one renders empty rather than failing the reply."""

    def __missing__(self, name: str) -> str:
        log.error("telegram reply uses unknown placeholder %s", name)
        return ""


def render(*, session: Session, domain: Domain, key: str, lang: str, patient: Patient | None) -> str:
    """Render a dialogue response with the clinic's placeholders, as the engine does."""
    clinic = load_clinic(session=session)
    known = patient is not None
    values = _Values(**clinic_values(clinic=clinic, lang=lang, patient=patient, now=utcnow()))
    return domain.render(key, lang=lang, slots={"known": known, "verified": known, "language": lang}, values=values)


def reply_language(*, session: Session, conversation: Conversation, patient: Patient | None,
                   language_code: str | None) -> str:  # fmt: skip
    """Return the language to answer in: the conversation's once it has one, else the best hint."""
    spoken = session.scalars(
        select(Message.id).where(Message.conversation_id == conversation.id, Message.direction == Direction.OUT).limit(1)
    ).first()
    if spoken is not None:
        return conversation.language or "en"
    if patient is not None:
        return patient.language
    hint = (language_code or "")[:2].lower()
    return hint if hint in {"en", "es"} else conversation.language or "en"


def do_queue_reply(
    *, session: Session, domain: Domain, identity: ChannelIdentity, conversation: Conversation, key: str,
    lang: str, outbox_key: str,
) -> int | None:  # fmt: skip
    """Store a bot reply in the conversation and queue it once under outbox_key; return the outbox id."""
    patient = session.get(Patient, identity.patient_id) if identity.is_verified else None
    body = render(session=session, domain=domain, key=key, lang=lang, patient=patient)
    out = Message(
        conversation_id=conversation.id, channel=conversation.channel, direction=Direction.OUT,
        author_kind=Author.BOT, body=body, lang=lang, response_key=key, route=Route.ANSWER,
    )  # fmt: skip
    session.add(out)
    session.flush()
    return outbox.enqueue(session=session, key=outbox_key, identity=identity, body=body,
                          conversation_id=conversation.id, message_id=out.id)  # fmt: skip


def keyboard_hint(*, session: Session, domain: Domain, outbox_id: int) -> KeyboardHint | None:
    """Return the reply keyboard an outgoing Telegram text needs, if any."""
    row = session.get(OutboxMessage, outbox_id)
    if row is None or row.message_id is None:
        return None
    key = session.scalars(select(Message.response_key).where(Message.id == row.message_id)).first()
    if key == LINKED:
        return KeyboardHint(remove=True)
    if key not in OFFERS_CONTACT_BUTTON:
        return None
    identity = session.get(ChannelIdentity, row.identity_id)
    if identity is None or identity.channel != Channel.TELEGRAM or identity.is_verified:
        return None
    conversation = session.get(Conversation, row.conversation_id) if row.conversation_id else None
    lang = conversation.language if conversation is not None else "en"
    label = render(session=session, domain=domain, key=SHARE_PHONE_BUTTON, lang=lang, patient=None)
    return KeyboardHint(request_contact_label=label)
