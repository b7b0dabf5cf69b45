"""Texts staff send a patient (replies, notices, resolutions, corrections): stored, then queued exactly once."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.channels import outbox
from bot.channels.models import OutboxMessage
from bot.conversations.models import Author, Conversation, Direction, Message
from bot.db import utcnow
from bot.labs.models import LabOrder
from bot.patients.models import Channel, ChannelIdentity
from bot.staff import audit

# Staff texts go ahead of routine bot replies, behind emergencies.
STAFF_PRIORITY = 50
# Texts on these channels sit on lock screens and shared phones: they never name a test or a result.
GUARDED_CHANNELS = frozenset({Channel.SMS, Channel.TELEGRAM})


class ClinicalContentError(ValueError):
    """A staff text for SMS or Telegram names one of the patient's tests; the message says what to do."""


def check_no_test_names(*, session: Session, conversation: Conversation, text: str) -> None:
    """Refuse a staff text for SMS or Telegram that names one of the patient's lab tests.

    The bot's own texts never do (its templates carry no test names); a person typing a reply, with the
    patient's orders on screen beside the box, might. Results and diagnoses have no list to check
    against: the message tells staff the rule, and the portal or a call is where results are given.
    """
    if conversation.channel not in GUARDED_CHANNELS:
        return
    patient_id = audit.patient_of(session, conversation)
    if patient_id is None:
        return
    names = session.scalars(select(LabOrder.test_name).where(LabOrder.patient_id == patient_id).distinct())
    folded = text.casefold()
    named = sorted({name for name in names if name and re.search(rf"(?<!\w){re.escape(name.casefold())}(?!\w)", folded)})
    if named:
        channel = "SMS" if conversation.channel == Channel.SMS else "Telegram"
        raise ClinicalContentError(
            f"Texts by {channel} must not name tests or results, and this one names {', '.join(named)}. "
            "Say the results are ready and point the patient to the portal, or call them."
        )


def do_tell_patient(
    *,
    session: Session,
    conversation: Conversation,
    staff_id: int,
    body: str,
    key: str,
    author_kind: Author = Author.STAFF,
    response_key: str | None = None,
    route: str | None = None,
) -> Message | None:
    """Store an outbound message in the conversation and queue it once under key; None if queued before.

    Raises ClinicalContentError when a staff-written text for SMS or Telegram names the patient's tests.
    """
    if session.scalars(select(OutboxMessage.id).where(OutboxMessage.key == key)).first() is not None:
        return None
    if author_kind == Author.STAFF:
        check_no_test_names(session=session, conversation=conversation, text=body)
    identity = session.get(ChannelIdentity, conversation.identity_id)
    if identity is None:
        raise LookupError(f"identity {conversation.identity_id} not found")
    message = Message(
        conversation_id=conversation.id,
        channel=conversation.channel,
        direction=Direction.OUT,
        author_kind=author_kind,
        author_id=staff_id,
        body=body,
        lang=conversation.language,
        response_key=response_key,
        route=route,
    )
    session.add(message)
    session.flush()
    queued = outbox.enqueue(session=session, key=key, identity=identity, body=body, conversation_id=conversation.id,
                            message_id=message.id, priority=STAFF_PRIORITY)  # fmt: skip
    if queued is None:
        # A concurrent request queued the same key first: theirs is the one the patient gets.
        session.delete(message)
        session.flush()
        return None
    conversation.last_message_at = utcnow()
    return message
