"""The one inbound pipeline: store durably and acknowledge; a worker processes and queues replies."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from bot import metrics
from bot.channels import outbox
from bot.clinic_settings import load_clinic
from bot.conversations import flows
from bot.conversations.engine import Engine, Outcome
from bot.conversations.models import (
    Author,
    Conversation,
    ConversationState,
    Direction,
    HandoffReason,
    Message,
    Route,
)
from bot.conversations.rendering import clinic_values
from bot.conversations.service import open_conversation, store_inbound
from bot.db import session_scope, utcnow
from bot.patients.models import ChannelIdentity
from bot.patients.service import get_or_create_identity
from bot.when import render_due

log = logging.getLogger(__name__)

MAX_PROCESS_ERRORS = 3


@dataclass(frozen=True)
class InboundText:
    """A verified message from a provider, before it is stored."""

    channel: str
    address: str
    text: str
    provider_message_id: str
    media_urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class Accepted:
    """What storing a message did: stored now, or a duplicate of one stored before."""

    stored: bool
    message_id: int | None
    conversation_id: int
    identity_id: int


def media_note(urls: tuple[str, ...]) -> str:
    """Return the stored form of attached media: links only, for staff."""
    return "".join(f"\n[media] {url}" for url in urls)


def do_accept_inbound(*, session: Session, inbound: InboundText) -> Accepted:
    """Store an inbound message exactly once (the caller commits, then acknowledges)."""
    identity = get_or_create_identity(session=session, channel=inbound.channel, address=inbound.address)
    conversation = open_conversation(session=session, identity=identity)
    message = store_inbound(
        session=session,
        conversation=conversation,
        text=inbound.text + media_note(inbound.media_urls),
        provider_message_id=inbound.provider_message_id,
    )
    if message is not None:
        session.flush()
        log.info("inbound %s stored (conversation %s, %s)", message.id, conversation.id, inbound.channel)
        metrics.message_accepted(inbound.channel)
    return Accepted(message is not None, message.id if message else None, conversation.id, identity.id)


class InboundProcessor:
    """Process stored messages in order, one conversation at a time; safe in several processes."""

    def __init__(self, *, engine: Engine, on_replies: threading.Event | None = None) -> None:
        self.engine = engine
        self.on_replies = on_replies
        self.wake = threading.Event()

    def _next_pending(self, session: Session) -> Message | None:
        """Claim the oldest unprocessed message whose conversation no other worker is routing.

        Its conversation and identity load in the same query (the engine reads them next). On
        PostgreSQL both rows are locked, and a message whose conversation is locked, or which has an
        earlier unprocessed message, is skipped: a conversation's messages are routed one at a time and
        in order across processes. On SQLite whole transactions are serialised (bot.db), so the
        oldest pending message is always the next one.
        """
        query = (
            select(Message, Conversation, ChannelIdentity)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .join(ChannelIdentity, ChannelIdentity.id == Conversation.identity_id)
            .where(Message.direction == Direction.IN, Message.processed_at.is_(None))
            .order_by(Message.id)
            .limit(1)
        )
        if session.get_bind().dialect.name == "postgresql":
            # Another worker may have claimed an earlier message of this conversation and not committed
            # yet; lock-skipping alone could let this one overtake it, so it waits for the next round.
            earlier = aliased(Message)
            pending_before = (
                select(earlier.id)
                .where(
                    earlier.conversation_id == Message.conversation_id,
                    earlier.direction == Direction.IN,
                    earlier.processed_at.is_(None),
                    earlier.id < Message.id,
                )
                .exists()
            )
            query = query.where(~pending_before).with_for_update(skip_locked=True, of=(Message, Conversation))
        row = session.execute(query).first()
        return row[0] if row is not None else None

    def process_one(self) -> Outcome | None:
        """Process the oldest unprocessed message; return None when there is none."""
        message_id = None
        try:
            with session_scope() as session:
                message = self._next_pending(session)
                if message is None:
                    return None
                message_id = message.id
                outcome = self.engine.process(session=session, message=message)
        except Exception:
            if message_id is None:
                raise
            log.exception("processing inbound %s failed", message_id)
            self._count_failure(message_id)
            return Outcome(message_id, None, Route.SILENT, None, None, "en")
        if outcome.replies and self.on_replies is not None:
            self.on_replies.set()
        return outcome

    def _count_failure(self, message_id: int) -> None:
        """Count a failure; a message that keeps failing goes to staff rather than blocking the queue."""
        with session_scope() as session:
            message = session.get(Message, message_id)
            if message is None:
                return
            message.process_errors += 1
            if message.process_errors >= MAX_PROCESS_ERRORS:
                message.processed_at, message.route = utcnow(), "error"
                conversation = session.get(Conversation, message.conversation_id)
                bot_answers = conversation is not None and conversation.state == ConversationState.BOT
                result = flows.do_handoff(
                    session=session, conversation_id=message.conversation_id, reason=HandoffReason.UNCLEAR
                )
                if bot_answers:
                    # Never a silent drop: the patient is told a person will reply, and by when. (When staff
                    # already own the chat the bot stays silent; they see the message in the transcript.)
                    self._tell_handed_off(session=session, message=message, result=result)

    def _tell_handed_off(self, *, session: Session, message: Message, result: flows.HandoffResult) -> None:
        conversation = session.get(Conversation, message.conversation_id)
        identity = session.get(ChannelIdentity, conversation.identity_id) if conversation else None
        if conversation is None or identity is None:
            return
        clinic, lang, now = load_clinic(session=session), conversation.language or "en", utcnow()
        domain = self.engine.domain
        values = {
            **clinic_values(clinic=clinic, lang=lang, patient=None, now=now),
            "team": domain.render(f"utter_team_{result.team}", lang=lang, slots={}, values={}),
            "due": render_due(due=result.due_at, now=now, tz=clinic.calendar.tz, lang=lang),
        }
        key = "utter_handoff_unclear"
        text = domain.render(key, lang=lang, slots={}, values=values)
        out = Message(conversation_id=conversation.id, channel=conversation.channel, direction=Direction.OUT,
                      author_kind=Author.BOT, body=text, lang=lang, response_key=key, route=Route.HANDOFF)  # fmt: skip
        session.add(out)
        session.flush()
        outbox.enqueue(session=session, key=f"reply:{message.id}:failed", identity=identity, body=text,
                       conversation_id=conversation.id, message_id=out.id)  # fmt: skip
        if self.on_replies is not None:
            self.on_replies.set()

    def drain(self, *, limit: int = 10_000) -> int:
        """Process every pending message; return how many."""
        count = 0
        while count < limit and self.process_one() is not None:
            count += 1
        return count

    def run_forever(self, stop: threading.Event, *, poll_seconds: float = 1.0) -> None:
        """Process until stopped; wake early when a message is stored."""
        while not stop.is_set():
            try:
                if self.process_one() is None:
                    self.wake.wait(poll_seconds)
                    self.wake.clear()
            except Exception:
                # Leave the message unprocessed: it is retried, never dropped.
                log.exception("processing an inbound message failed; will retry")
                stop.wait(poll_seconds)
