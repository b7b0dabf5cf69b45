"""Texts staff send a patient (replies, notices, resolutions, corrections): stored, then queued exactly once."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.channels import outbox
from bot.channels.models import OutboxMessage
from bot.conversations.models import Author, Conversation, Direction, Message
from bot.db import utcnow
from bot.patients.models import ChannelIdentity

# Staff texts go ahead of routine bot replies, behind emergencies.
STAFF_PRIORITY = 50


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
    """Store an outbound message in the conversation and queue it once under key; None if queued before."""
    if session.scalars(select(OutboxMessage.id).where(OutboxMessage.key == key)).first() is not None:
        return None
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
