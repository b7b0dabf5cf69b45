"""Hand-offs to staff, emergencies and complaints."""

from __future__ import annotations

from typing import Any

from rasa_sdk import Action, Tracker
from rasa_sdk.events import ActiveLoop, EventType, SlotSet
from rasa_sdk.executor import CollectingDispatcher

from actions.common import conversation_id, due_phrase, language, response_text
from bot.conversations import flows
from bot.conversations.models import HANDOFF_REASON_BY_INTENT, HandoffReason
from bot.db import session_scope

TEAM_RESPONSE = {"nurse": "utter_team_nurse", "manager": "utter_team_manager", "front_desk": "utter_team_front_desk"}


def dispatch_handoff(
    *, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict[str, Any], reason: HandoffReason
) -> list[EventType]:
    """Hand the conversation to staff and tell the patient who replies and by when."""
    with session_scope() as session:
        result = flows.do_handoff(session=session, conversation_id=conversation_id(tracker), reason=reason)
        clinic = flows.clinic_for(session=session)
    lang = language(tracker)
    dispatcher.utter_message(
        response=f"utter_handoff_{reason}",
        team=response_text(domain, TEAM_RESPONSE[result.team]),
        due=due_phrase(clinic=clinic, due=result.due_at, lang=lang),
    )
    return [SlotSet("handoff_reason", str(reason)), ActiveLoop(None), SlotSet("requested_slot", None)]


class ActionHandoff(Action):
    """Pass the chat to staff: medical questions, complaints, a request for a person."""

    def name(self) -> str:
        return "action_handoff"

    def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict[str, Any]) -> list[EventType]:
        intent = (tracker.latest_message.get("intent") or {}).get("name")
        reason = HandoffReason(tracker.get_slot("handoff_reason") or HANDOFF_REASON_BY_INTENT.get(intent, "unclear"))
        return dispatch_handoff(dispatcher=dispatcher, tracker=tracker, domain=domain, reason=reason)


class ActionLogComplaint(Action):
    """Record a complaint so the hand-off that follows goes to a manager."""

    def name(self) -> str:
        return "action_log_complaint"

    def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict[str, Any]) -> list[EventType]:
        with session_scope() as session:
            flows.do_log_complaint(session=session, conversation_id=conversation_id(tracker))
        tracker.slots["handoff_reason"] = str(HandoffReason.COMPLAINT)
        return [SlotSet("handoff_reason", str(HandoffReason.COMPLAINT))]


class ActionEmergency(Action):
    """Give emergency instructions at once and alert staff."""

    def name(self) -> str:
        return "action_emergency"

    def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict[str, Any]) -> list[EventType]:
        metadata = tracker.latest_message.get("metadata") or {}
        kind, message_id = metadata.get("emergency_kind"), metadata.get("message_id")
        # Instructions first: they must not wait on the database, nor be lost when the alert fails.
        dispatcher.utter_message(response=flows.emergency_response(kind))
        with session_scope() as session:
            flows.do_emergency_or_log(
                session=session, conversation_id=conversation_id(tracker), kind=kind, message_id=message_id
            )
        return [ActiveLoop(None), SlotSet("requested_slot", None)]


class ActionPossibleEmergency(Action):
    """In a chat staff own, or from a number that opted out, answer a possible emergency as the bot would
    and alert staff to it."""

    def name(self) -> str:
        return "action_possible_emergency"

    def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict[str, Any]) -> list[EventType]:
        message_id = (tracker.latest_message.get("metadata") or {}).get("message_id")
        with session_scope() as session:
            result = flows.do_possible_emergency_or_log(
                session=session, conversation_id=conversation_id(tracker), message_id=message_id
            )
            clinic = flows.clinic_for(session=session)
        if result is None:
            # No hand-off to name (it could not be read or opened; the alert sweep owes it): the 911 advice alone.
            dispatcher.utter_message(response="utter_possible_emergency")
            return []
        # The words a bot chat gets for a possible emergency (the 911 advice), naming the chat's own hand-off
        # (for an opted-out number in a bot chat, the nurse's hand-off opened for it).
        dispatcher.utter_message(
            response=f"utter_handoff_{HandoffReason.MEDICAL}",
            team=response_text(domain, TEAM_RESPONSE[result.team]),
            due=due_phrase(clinic=clinic, due=result.due_at, lang=language(tracker)),
        )
        return []


# Topics offered when the bot is unsure, in order of how often patients ask.
DEFAULT_TOPICS = ("hours", "book_appointment", "prescription_refill", "lab_results")
NOT_TOPICS = {"greeting", "thanks", "out_of_scope", "emergency", "complaint", "medical_question"}


class ActionClarify(Action):
    """Ask what the patient meant, offering likely topics; a second miss goes to staff."""

    def name(self) -> str:
        return "action_clarify"

    def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict[str, Any]) -> list[EventType]:
        with session_scope() as session:
            streak = flows.do_clarify(session=session, conversation_id=conversation_id(tracker))
        if streak >= 2:
            return dispatch_handoff(dispatcher=dispatcher, tracker=tracker, domain=domain, reason=HandoffReason.UNCLEAR)
        text = (tracker.latest_message.get("text") or "").strip()
        if not any(ch.isalnum() for ch in text):
            dispatcher.utter_message(response="utter_clarify_empty")
            return []
        ranked = [r.get("name") for r in tracker.latest_message.get("intent_ranking") or []]
        topics = [i for i in ranked if i not in NOT_TOPICS and f"utter_topic_{i}" in domain.get("responses", {})][:2]
        for fallback in DEFAULT_TOPICS:
            if len(topics) >= 3:
                break
            if fallback not in topics:
                topics.append(fallback)
        labels = [response_text(domain, f"utter_topic_{t}") for t in topics]
        joiner = " o " if language(tracker) == "es" else " or "
        dispatcher.utter_message(
            response="utter_clarify",
            topics=", ".join(labels[:-1]) + joiner + labels[-1],
            buttons=[{"title": label, "payload": f"/{t}"} for t, label in zip(topics, labels, strict=True)],
        )
        return []
