"""Read and write conversations and messages."""

from __future__ import annotations

import logging
import unicodedata

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.conversations.models import (
    Conversation,
    ConversationState,
    Direction,
    Handoff,
    Message,
    unprocessed_inbound_where,
)
from bot.db import insert_or_ignore
from bot.patients.models import ChannelIdentity

log = logging.getLogger(__name__)

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


def open_handoff(*, session: Session, conversation_id: int) -> Handoff | None:
    """Return the conversation's open hand-off, if it has one (the database allows one)."""
    return session.scalars(
        select(Handoff).where(Handoff.conversation_id == conversation_id, Handoff.resolved_at.is_(None))
    ).first()


def add_open_handoff(*, session: Session, handoff: Handoff) -> Handoff:
    """Insert a conversation's open hand-off and return it; or, when another transaction opened one first, that one.

    A unique index allows one open hand-off per conversation (ix_handoff_one_open_per_conversation). A writer
    that did not lock the conversation (the hand-off of a message that keeps failing to route, in a
    transaction of its own) can look, find none, and insert after another writer did: the index refuses the
    second, and the conversation's hand-off is the one that won, never a second queue entry for staff, nor
    an error that rolls back the caller's work (an emergency alert with it).
    """
    try:
        with session.begin_nested():
            session.add(handoff)
    except IntegrityError:
        # On PostgreSQL the insert waited for the winner to commit, so a fresh read finds its row.
        existing = open_handoff(session=session, conversation_id=handoff.conversation_id)
        if existing is None:
            raise
        log.info("conversation %s: hand-off %s was opened concurrently; using it", existing.conversation_id, existing.id)
        return existing
    return handoff
