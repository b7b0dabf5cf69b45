"""Route one inbound message: safety layer, then state, forms, rules and actions."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from rasa_sdk.executor import ActionExecutor
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified, set_committed_value

from bot.channels import outbox
from bot.channels.optout import Keyword, classify_keyword
from bot.clinic_settings import ClinicContext, ClinicProfile, load_clinic
from bot.conversations.domain import Domain
from bot.conversations.models import (
    HANDOFF_REASON_BY_INTENT,
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
from bot.db import utcnow
from bot.nlu.pipeline import Analysis, Nlu
from bot.patients.models import ChannelIdentity, Patient
from bot.patients.service import PHONE_CHANNELS, get_or_create_identity, verified_patient
from bot.staff import audit

log = logging.getLogger(__name__)

# Words that abandon a half-filled form, in either language.
CANCEL_WORDS = frozenset(
    {"cancel", "stop", "never mind", "nevermind", "forget it", "quit", "exit", "nvm",
     "cancelar", "cancela", "olvidalo", "olvídalo", "no importa", "dejalo", "déjalo", "salir"}
)  # fmt: skip
# A form is interrupted only by a confident wish to talk to a person or a complaint, or by a real
# medical question; a bare medication name ("metformin 500") is an answer, not a question.
FORM_INTERRUPT_CONFIDENCE = 0.85
MEDICAL_INTERRUPT_CONFIDENCE = 0.9
MEDICAL_INTERRUPT_MIN_WORDS = 6
QUESTION_INTERRUPTS = frozenset(
    {"hours", "lab_results", "billing", "portal_help", "records_request", "test_preparation"}
)
FORM_SLOTS = ("medication", "pharmacy", "appointment_which", "preferred_times")


@dataclass(frozen=True)
class Reply:
    """One text for the patient, with optional quick-reply suggestions."""

    text: str
    response_key: str | None
    buttons: tuple[dict[str, str], ...] = ()
    message_id: int | None = None
    # Queued first and sent even after an opt-out, as emergency instructions are: the 911 advice for a
    # possible emergency. Only that reply: the patient asked, and gets the answer to that alone.
    urgent: bool = False


@dataclass
class Outcome:
    """What happened to one inbound message."""

    message_id: int | None
    conversation_id: int | None
    route: Route
    intent: str | None
    confidence: float | None
    lang: str
    replies: list[Reply] = field(default_factory=list)
    duplicate: bool = False
    failed: bool = False  # routing raised; the failure was counted and the message stays queued


@dataclass
class Routed:
    """A message routed but not yet written: `finish` records it and stores its replies for a whole batch."""

    message: Message
    conversation: Conversation
    identity: ChannelIdentity
    route: Route
    intent: str | None
    confidence: float | None
    lang: str
    replies: list[Reply]
    processed_at: datetime


_loops = threading.local()


def run_coroutine(coroutine: Any) -> Any:
    """Run a coroutine to completion from synchronous code, even under a running loop.

    Each thread keeps one event loop for this: a fresh loop per action (`asyncio.run`) cost more
    than the action itself.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        loop = getattr(_loops, "loop", None)
        if loop is None or loop.is_closed():
            loop = _loops.loop = asyncio.new_event_loop()
        return loop.run_until_complete(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def build_executor(package: str = "actions") -> ActionExecutor:
    """Load the rasa-sdk actions from a package, the way the action server does."""
    executor = ActionExecutor()
    executor.register_package(package)
    return executor


# Read on every routed batch to see whether staff changed the profile: built once.
_CLINIC_PROFILE = select(*ClinicProfile.__table__.columns).order_by(ClinicProfile.id).limit(1)

_ROUTED_CONVERSATION_COLUMNS = ("language", "active_form", "slots", "clarify_streak", "last_message_at")
_MESSAGE = Message.__table__
# What routing records on an inbound message, and the rows of the bot's replies: plain statements for a
# whole batch (built once, compiled once). Through the ORM's unit of work these cost a third of routing's
# CPU, and nothing reads the rows back as objects in the same transaction.
_RECORD_ROUTED = (
    update(_MESSAGE)
    .where(_MESSAGE.c.id == bindparam("b_id"))
    .values(lang=bindparam("b_lang"), intent=bindparam("b_intent"), confidence=bindparam("b_confidence"),
            route=bindparam("b_route"), processed_at=bindparam("b_processed_at"))  # fmt: skip
)
_CONVERSATION = Conversation.__table__
_RECORD_CONVERSATION = (
    update(_CONVERSATION)
    .where(_CONVERSATION.c.id == bindparam("b_id"))
    .values({column: bindparam(f"b_{column}", type_=_CONVERSATION.c[column].type)
             for column in _ROUTED_CONVERSATION_COLUMNS})  # fmt: skip
)
_IDENTITY_SEEN = (
    update(ChannelIdentity.__table__)
    .where(ChannelIdentity.__table__.c.id == bindparam("b_id"))
    .values(last_seen_at=bindparam("b_seen"))
)
_STORE_REPLIES = insert(_MESSAGE).returning(_MESSAGE.c.id, sort_by_parameter_order=True)


def _write_columns(row: Any, columns: tuple[str, ...]) -> None:
    """Have the next flush write these loaded columns of a row, changed or not."""
    loaded = row.__dict__
    for column in columns:
        if column in loaded:
            flag_modified(row, column)


class Engine:
    """Decide and produce the bot's replies; every effect goes through actions and flows."""

    def __init__(self, *, nlu: Nlu, domain: Domain, executor: ActionExecutor) -> None:
        self.nlu = nlu
        self.domain = domain
        self.executor = executor
        # The clinic context built from the stored profile, with the profile's values it was built from.
        self._clinic: tuple[tuple[Any, ...], ClinicContext] | None = None

    def clinic(self, *, session: Session) -> ClinicContext:
        """Return the clinic context, rebuilt only when the stored profile changed.

        Building it (validation, the holiday tables) cost more than routing a message; the profile
        row is still read every time, so a change made by staff applies to the next message.
        """
        cached = session.info.get("clinic_context")
        if cached is not None:
            return cached
        values = session.execute(_CLINIC_PROFILE).first()
        known = self._clinic
        if values is not None and known is not None and known[0] == tuple(values):
            session.info["clinic_context"] = known[1]
            return known[1]
        context = load_clinic(session=session)
        if values is not None:
            self._clinic = (tuple(values), context)
        return context

    def receive(
        self, *, session: Session, channel: str, address: str, text: str, provider_message_id: str
    ) -> Outcome:
        """Store an inbound message once, then process it."""
        identity = get_or_create_identity(session=session, channel=channel, address=address)
        conversation = open_conversation(session=session, identity=identity)
        message = store_inbound(
            session=session, conversation=conversation, text=text, provider_message_id=provider_message_id
        )
        if message is None:
            return Outcome(None, conversation.id, Route.SILENT, None, None, conversation.language, duplicate=True)
        session.flush()
        return self.process(session=session, message=message)

    def process(self, *, session: Session, message: Message, analysis: Analysis | None = None) -> Outcome:
        """Route a stored inbound message and store the replies.

        `analysis` is the NLU's reading of this message's body when the caller made it beforehand
        (outside the database's write turn); it is a pure function of the text.
        """
        return self.finish(session=session, routed=[self.route(session=session, message=message, analysis=analysis)])[0]

    def route(self, *, session: Session, message: Message, analysis: Analysis | None = None) -> Routed:
        """Decide a stored inbound message's route and replies; `finish` writes them to the outbox.

        The changes (the message, the conversation, the reply rows) are left to the session's next
        flush, so a batch of messages is written in one flush instead of one each.
        """
        conversation = session.get(Conversation, message.conversation_id)
        assert conversation is not None
        identity = session.get(ChannelIdentity, conversation.identity_id)
        assert identity is not None
        patient = verified_patient(session=session, identity=identity)
        # Read before anything changes, so this query does not flush: the message's changes flush once, below.
        clinic = self.clinic(session=session)
        # Kept off the acknowledgement path: storing a webhook writes only the message row. (The identity's
        # last_seen_at is written by `finish`, with the batch's messages.)
        conversation.last_message_at = message.created_at
        text = message.body or ""
        if analysis is None:
            analysis = self.nlu.analyse(text)
        lang = self._language(analysis=analysis, text=text, conversation=conversation)
        conversation.language = lang
        turn = _Turn(engine=self, session=session, conversation=conversation, identity=identity, patient=patient,
                     clinic=clinic, analysis=analysis, text=text, lang=lang, media=bool(message.media),
                     message_id=message.id)  # fmt: skip
        route, intent, confidence = turn.run()
        # `finish` writes these columns for the whole batch. If an action flushes first, the ORM batches
        # UPDATEs only across rows that change the same columns, and each turn changes its own mix (a
        # form's slots, the language, a clarify count): written with one set of columns, the conversations
        # routed so far take one executemany instead of one UPDATE per mix.
        _write_columns(conversation, _ROUTED_CONVERSATION_COLUMNS)
        return Routed(message, conversation, identity, route, intent, confidence, lang, turn.replies, utcnow())

    def finish(self, *, session: Session, routed: list[Routed]) -> list[Outcome]:
        """Record routed messages, store their replies and queue them in the outbox, in order; return outcomes.

        One flush writes what actions changed (hand-offs, requests), then one statement each records the
        conversations and messages as routed, stores the replies (returning their ids) and queues them.
        """
        # What every turn changes on its conversation is written below, one statement for the batch; the
        # session writes only what else an action changed (a hand-off's state, say).
        conversations = {}
        for item in routed:
            conversation = item.conversation
            values = {column: getattr(conversation, column) for column in _ROUTED_CONVERSATION_COLUMNS}
            for column, value in values.items():
                set_committed_value(conversation, column, value)
            conversations[conversation.id] = {"b_id": conversation.id, **{f"b_{k}": v for k, v in values.items()}}
        session.flush()
        if not routed:
            return []
        connection = session.connection()
        connection.execute(_RECORD_CONVERSATION, list(conversations.values()))
        connection.execute(_RECORD_ROUTED, [
            {"b_id": item.message.id, "b_lang": item.lang, "b_intent": item.intent, "b_confidence": item.confidence,
             "b_route": item.route.value, "b_processed_at": item.processed_at} for item in routed
        ])  # fmt: skip
        seen = {item.identity.id: item.message.created_at for item in routed}  # the latest, in routing order
        connection.execute(_IDENTITY_SEEN, [{"b_id": key, "b_seen": value} for key, value in seen.items()])
        for item in routed:
            set_committed_value(item.identity, "last_seen_at", seen[item.identity.id])
        rows = [
            {"conversation_id": item.conversation.id, "channel": item.conversation.channel, "direction": Direction.OUT.value,
             "author_kind": Author.BOT.value, "body": reply.text, "lang": item.lang, "response_key": reply.response_key,
             "route": item.route.value}  # fmt: skip
            for item in routed
            for reply in item.replies
        ]
        reply_ids = iter(connection.execute(_STORE_REPLIES, rows).scalars().all() if rows else ())
        texts, outcomes = [], []
        for item in routed:
            message, conversation, route = item.message, item.conversation, item.route
            # The session's copy of the message, as the statement above left it (without a second write).
            for name, value in (("lang", item.lang), ("intent", item.intent), ("confidence", item.confidence),
                                ("route", route.value), ("processed_at", item.processed_at)):  # fmt: skip
                set_committed_value(message, name, value)
            replies = []
            for index, reply in enumerate(item.replies):
                out_id = next(reply_ids)
                urgent = route is Route.EMERGENCY or reply.urgent
                # The key ties each reply to its inbound message: reprocessing can never send it twice.
                texts.append(outbox.text_values(
                    key=f"reply:{message.id}:{index}", identity=item.identity, body=reply.text,
                    conversation_id=conversation.id, message_id=out_id, buttons=reply.buttons,
                    priority=100 if urgent else 0, bypass_opt_out=urgent,
                ))  # fmt: skip
                replies.append(Reply(reply.text, reply.response_key, reply.buttons, out_id, urgent=reply.urgent))
            log.info("message %s in conversation %s routed %s (%s)", message.id, conversation.id, route, item.intent)
            outcomes.append(Outcome(message.id, conversation.id, route, item.intent, item.confidence, item.lang, replies))
        outbox.enqueue_many(session=session, texts=texts)
        return outcomes

    @staticmethod
    def _language(*, analysis: Analysis, text: str, conversation: Conversation) -> str:
        # "ok" or an emoji says nothing about language: keep the conversation's.
        words = [w for w in text.split() if any(ch.isalpha() for ch in w)]
        if len(words) >= 2 and analysis.lang_confidence >= 0.7 or len(words) == 1 and analysis.lang_confidence >= 0.9:
            return analysis.lang
        return conversation.language or "en"


@dataclass
class _Turn:
    """One message's routing, with the replies it produced."""

    engine: Engine
    session: Session
    conversation: Conversation
    identity: ChannelIdentity
    patient: Patient | None
    clinic: ClinicContext
    analysis: Analysis
    text: str
    lang: str
    media: bool = False  # the patient attached files (a photo, a document): a person looks at them
    message_id: int | None = None
    replies: list[Reply] = field(default_factory=list)

    def run(self) -> tuple[Route, str | None, float | None]:
        analysis, conversation = self.analysis, self.conversation
        if analysis.route is Route.EMERGENCY:
            # The safety layer acts in every state: staff-owned, closed hours, opted out.
            self.clear_form()
            self.run_steps(["action_emergency"])
            return Route.EMERGENCY, "emergency", analysis.confidence
        if self.identity.channel in PHONE_CHANNELS:
            keyword = classify_keyword(self.text, opted_out=self.identity.opted_out_at is not None)
            if keyword is not None:
                return self.sms_keyword(keyword)
        staff_own = conversation.state in (ConversationState.WAITING, ConversationState.STAFF)
        opted_out = self.identity.opted_out_at is not None
        if analysis.intent == "emergency" and (staff_own or opted_out):
            # A possible emergency the rules did not see. A bot chat hands it to a nurse with the 911 advice;
            # where staff own the chat, or the number opted out (a bot chat would say nothing), the patient
            # gets that same advice and staff an urgent alert, since their queue shows nothing new. The
            # advice goes even after an opt-out: the patient asked. Anything else here stays silent.
            self.run_urgent(["action_possible_emergency"])
            return Route.HANDOFF, analysis.intent, analysis.confidence
        if staff_own or opted_out:
            return Route.SILENT, analysis.intent, analysis.confidence
        if self.media:
            # The bot cannot read a photo or a file: a person looks at it. A medical question with a
            # photo (a rash, a wound) goes to the clinical team, whom front-desk staff cannot open.
            self.clear_form()
            reason = HandoffReason.HUMAN
            if analysis.route is Route.HANDOFF:
                reason = HANDOFF_REASON_BY_INTENT.get(analysis.intent or "", HandoffReason.HUMAN)
            self.set_slot("handoff_reason", str(reason))
            self.run_steps(["action_handoff"])
            return Route.HANDOFF, "media", None
        if conversation.active_form:
            handled = self.continue_form()
            if handled is not None:
                return handled
        if analysis.route is Route.CLARIFY:
            self.run_steps(["action_clarify"])
            route = Route.HANDOFF if conversation.state != ConversationState.BOT else Route.CLARIFY
            return route, analysis.intent, analysis.confidence
        conversation.clarify_streak = 0
        if analysis.intent == "emergency":
            # Not sure enough to call it an emergency: a nurse looks, and the reply still says call 911.
            self.run_urgent(["action_handoff"])
            return Route.HANDOFF, analysis.intent, analysis.confidence
        self.run_steps(self.engine.domain.language(self.lang).intent_steps[analysis.intent])
        return analysis.route, analysis.intent, analysis.confidence

    def sms_keyword(self, keyword: Keyword) -> tuple[Route, str | None, float | None]:
        identity = self.identity
        if keyword is Keyword.STOP:
            self.clear_form()
            if identity.opted_out_at is None:
                identity.opted_out_at = utcnow()
                cancelled = outbox.cancel_pending(session=self.session, identity_id=identity.id, reason="opted_out")
                audit.record(session=self.session, actor_kind="patient", action="identity.opted_out",
                             subject_type="channel_identity", subject_id=identity.id,
                             details={"cancelled_outbox": cancelled})  # fmt: skip
            # No reply: the number opted out, and the carrier confirms STOP itself.
            return Route.SILENT, "opt_out", None
        if keyword is Keyword.START:
            if identity.opted_out_at is not None:
                identity.opted_out_at = None
                audit.record(session=self.session, actor_kind="patient", action="identity.opted_in",
                             subject_type="channel_identity", subject_id=identity.id)  # fmt: skip
            self.say("utter_sms_opted_in")
            return Route.ANSWER, "opt_in", None
        if keyword is Keyword.HELP:
            self.say("utter_sms_help")
            return Route.ANSWER, "help", None
        self.say("utter_sms_stop_confirm")
        return Route.ANSWER, "opt_out_confirm", None

    # -- forms ---------------------------------------------------------------------------------

    def continue_form(self) -> tuple[Route, str | None, float | None] | None:
        form = self.conversation.active_form or ""
        normalized = " ".join(self.text.lower().strip(" .!?¡¿").split())
        if normalized in CANCEL_WORDS:
            self.clear_form()
            self.say("utter_form_cancelled")
            return Route.ANSWER, f"{form}.cancelled", None
        if self.interrupts_form():
            self.clear_form()
            return None
        slot = self.conversation.slots.get("requested_slot")
        events = self.run_action(
            f"validate_{form}", extra_events=[{"event": "slot", "name": slot, "value": self.text}]
        )
        value = next((e.get("value") for e in events if e.get("event") == "slot" and e.get("name") == slot), None)
        if value is None:
            self.say("utter_form_invalid_slot")
            self.ask(form, slot)
            return Route.ANSWER, f"{form}.{slot}", None
        self.set_slot(slot, value)
        self.advance_form(form)
        return Route.ANSWER, f"{form}.{slot}", None

    def interrupts_form(self) -> bool:
        intent, confidence = self.analysis.intent, self.analysis.confidence
        if intent == "emergency" or self.analysis.clinical is not None:
            # A possible emergency or a clinical question is never a form's answer ("my heart hurts" is not
            # a medication): the form ends and the message goes to a nurse.
            return True
        if intent in {"speak_to_human", "complaint"}:
            return confidence >= FORM_INTERRUPT_CONFIDENCE
        if intent == "medical_question" and confidence >= MEDICAL_INTERRUPT_CONFIDENCE:
            return "?" in self.text or len(self.text.split()) >= MEDICAL_INTERRUPT_MIN_WORDS
        # A confident question about something else ("is my lab result back?") is not a slot value.
        # Location is left out: a pharmacy's address reads like a directions question.
        return intent in QUESTION_INTERRUPTS and confidence >= MEDICAL_INTERRUPT_CONFIDENCE and "?" in self.text

    def activate_form(self, form: str) -> None:
        self.clear_form()
        self.conversation.active_form = form
        self.advance_form(form)

    def advance_form(self, form: str) -> None:
        required = self.engine.domain.language(self.lang).forms[form]
        missing = [s for s in required if not self.conversation.slots.get(s)]
        if missing:
            self.set_slot("requested_slot", missing[0])
            self.ask(form, missing[0])
            return
        self.set_slot("requested_slot", None)
        submit = self.engine.domain.language(self.lang).form_submit[form]
        self.run_steps([submit], active_loop=form)
        self.clear_form()

    def ask(self, form: str, slot: str) -> None:
        specific = f"utter_ask_{form}_{slot}"
        self.say(specific if self.engine.domain.has_response(specific) else f"utter_ask_{slot}")

    def clear_form(self) -> None:
        self.conversation.active_form = None
        slots = dict(self.conversation.slots)
        for slot in (*FORM_SLOTS, "requested_slot"):
            slots.pop(slot, None)
        self.conversation.slots = slots

    def set_slot(self, name: str, value: Any) -> None:
        # Reassign so SQLAlchemy notices the JSON column changed.
        self.conversation.slots = {**self.conversation.slots, name: value}

    # -- steps, actions, responses ---------------------------------------------------------------

    def run_steps(self, steps: list[str], *, active_loop: str | None = None) -> None:
        domain = self.engine.domain.language(self.lang)
        for step in steps:
            if step in domain.forms:
                self.activate_form(step)
            elif step in domain.responses:
                self.say(step)
            else:
                self.run_action(step, active_loop=active_loop)

    def run_urgent(self, steps: list[str]) -> None:
        """Run steps whose replies are a possible emergency's advice: queued first, sent even after an opt-out."""
        start = len(self.replies)
        self.run_steps(steps)
        self.replies[start:] = [replace(reply, urgent=True) for reply in self.replies[start:]]

    def run_action(
        self, name: str, *, extra_events: list[dict[str, Any]] | None = None, active_loop: str | None = None
    ) -> list[dict[str, Any]]:
        domain = self.engine.domain.language(self.lang)
        call = {
            "next_action": name,
            "sender_id": str(self.conversation.id),
            "tracker": self.tracker(extra_events=extra_events or [], active_loop=active_loop),
            "domain": domain.raw,
            "version": "3.1",
        }
        result = run_coroutine(self.engine.executor.run(call))
        for response in result.responses:
            self.emit(response)
        for event in result.events:
            if event.get("event") == "slot" and event.get("name") == "handoff_reason":
                self.set_slot("handoff_reason", event.get("value"))
            elif event.get("event") == "active_loop" and event.get("name") is None:
                self.conversation.active_form = None
        return result.events

    def tracker(self, *, extra_events: list[dict[str, Any]], active_loop: str | None) -> dict[str, Any]:
        analysis = self.analysis
        form = active_loop or self.conversation.active_form
        slots = {
            **self.conversation.slots,
            "language": self.lang,
            "known": self.patient is not None,
            "verified": self.patient is not None,
            "name": self.patient.display_name if self.patient is not None else None,
            "conversation_id": self.conversation.id,
        }
        latest = {
            "text": self.text,
            "intent": {"name": analysis.intent, "confidence": analysis.confidence},
            "intent_ranking": [{"name": n, "confidence": c} for n, c in analysis.ranking],
            "metadata": {
                "emergency_kind": analysis.safety.kind.value if analysis.safety.kind else None,
                # An emergency alert is keyed on the message that raised it (once per message, even on a retry).
                "message_id": self.message_id,
            },
        }
        events = [{"event": "user", "text": self.text, "parse_data": latest}, *extra_events]
        return {
            "sender_id": str(self.conversation.id),
            "slots": slots,
            "latest_message": latest,
            "events": events,
            "paused": False,
            "followup_action": None,
            "active_loop": {"name": form} if form else {},
            "latest_action_name": None,
        }

    def emit(self, response: dict[str, Any]) -> None:
        key = response.get("response")
        buttons = tuple({"title": b["title"], "payload": b["payload"]} for b in response.get("buttons") or [])
        if key:
            extra = {k: v for k, v in response.items() if k not in _DISPATCH_KEYS}
            self.say(key, values=extra, buttons=buttons)
        elif response.get("text"):
            self.replies.append(Reply(str(response["text"]), None, buttons))

    def say(self, key: str, *, values: dict[str, Any] | None = None, buttons: tuple[dict[str, str], ...] = ()) -> None:
        slots = {"known": self.patient is not None, "verified": self.patient is not None, "language": self.lang}
        filled = {**self.placeholders(), **(values or {})}
        text = self.engine.domain.render(key, lang=self.lang, slots=slots, values=_Placeholders(filled, key))
        self.replies.append(Reply(text, key, buttons))

    def placeholders(self) -> dict[str, Any]:
        return clinic_values(clinic=self.clinic, lang=self.lang, patient=self.patient, now=utcnow())


_DISPATCH_KEYS = frozenset({"text", "buttons", "elements", "custom", "template", "response", "image", "attachment"})


class _Placeholders(dict[str, Any]):
    """Placeholder values; a missing one renders empty and is logged rather than failing the reply."""

    def __init__(self, values: dict[str, Any], key: str) -> None:
        super().__init__(values)
        self.key = key

    def __missing__(self, name: str) -> str:
        log.error("response %s uses unknown placeholder %s", self.key, name)
        return ""

