"""Read and write conversations and messages."""

from __future__ import annotations

import unicodedata

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.conversations.models import (
    Conversation,
    ConversationState,
    Direction,
    Message,
    unprocessed_inbound_where,
)
from bot.db import insert_or_ignore
from bot.patients.models import ChannelIdentity

MAX_BODY_CHARS = 20_000


def clean_text(raw: str | bytes) -> str:
    """Return text safe to store and process: valid UTF-8, no control characters, bounded."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    # Lone surrogates cannot be encoded for the database; NUL is rejected by PostgreSQL.
    text = text.encode("utf-8", errors="replace").decode("utf-8")
    text = "".join(
        ch for ch in text if ch in "\n\t" or not unicodedata.category(ch).startswith("C") or ch == "\u200d"
    )
    return text[:MAX_BODY_CHARS]


def open_conversation(*, session: Session, identity: ChannelIdentity) -> Conversation:
    """Return the identity's open conversation, starting one if there is none."""
    conversation = session.scalars(
        select(Conversation)
        .where(Conversation.identity_id == identity.id, Conversation.state != ConversationState.CLOSED)
        .order_by(Conversation.id.desc())
        .limit(1)
    ).first()
    if conversation is None:
        language = identity.patient.language if identity.patient is not None else "en"
        conversation = Conversation(
            channel=identity.channel,
            identity_id=identity.id,
            patient_id=identity.patient_id,
            language=language,
            slots={},
        )
        session.add(conversation)
        session.flush()
    return conversation


def store_inbound(
    *, session: Session, conversation: Conversation, text: str, provider_message_id: str, media: list[str] | None = None
) -> Message | None:
    """Store an inbound message (and the links of its attachments) once; None when this provider id was stored before."""
    values = {
        "media": media or None,
        "conversation_id": conversation.id,
        "channel": conversation.channel,
        "provider_message_id": provider_message_id,
        "direction": Direction.IN,
        "author_kind": "patient",
        "body": clean_text(text),
    }
    # A duplicate (a provider retry, or a concurrent copy that won the race) inserts nothing.
    message: Message | None = insert_or_ignore(
        session=session, model=Message, values=values, conflict=["channel", "provider_message_id"]
    )
    return message


def unprocessed_inbound(*, session: Session, limit: int = 100) -> list[Message]:
    """Return stored inbound messages that were never processed, oldest first."""
    return list(
        session.scalars(
            select(Message)
            .where(unprocessed_inbound_where(Message))
            .order_by(Message.id)
            .limit(limit)
        )
    )
