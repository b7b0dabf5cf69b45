"""The one inbound pipeline: store durably and acknowledge; a worker processes and queues replies."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from sqlalchemy import Integer, Select, bindparam, func, insert, literal, literal_column, select, text
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
    unprocessed_inbound_where,
)
from bot.conversations.rendering import clinic_values
from bot.conversations.service import clean_text, open_conversation, store_inbound
from bot.db import get_engine, session_scope, utcnow
from bot.nlu.pipeline import Analysis
from bot.nlu.safety import check
from bot.patients.models import ChannelIdentity
from bot.patients.service import get_or_create_identity
from bot.when import render_due

log = logging.getLogger(__name__)

MAX_PROCESS_ERRORS = 3
# Messages routed per transaction: enough to share the claim and the commit, few enough that a batch
# holds SQLite's single writer only briefly (acknowledgements wait for it).
BATCH = 16


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


# Nearly every text comes from an address seen before with a conversation open: one statement (built
# once, so compiled once) stores the message in that conversation, or inserts nothing when the
# message is already stored (a provider retry, or a concurrent copy that won the race) or there is
# no open conversation. First contact, and telling those two apart, take the general path below.
_MESSAGE = Message.__table__
_STORE_IN_OPEN_CONVERSATION = insert(_MESSAGE).from_select(
    ["conversation_id", "channel", "provider_message_id", "direction", "author_kind", "body", "media"],
    select(
        Conversation.id,
        Conversation.channel,
        bindparam("provider_message_id", type_=_MESSAGE.c.provider_message_id.type),
        literal(Direction.IN.value, _MESSAGE.c.direction.type),
        literal(Author.PATIENT.value, _MESSAGE.c.author_kind.type),
        bindparam("body", type_=_MESSAGE.c.body.type),
        bindparam("media", type_=_MESSAGE.c.media.type),
    )
    .join(ChannelIdentity, ChannelIdentity.id == Conversation.identity_id)
    .where(
        ChannelIdentity.channel == bindparam("channel"),
        ChannelIdentity.address == bindparam("address"),
        Conversation.state != ConversationState.CLOSED,
    )
    .order_by(Conversation.id.desc())
    .limit(1),
).returning(
    _MESSAGE.c.id,
    _MESSAGE.c.conversation_id,
    # The conversation's identity, read with the inserted row: RETURNING names only that row.
    literal_column("(SELECT conversation.identity_id FROM conversation WHERE conversation.id = message.conversation_id)"),
)
# SQLite and PostgreSQL spell it alike (see bot.db.insert_or_ignore).
_STORE_IN_OPEN_CONVERSATION._post_values_clause = text("ON CONFLICT (channel, provider_message_id) DO NOTHING")


def do_accept_inbound(*, session: Session, inbound: InboundText) -> Accepted:
    """Store an inbound message exactly once (the caller commits, then acknowledges)."""
    media = list(inbound.media_urls) or None
    session.flush()  # as an ORM statement's autoflush would: the insert below is Core
    stored = session.connection().execute(_STORE_IN_OPEN_CONVERSATION, {
        "channel": inbound.channel, "address": inbound.address, "provider_message_id": inbound.provider_message_id,
        "body": clean_text(inbound.text), "media": media}).first()  # fmt: skip
    if stored is not None:
        message_id, conversation_id, identity_id = stored
        accepted = Accepted(True, message_id, conversation_id, identity_id)
    else:
        identity = get_or_create_identity(session=session, channel=inbound.channel, address=inbound.address)
        conversation = open_conversation(session=session, identity=identity)
        message = store_inbound(session=session, conversation=conversation, text=inbound.text,
                                provider_message_id=inbound.provider_message_id, media=media)  # fmt: skip
        if message is not None:
            session.flush()
        accepted = Accepted(message is not None, message.id if message else None, conversation.id, identity.id)
    if accepted.stored:
        log.info("inbound %s stored (conversation %s, %s)", accepted.message_id, accepted.conversation_id, inbound.channel)
        metrics.message_accepted(inbound.channel)
    return accepted


_PENDING: dict[tuple[bool, bool], Select[tuple[Message, Conversation, ChannelIdentity]]] = {}


def _pending_query(*, postgres: bool, only: bool) -> Select[tuple[Message, Conversation, ChannelIdentity]]:
    """Return the claim query of `InboundProcessor._pending`, built once per kind.

    Building it (an aliased subquery, a locking clause) on every claim cost ~3 ms of CPU on
    PostgreSQL, more than routing the message it claimed; the limit and the message id are bound.
    """
    key = (postgres, only)
    query = _PENDING.get(key)
    if query is not None:
        return query
    query = (
        select(Message, Conversation, ChannelIdentity)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .join(ChannelIdentity, ChannelIdentity.id == Conversation.identity_id)
        .where(unprocessed_inbound_where(Message))
        .order_by(Message.id)
        .limit(bindparam("limit", type_=Integer))
    )
    if only:
        query = query.where(Message.id == bindparam("only", type_=Integer))
    if postgres:
        # Another worker may have claimed an earlier message of this conversation and not committed
        # yet; lock-skipping alone could let this one overtake it, so only the oldest unprocessed
        # message of a conversation is claimed, and a later one waits for the next round.
        # A scalar subquery, not NOT EXISTS: PostgreSQL turned that into an anti-join whose inner side
        # scanned the whole unprocessed index for every candidate (dead entries included), so a claim
        # cost grew with the square of the backlog: 12 ms and 30,000 buffers with 2,000 queued, against
        # 0.3 ms for this per-conversation index lookup (ix_message_unprocessed_conversation).
        earlier = aliased(Message)
        oldest_pending = (
            select(func.min(earlier.id))
            .where(earlier.conversation_id == Message.conversation_id, unprocessed_inbound_where(earlier))
            .scalar_subquery()
        )
        # FOR NO KEY UPDATE on the conversation, not FOR UPDATE: it still keeps a second router out,
        # but storing the chat's next message (whose foreign key takes KEY SHARE) no longer waits for
        # this routing to commit before the webhook is acknowledged.
        query = query.where(Message.id == oldest_pending).with_for_update(
            skip_locked=True, of=(Message, Conversation), key_share=True
        )
    _PENDING[key] = query
    return query


class InboundProcessor:
    """Process stored messages in order, one conversation at a time; safe in several processes."""

    def __init__(self, *, engine: Engine, on_replies: threading.Event | None = None, batch: int = BATCH) -> None:
        self.engine = engine
        self.batch = batch
        self.on_replies = on_replies
        self.wake = threading.Event()

    def _pending(
        self, session: Session, *, limit: int = 1, only: int | None = None
    ) -> list[tuple[Message, Conversation, ChannelIdentity]]:
        """Claim the oldest unprocessed messages whose conversations no other worker is routing.

        Their conversations and identities load in the same query (the engine reads them next). On
        PostgreSQL those rows are locked, and a message whose conversation is locked, or which has an
        earlier unprocessed message, is skipped: a conversation's messages are routed one at a time and
        in order across processes (so a batch holds at most one message per conversation). On SQLite
        whole transactions are serialised (bot.db), so the oldest pending messages are the next ones,
        routed in order within the batch.
        """
        postgres = session.get_bind().dialect.name == "postgresql"
        query = _pending_query(postgres=postgres, only=only is not None)
        params: dict[str, int] = {"limit": limit} if only is None else {"limit": limit, "only": only}
        # Rows, not just messages: the session holds loaded objects weakly, and the engine's lookups of
        # these conversations and identities must find them there rather than query again.
        return [(row[0], row[1], row[2]) for row in session.execute(query, params)]

    def _read_ahead(self, *, limit: int) -> dict[int, tuple[str, Analysis]]:
        """Analyse the next pending messages before taking SQLite's single write turn.

        The NLU reads only the text, so its work need not hold the writer: a plain read (WAL lets it
        run beside the writer) and the analysis happen first, and the transaction that routes them
        is that much shorter. The claim inside it decides what is routed; an analysis is used only
        for the same message with the same body.
        """
        engine = get_engine()
        if engine.dialect.name != "sqlite":
            return {}
        query = (
            select(Message.id, Message.body)
            .where(unprocessed_inbound_where(Message))
            .order_by(Message.id)
            .limit(limit)
        )
        with engine.connect() as connection:
            rows = connection.execute(query).all()
        ahead = {}
        for row in rows:
            try:
                ahead[row.id] = (row.body or "", self.engine.nlu.analyse(row.body or ""))
            except Exception:
                # Routing analyses it again inside the transaction, where a failure is counted.
                log.exception("analysing inbound %s ahead of routing failed", row.id)
        return ahead

    def process_batch(self, *, limit: int = BATCH) -> list[Outcome]:
        """Route up to `limit` pending messages in one transaction; return their outcomes.

        One claim, one write of each kind and one commit for the batch. If any message fails the
        batch rolls back and its messages are routed one by one, so a failure is counted against the
        message that caused it and never holds back the others.
        """
        ahead = self._read_ahead(limit=limit) if limit > 1 else {}
        outcomes: list[Outcome] = []
        claimed_ids: dict[int, int] = {}  # message id -> conversation id, in routing order
        try:
            with session_scope() as session:
                claimed = self._pending(session, limit=limit)
                claimed_ids = {message.id: message.conversation_id for message, _, _ in claimed}
                routed = []
                for message, _conversation, _identity in claimed:
                    body, analysis = ahead.get(message.id, (None, None))
                    if body != (message.body or ""):
                        analysis = None
                    routed.append(self.engine.route(session=session, message=message, analysis=analysis))
                # One statement each records the batch's messages, stores its replies and queues them, in order.
                outcomes = self.engine.finish(session=session, routed=routed)
        except Exception:
            if not claimed_ids:
                raise  # nothing was claimed: the database itself failed, and the caller waits and retries
            log.warning("routing a batch of %d failed; routing its messages one by one", len(claimed_ids))
            # Each once: a message that fails again has its failure counted, and the next batch retries it.
            # A later message of a conversation whose earlier one failed waits too: never answered out of order.
            outcomes, failed = [], set()
            for message_id, conversation_id in claimed_ids.items():
                if conversation_id in failed:
                    continue
                outcome = self.process_one(only=message_id)
                if outcome is not None and outcome.failed:
                    failed.add(conversation_id)
                if outcome is not None:
                    outcomes.append(outcome)
            if any(outcome.replies for outcome in outcomes) and self.on_replies is not None:
                self.on_replies.set()
            return outcomes
        if any(outcome.replies for outcome in outcomes) and self.on_replies is not None:
            self.on_replies.set()
        return outcomes

    def process_one(self, *, only: int | None = None) -> Outcome | None:
        """Process the oldest unprocessed message (or message `only`); return None when there is none."""
        message_id = None
        try:
            with session_scope() as session:
                claimed = self._pending(session, only=only)
                if not claimed:
                    return None
                message = claimed[0][0]
                message_id = message.id
                outcome = self.engine.process(session=session, message=message)
        except Exception:
            if message_id is None:
                raise
            log.exception("processing inbound %s failed", message_id)
            self._count_failure(message_id)
            return Outcome(message_id, None, Route.SILENT, None, None, "en", failed=True)
        if outcome.replies and self.on_replies is not None:
            self.on_replies.set()
        return outcome

    def _count_failure(self, message_id: int) -> None:
        """Count a failure; a message that keeps failing goes to staff rather than blocking the queue.

        An emergency that keeps failing is still an emergency: the safety rules (text only, no model, no
        database) read it again here, and the patient gets the instructions and staff an urgent alert,
        in any conversation state, rather than "couldn't understand" and a front-desk hand-off. So is a
        possible one (the classifier reads an emergency the rules do not): a nurse's hand-off, an urgent
        alert, and the 911 advice, as the engine gives it.
        """
        with session_scope() as session:
            conversation_id = session.scalar(select(Message.conversation_id).where(Message.id == message_id))
            if conversation_id is None:
                return
            # The chat's lock first, as every writer that hands it to staff takes it (the engine's claim, the
            # staff inbox): staff claiming it or the engine routing it meanwhile finish first, or wait for this,
            # and the message and chat are read as they left them. (SQLite serialises whole transactions.)
            session.execute(select(Conversation.id).where(Conversation.id == conversation_id).with_for_update())
            message = session.get(Message, message_id)
            if message is None or message.processed_at is not None:
                return  # routed by another worker since this one failed it
            message.process_errors += 1
            if message.process_errors >= MAX_PROCESS_ERRORS:
                message.processed_at, message.route = utcnow(), "error"
                safety = check(message.body or "")
                if safety.is_emergency:
                    kind = safety.kind.value if safety.kind else None
                    self._tell_emergency(session=session, message=message, kind=kind)
                    return
                if self._possible_emergency(message):
                    self._tell_possible_emergency(session=session, message=message)
                    return
                conversation = session.get(Conversation, message.conversation_id)
                bot_answers = conversation is not None and conversation.state == ConversationState.BOT
                result = flows.do_handoff(
                    session=session, conversation_id=message.conversation_id, reason=HandoffReason.UNCLEAR
                )
                if bot_answers:
                    # Never a silent drop: the patient is told a person will reply, and by when. (When staff
                    # already own the chat the bot stays silent; they see the message in the transcript.)
                    self._reply(session=session, message=message, key="utter_handoff_unclear", result=result,
                                route=Route.HANDOFF)  # fmt: skip

    def _possible_emergency(self, message: Message) -> bool:
        """Return whether the classifier reads an emergency in a message routing kept failing on.

        The classifier may be what failed: then it reads nothing, and the rules' answer stands.
        """
        try:
            return self.engine.nlu.analyse(message.body or "").intent == "emergency"
        except Exception:
            log.exception("reading inbound %s for a possible emergency failed", message.id)
            return False

    def _tell_emergency(self, *, session: Session, message: Message, kind: str | None) -> None:
        """Queue the emergency instructions for a message that failed routing, then alert staff (chat held)."""
        log.error("inbound %s failed routing %d times and is an emergency: instructions and alert sent without it",
                  message.id, message.process_errors)  # fmt: skip
        # Instructions first: the hand-off and alert are bookkeeping whose failure must not lose them.
        if self._reply(session=session, message=message, key=flows.emergency_response(kind), route=Route.EMERGENCY,
                       urgent=True):  # fmt: skip
            flows.do_emergency_or_log(session=session, conversation_id=message.conversation_id, kind=kind,
                                      message_id=message.id)  # fmt: skip

    def _tell_possible_emergency(self, *, session: Session, message: Message) -> None:
        """Hand a possible emergency that failed routing to a nurse, alert staff, and give the 911 advice (chat held).

        In any state, and after an opt-out, as the engine answers one where staff own the chat: the
        patient asked, and the alert calls staff to the message whatever their queue shows.
        """
        log.error("inbound %s failed routing %d times and may be an emergency: 911 advice and alert sent without it",
                  message.id, message.process_errors)  # fmt: skip
        # Never raises: a hand-off or alert that cannot be written is owed to the alert sweep.
        result = flows.do_possible_emergency_or_log(
            session=session, conversation_id=message.conversation_id, message_id=message.id
        )
        # Without a hand-off to name, the 911 advice alone.
        key = "utter_possible_emergency" if result is None else f"utter_handoff_{HandoffReason.MEDICAL}"
        self._reply(session=session, message=message, key=key, result=result, route=Route.HANDOFF, urgent=True)

    def _reply(
        self, *, session: Session, message: Message, key: str, route: Route,
        result: flows.HandoffResult | None = None, urgent: bool = False,
    ) -> bool:
        """Queue the bot's one reply to a message that failed routing; return False when its chat is gone.

        `result` names the hand-off's team and due time in the words. An urgent reply goes first in the
        queue and even after an opt-out, as the engine queues emergency instructions.
        """
        conversation = session.get(Conversation, message.conversation_id)
        identity = session.get(ChannelIdentity, conversation.identity_id) if conversation else None
        if conversation is None or identity is None:
            return False
        clinic, lang, now = load_clinic(session=session), conversation.language or "en", utcnow()
        domain = self.engine.domain
        values = clinic_values(clinic=clinic, lang=lang, patient=None, now=now)
        if result is not None:
            values["team"] = domain.render(f"utter_team_{result.team}", lang=lang, slots={}, values={})
            values["due"] = render_due(due=result.due_at, now=now, tz=clinic.calendar.tz, lang=lang)
        text = domain.render(key, lang=lang, slots={}, values=values)
        out = Message(conversation_id=conversation.id, channel=conversation.channel, direction=Direction.OUT,
                      author_kind=Author.BOT, body=text, lang=lang, response_key=key, route=route)  # fmt: skip
        session.add(out)
        session.flush()
        outbox.enqueue(session=session, key=f"reply:{message.id}:failed", identity=identity, body=text,
                       conversation_id=conversation.id, message_id=out.id, priority=100 if urgent else 0,
                       bypass_opt_out=urgent)  # fmt: skip
        if self.on_replies is not None:
            self.on_replies.set()
        return True

    def drain(self, *, limit: int = 10_000) -> int:
        """Process every pending message; return how many."""
        count = 0
        while count < limit:
            done = len(self.process_batch(limit=min(self.batch, limit - count)))
            if done == 0:
                break
            count += done
        return count

    def run_forever(self, stop: threading.Event, *, poll_seconds: float = 1.0) -> None:
        """Process until stopped; wake early when a message is stored."""
        while not stop.is_set():
            # Cleared before the claim, not after the wait: a wake-up for a message this claim will see is
            # spent by it, and only one that comes after (for a message it may have missed) claims again.
            self.wake.clear()
            try:
                # Stop is set before the wake-up that follows it: checked after the clear, it is never
                # missed, and stopping never waits out a poll.
                if not self.process_batch(limit=self.batch) and not stop.is_set():
                    self.wake.wait(poll_seconds)
            except Exception:
                # Leave the message unprocessed: it is retried, never dropped.
                log.exception("processing an inbound message failed; will retry")
                stop.wait(poll_seconds)
