"""Refill and appointment requests, their forms, and lab status."""

from __future__ import annotations

from abc import abstractmethod
from datetime import UTC, datetime
from typing import Any

from rasa_sdk import Action, FormValidationAction, Tracker
from rasa_sdk.events import ActiveLoop, EventType, SlotSet
from rasa_sdk.executor import CollectingDispatcher

from actions.common import by_day_phrase, conversation_id, day_phrase, due_phrase, language
from bot.conversations import flows
from bot.conversations.models import RequestKind
from bot.db import session_scope

FORM_SLOTS = ("medication", "pharmacy", "appointment_which", "preferred_times")
APPOINTMENT_ACTION = {"book_form": "book", "reschedule_form": "reschedule", "cancel_form": "cancel"}
APPOINTMENT_RESPONSE = {
    "book": "utter_appointment_requested",
    "reschedule": "utter_reschedule_requested",
    "cancel": "utter_cancel_requested",
}


def _record(*, tracker: Tracker, kind: RequestKind, action: str | None, details: dict[str, Any]) -> str:
    """Record a request for staff and return when the patient will hear back, in their words."""
    with session_scope() as session:
        result = flows.do_record_request(
            session=session, conversation_id=conversation_id(tracker), kind=kind, action=action, details=details
        )
        clinic = flows.clinic_for(session=session)
    return due_phrase(clinic=clinic, due=result.due_at, lang=language(tracker))


def _clear_form() -> list[EventType]:
    return [SlotSet(slot, None) for slot in FORM_SLOTS] + [SlotSet("requested_slot", None), ActiveLoop(None)]


class ActionRefillRequest(Action):
    """Record a refill request for the care team and say when the patient will hear back."""

    def name(self) -> str:
        return "action_refill_request"

    def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict[str, Any]) -> list[EventType]:
        details = {"medication": tracker.get_slot("medication"), "pharmacy": tracker.get_slot("pharmacy")}
        due = _record(tracker=tracker, kind=RequestKind.REFILL, action=None, details=details)
        # The medication is not repeated back: over SMS it could reveal a diagnosis.
        dispatcher.utter_message(response="utter_refill_requested", pharmacy=details["pharmacy"], due=due)
        return _clear_form()


class ActionAppointmentRequest(Action):
    """Record a book, reschedule or cancel request for the front desk."""

    def name(self) -> str:
        return "action_appointment_request"

    def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict[str, Any]) -> list[EventType]:
        form = (tracker.active_loop or {}).get("name") or tracker.get_slot("submitted_form") or "book_form"
        action = APPOINTMENT_ACTION.get(form, "book")
        details = {"appointment": tracker.get_slot("appointment_which"), "preferred": tracker.get_slot("preferred_times")}
        due = _record(tracker=tracker, kind=RequestKind.APPOINTMENT, action=action, details=details)
        dispatcher.utter_message(response=APPOINTMENT_RESPONSE[action], due=due)
        return _clear_form()


class ActionLabStatus(Action):
    """Tell a verified patient where their lab orders stand, without test names or values."""

    def name(self) -> str:
        return "action_lab_status"

    def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict[str, Any]) -> list[EventType]:
        lang = language(tracker)
        with session_scope() as session:
            lines = flows.lab_status(session=session, conversation_id=conversation_id(tracker))
            clinic = flows.clinic_for(session=session)
        if lines is None:
            dispatcher.utter_message(response="utter_lab_results_unverified")
            return []
        if not lines:
            dispatcher.utter_message(response="utter_lab_status_none")
            return []
        for line in lines:
            ordered_day = day_phrase(clinic=clinic, at=line.ordered_at, lang=lang)
            if line.status == "resulted":
                dispatcher.utter_message(response="utter_lab_status_resulted", ordered_day=ordered_day)
            elif line.status == "late":
                update_at = clinic.next_update_at(datetime.now(tz=UTC))
                dispatcher.utter_message(
                    response="utter_lab_status_late",
                    ordered_day=ordered_day,
                    next_update=due_phrase(clinic=clinic, due=update_at, lang=lang),
                )
            else:
                dispatcher.utter_message(
                    response="utter_lab_status_pending",
                    ordered_day=ordered_day,
                    expected=by_day_phrase(clinic=clinic, at=line.expected_by, lang=lang),
                )
        return []


def _free_text(value: Any, *, max_chars: int = 200) -> str | None:
    """Accept a short free-text answer with at least two letters."""
    text = " ".join(str(value or "").split())
    if sum(ch.isalpha() for ch in text) < 2 or len(text) > max_chars:
        return None
    return text


class _RequestFormValidation(FormValidationAction):
    """Shared slot checks: short free text with real words in it."""

    @abstractmethod
    def name(self) -> str:
        """Name the concrete form validator."""

    def validate_medication(self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict) -> dict:
        return {"medication": _free_text(value)}

    def validate_pharmacy(self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict) -> dict:
        return {"pharmacy": _free_text(value)}

    def validate_appointment_which(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict
    ) -> dict:
        return {"appointment_which": _free_text(value, max_chars=300)}

    def validate_preferred_times(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict
    ) -> dict:
        text = " ".join(str(value or "").split())
        # "any", "asap", "mañana" are fine answers; only empty or absurdly long ones are not.
        return {"preferred_times": text if 0 < len(text) <= 300 and any(c.isalnum() for c in text) else None}


class ValidateRefillForm(_RequestFormValidation):
    """Validate the refill form's slots."""

    def name(self) -> str:
        return "validate_refill_form"


class ValidateBookForm(_RequestFormValidation):
    """Validate the booking form's slots."""

    def name(self) -> str:
        return "validate_book_form"


class ValidateRescheduleForm(_RequestFormValidation):
    """Validate the reschedule form's slots."""

    def name(self) -> str:
        return "validate_reschedule_form"


class ValidateCancelForm(_RequestFormValidation):
    """Validate the cancellation form's slots."""

    def name(self) -> str:
        return "validate_cancel_form"
