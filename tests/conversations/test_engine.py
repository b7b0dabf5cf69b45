"""The conversation engine end to end on real databases: routes, forms, hand-offs, safety."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import func, select

from bot.channels.models import OutboxMessage
from bot.conversations.flows import lab_status
from bot.conversations.models import (
    Conversation,
    ConversationState,
    Handoff,
    Message,
    PatientRequest,
    Priority,
    Route,
)
from bot.db import session_scope
from bot.labs.flows import PatientIn, do_upsert_order
from bot.patients.models import ChannelIdentity, Patient
from bot.patients.service import get_identity
from bot.promises.models import Promise
from bot.staff.models import AuditEvent, StaffAlert

JIM = "+16175550142"  # demo patient with a late and a resulted lab order
MARIA = "+16175550101"  # demo patient who prefers Spanish
STRANGER = "+16175550999"
# The rules see no emergency in it; the trained classifier reads a possible one, below its emergency threshold.
POSSIBLE_EMERGENCY = "i feel like i'm going to pass out"
# A Wednesday afternoon in clinic hours (America/New_York, 14:00 local).
OPEN_HOURS = datetime(2026, 11, 18, 19, 0, tzinfo=UTC)


def send(runtime, text, *, address=STRANGER, channel="sms", provider_id=None):  # type: ignore[no-untyped-def]
    """Send one inbound message through the engine in its own transaction."""
    with session_scope() as session:
        return runtime.engine.receive(
            session=session,
            channel=channel,
            address=address,
            text=text,
            provider_message_id=provider_id or uuid.uuid4().hex,
        )


def texts(outcome) -> str:  # type: ignore[no-untyped-def]
    return " ".join(reply.text for reply in outcome.replies)


@pytest.fixture(autouse=True)
def _clinic_open():  # type: ignore[no-untyped-def]
    with time_machine.travel(OPEN_HOURS, tick=False):
        yield


def test_common_question_is_answered_in_the_clinics_words(runtime) -> None:
    outcome = send(runtime, "what time do you open tomorrow?")
    assert (outcome.route, outcome.intent) == (Route.ANSWER, "hours")
    assert outcome.replies[0].response_key == "utter_hours"
    assert "8 am" in texts(outcome)


def test_known_patient_is_greeted_by_preferred_name(runtime) -> None:
    outcome = send(runtime, "hello there", address=JIM)
    assert outcome.intent == "greeting"
    assert "Jim" in texts(outcome)


def test_unknown_sender_is_not_greeted_by_name(runtime) -> None:
    outcome = send(runtime, "hello there")
    assert "Jim" not in texts(outcome) and "Maria" not in texts(outcome)


@pytest.mark.parametrize(
    ("text", "kind_hint"),
    [
        ("my dad's face is drooping and he's slurring", "911"),
        ("i took 20 of my sleeping pills", "911"),
        ("ya no quiero vivir", "988"),
        ("i want to kill myself", "988"),
    ],
)
def test_emergency_gets_instructions_at_once_and_alerts_staff(runtime, text: str, kind_hint: str) -> None:
    outcome = send(runtime, text)
    assert outcome.route == Route.EMERGENCY
    first = outcome.replies[0]
    assert first.response_key in {"utter_emergency", "utter_emergency_self_harm"}
    assert "911" in first.text and kind_hint in first.text
    with session_scope() as session:
        handoff = session.scalars(select(Handoff)).one()
        conversation = session.get(Conversation, outcome.conversation_id)
        alerts = session.scalars(select(AuditEvent).where(AuditEvent.action == "emergency.detected")).all()
    assert (handoff.reason, handoff.priority) == ("emergency", Priority.EMERGENCY)
    assert conversation.state == ConversationState.WAITING
    assert len(alerts) == 1


def test_emergency_is_answered_while_staff_own_the_chat(runtime) -> None:
    first = send(runtime, "can i talk to a real person please")
    assert first.route == Route.HANDOFF
    with session_scope() as session:
        session.get(Conversation, first.conversation_id).state = ConversationState.STAFF
    silent = send(runtime, "what are your hours")
    assert (silent.route, silent.replies) == (Route.SILENT, [])
    urgent = send(runtime, "my chest hurts really bad and my left arm is numb")
    assert urgent.route == Route.EMERGENCY
    assert "911" in texts(urgent)
    with session_scope() as session:
        conversation = session.get(Conversation, first.conversation_id)
        handoffs = session.scalars(select(Handoff)).all()
    assert conversation.state == ConversationState.STAFF
    assert conversation.priority == Priority.EMERGENCY
    assert [(h.reason, h.priority) for h in handoffs] == [("emergency", Priority.EMERGENCY)]


def test_emergency_after_opt_out_still_gets_instructions(runtime) -> None:
    send(runtime, "hi")
    with session_scope() as session:
        identity = session.scalars(select(ChannelIdentity)).one()
        identity.opted_out_at = OPEN_HOURS
    assert send(runtime, "what are your hours").replies == []
    assert "911" in texts(send(runtime, "i cant breathe"))


def test_bot_stays_silent_while_waiting_for_staff(runtime) -> None:
    handoff = send(runtime, "I want to file a complaint about the front desk, they were very rude")
    assert handoff.route == Route.HANDOFF
    assert "manager" in texts(handoff).lower()
    later = send(runtime, "hello??")
    assert (later.route, later.replies) == (Route.SILENT, [])
    with session_scope() as session:
        stored = session.scalar(select(func.count()).select_from(Message).where(Message.direction == "in"))
    assert stored == 2


def test_medical_question_is_handed_to_nurses_without_advice(runtime) -> None:
    outcome = send(runtime, "is it ok to take ibuprofen with my blood pressure meds?")
    assert (outcome.route, outcome.intent) == (Route.HANDOFF, "medical_question")
    reply = texts(outcome).lower()
    assert "nurs" in reply
    assert "medical advice" in reply
    with session_scope() as session:
        promise = session.scalars(select(Promise).where(Promise.subject_type != "lab_order")).one()
        handoff = session.scalars(select(Handoff)).one()
    assert (promise.kind, promise.subject_id, promise.due_at) == ("handoff_reply", handoff.id, handoff.due_at)


def test_handoff_reply_time_skips_thanksgiving(runtime) -> None:
    # Wednesday 2026-11-25 17:30 local; two working hours run out Friday 9:30 (Thursday is a holiday).
    with time_machine.travel(datetime(2026, 11, 25, 22, 30, tzinfo=UTC), tick=False):
        outcome = send(runtime, "i have a rash on my arm since yesterday, should i worry")
    assert outcome.route == Route.HANDOFF
    assert "by 9:30 am on Friday" in texts(outcome)


def test_two_misses_in_a_row_go_to_staff(runtime) -> None:
    first = send(runtime, "blorp zzzt qwfp")
    assert first.route == Route.CLARIFY
    assert first.replies[0].response_key == "utter_clarify"
    assert len(first.replies[0].buttons) == 3
    second = send(runtime, "gribble fnord wub")
    assert second.route == Route.HANDOFF
    assert second.replies[0].response_key == "utter_handoff_unclear"


def test_a_clear_answer_resets_the_clarify_count(runtime) -> None:
    assert send(runtime, "blorp zzzt qwfp").route == Route.CLARIFY
    assert send(runtime, "what are your hours").route == Route.ANSWER
    assert send(runtime, "gribble fnord wub").route == Route.CLARIFY


def test_refill_form_collects_medication_and_pharmacy(runtime) -> None:
    first = send(runtime, "i need a refill on my rx pls", address=JIM)
    assert first.intent == "prescription_refill"
    assert first.replies[-1].response_key == "utter_ask_medication"
    second = send(runtime, "lisinopril 10 mg", address=JIM)
    assert second.replies[-1].response_key == "utter_ask_pharmacy"
    third = send(runtime, "CVS on Main Street", address=JIM)
    assert third.replies[-1].response_key == "utter_refill_requested"
    assert "CVS on Main Street" in texts(third)
    assert "lisinopril" not in texts(third).lower()
    with session_scope() as session:
        request = session.scalars(select(PatientRequest)).one()
        promise = session.scalars(select(Promise).where(Promise.subject_type != "lab_order")).one()
        conversation = session.get(Conversation, third.conversation_id)
    assert request.details == {"medication": "lisinopril 10 mg", "pharmacy": "CVS on Main Street"}
    assert (request.kind, request.status, request.patient_id is not None) == ("refill", "open", True)
    assert (promise.kind, promise.subject_type, promise.due_at) == ("request_answer", "request", request.due_at)
    assert conversation.active_form is None and "medication" not in conversation.slots


def test_form_rejects_an_empty_answer_and_asks_again(runtime) -> None:
    send(runtime, "refill please")
    outcome = send(runtime, "??")
    assert [r.response_key for r in outcome.replies] == ["utter_form_invalid_slot", "utter_ask_medication"]


def test_form_can_be_cancelled(runtime) -> None:
    send(runtime, "I need to book an appointment")
    outcome = send(runtime, "never mind")
    assert outcome.replies[0].response_key == "utter_form_cancelled"
    with session_scope() as session:
        assert session.scalars(select(PatientRequest)).all() == []


def test_emergency_interrupts_a_form(runtime) -> None:
    send(runtime, "refill please")
    outcome = send(runtime, "wait my husband just collapsed and isnt breathing")
    assert outcome.route == Route.EMERGENCY
    with session_scope() as session:
        assert session.get(Conversation, outcome.conversation_id).active_form is None


def test_reschedule_asks_which_appointment_then_times(runtime) -> None:
    first = send(runtime, "i need to reschedule my appt on friday")
    assert first.intent == "reschedule_appointment"
    assert first.replies[-1].response_key == "utter_ask_reschedule_form_appointment_which"
    second = send(runtime, "friday 3pm with dr lee")
    assert second.replies[-1].response_key == "utter_ask_reschedule_form_preferred_times"
    third = send(runtime, "any morning next week")
    assert third.replies[-1].response_key == "utter_reschedule_requested"
    with session_scope() as session:
        request = session.scalars(select(PatientRequest)).one()
    assert (request.kind, request.action) == ("appointment", "reschedule")


def test_lab_status_for_known_patient_names_no_test(runtime) -> None:
    outcome = send(runtime, "any news on my lab results?", address=JIM)
    assert outcome.intent == "lab_results"
    keys = [r.response_key for r in outcome.replies]
    assert keys == ["utter_lab_status_late", "utter_lab_status_resulted"]
    body = texts(outcome).lower()
    for secret in ("lipid", "panel", "metabolic", "hemoglobin", "blood count"):
        assert secret not in body


def file_ann_under_jims_number() -> None:
    """Run lab intake for Ann Wilson, another record, filed under Jim's number: a family line from now on."""
    ann = PatientIn(name="Ann Wilson", phone=JIM, external_id="RFC-9001")
    with session_scope() as session:
        do_upsert_order(session=session, order_id="ORD-ANN", patient=ann, test_name="Thyroid panel",
                                  ordered_at=OPEN_HOURS - timedelta(days=1),
                                  expected_by=OPEN_HOURS + timedelta(days=2), source="rest")  # fmt: skip
        assert session.scalars(select(func.count()).where(Patient.phone == JIM)).one() == 2


def jims_phone() -> tuple[ChannelIdentity, list[dict[str, object]]]:
    """Return Jim's SMS identity and the audit trail's withdrawn links."""
    with session_scope() as session:
        identity = get_identity(session=session, channel="sms", address=JIM)
        withdrawn = select(AuditEvent.details).where(AuditEvent.action == "identity.link_withdrawn")
        return identity, list(session.scalars(withdrawn))


def test_a_number_later_filed_for_a_second_patient_no_longer_gets_the_first_ones_lab_statuses(
    runtime,
) -> None:
    assert "Jim" in texts(send(runtime, "hello there", address=JIM))  # his number, on file for him alone
    file_ann_under_jims_number()
    outcome = send(runtime, "are my lab results back yet", address=JIM)
    assert [r.response_key for r in outcome.replies] == ["utter_lab_results_unverified"]
    identity, withdrawn = jims_phone()
    assert not identity.is_verified and identity.verified_at is None
    assert withdrawn == [
        {"patient_id": identity.patient_id, "method": "phone_on_file", "reason": "phone_shared"}
    ]
    assert "Jim" not in texts(send(runtime, "hello there", address=JIM))


def test_the_lab_status_disclosure_checks_the_number_itself(runtime) -> None:
    # Routed before Ann was filed (or by another process): the disclosure must not trust the earlier check.
    # Filed some other way than intake (which withdraws the link at once): the check itself must catch it.
    outcome = send(runtime, "hello there", address=JIM)
    with session_scope() as session:
        session.add(Patient(name="Ann Wilson", phone=JIM, external_id="RFC-9001"))
    with session_scope() as session:
        assert lab_status(session=session, conversation_id=outcome.conversation_id) is None
    identity, withdrawn = jims_phone()
    assert identity.verified_at is None and [d["reason"] for d in withdrawn] == ["phone_shared"]


def test_lab_status_for_unknown_sender_is_general(runtime) -> None:
    outcome = send(runtime, "are my lab results back yet")
    assert [r.response_key for r in outcome.replies] == ["utter_lab_results_unverified"]


def test_spanish_patient_gets_spanish(runtime) -> None:
    outcome = send(runtime, "hola, necesito una cita para la proxima semana", address=MARIA)
    assert (outcome.lang, outcome.intent) == ("es", "book_appointment")
    assert outcome.replies[-1].response_key == "utter_ask_appointment_which"
    with session_scope() as session:
        conversation = session.get(Conversation, outcome.conversation_id)
    assert conversation.language == "es"
    # A bare "ok" keeps the conversation in Spanish.
    assert send(runtime, "gracias", address=MARIA).lang == "es"


def test_duplicate_provider_id_is_stored_once(runtime) -> None:
    first = send(runtime, "what are your hours", provider_id="SM123")
    again = send(runtime, "what are your hours", provider_id="SM123")
    assert (first.duplicate, again.duplicate, again.replies) == (False, True, [])
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Message).where(Message.direction == "in")) == 1


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\t ",
        "x" * 10_000,
        "😀😀😀",
        "hola I need mi cita tomorrow pls",
        b"\xff\xfe broken \xc3\x28 bytes".decode("utf-8", errors="surrogateescape"),
        "'; DROP TABLE message; --",
        "<script>alert(1)</script><b>hours?</b>",
        "\x00\x01 nul and control",
    ],
)
def test_bad_input_is_stored_and_answered(runtime, text: str) -> None:
    outcome = send(runtime, text)
    # A hand-off answers too: "nul and control" reads to the classifier as a possible emergency (a loss of
    # control), and any such reading goes to a nurse however unsure it is.
    assert outcome.route in {Route.ANSWER, Route.CLARIFY, Route.HANDOFF}
    assert outcome.replies
    with session_scope() as session:
        stored = session.get(Message, outcome.message_id)
        assert stored.processed_at is not None
        assert "\x00" not in (stored.body or "")
        assert session.scalar(select(func.count()).select_from(Message)) >= 2


def test_a_medication_name_is_a_form_answer_not_a_question(runtime) -> None:
    send(runtime, "I need a refill")
    outcome = send(runtime, "metformin 500")
    assert outcome.replies[-1].response_key == "utter_ask_pharmacy"


def test_asking_for_a_person_leaves_the_form(runtime) -> None:
    send(runtime, "I need a refill")
    outcome = send(runtime, "can i just talk to a real person please")
    assert outcome.route == Route.HANDOFF
    with session_scope() as session:
        assert session.get(Conversation, outcome.conversation_id).active_form is None


def test_an_unsure_emergency_is_handed_to_a_nurse_with_the_911_advice(runtime, monkeypatch) -> None:
    from bot.nlu.classifier import Prediction

    unsure = Prediction(lang="en", intent="emergency", confidence=0.55, ranking=(("emergency", 0.55),))
    monkeypatch.setattr(runtime.nlu.model, "predict", lambda text: unsure)
    outcome = send(runtime, "something feels really off with me")
    assert (outcome.route, outcome.intent) == (Route.HANDOFF, "emergency")
    assert outcome.replies[0].response_key == "utter_handoff_medical"
    assert "911" in texts(outcome)
    # The 911 advice goes first in the queue, and even should the number opt out before it is sent.
    assert [reply.urgent for reply in outcome.replies] == [True]
    with session_scope() as session:
        assert session.scalars(select(Handoff)).one().priority == Priority.MEDICAL


def test_an_unsure_emergency_mid_form_leaves_the_form_for_a_nurse(runtime, monkeypatch) -> None:
    from bot.nlu.classifier import Prediction

    send(runtime, "I need a refill")
    unsure = Prediction(lang="en", intent="emergency", confidence=0.3, ranking=(("emergency", 0.3),))
    monkeypatch.setattr(runtime.nlu.model, "predict", lambda text: unsure)
    outcome = send(runtime, "something feels really off with me")
    assert (outcome.route, outcome.intent) == (Route.HANDOFF, "emergency")
    assert "911" in texts(outcome)
    with session_scope() as session:
        # Not stored as the medication, and no refill request made of it.
        assert session.get(Conversation, outcome.conversation_id).active_form is None
        assert session.scalars(select(PatientRequest)).all() == []


def queued_replies(message_id: int) -> list[tuple[str, str | None]]:
    """Return (key, body) of the outbox rows queued in reply to one inbound message."""
    with session_scope() as session:
        rows = session.execute(
            select(OutboxMessage.key, OutboxMessage.body)
            .where(OutboxMessage.key.like(f"reply:{message_id}:%"))
            .order_by(OutboxMessage.id)
        ).all()
    return [(row[0], row[1]) for row in rows]


def staff_alerts() -> list[tuple[str, int, int | None, int]]:
    """Return (kind, hand-off id, message id, priority) of every staff alert."""
    with session_scope() as session:
        rows = session.execute(
            select(StaffAlert.kind, StaffAlert.handoff_id, StaffAlert.message_id, StaffAlert.priority)
            .order_by(StaffAlert.id)
        ).all()
    return [(row[0], row[1], row[2], row[3]) for row in rows]


@pytest.mark.parametrize("state", [ConversationState.WAITING, ConversationState.STAFF])
def test_a_possible_emergency_in_a_chat_staff_own_gets_the_911_advice_and_alerts_staff(runtime, state) -> None:
    analysis = runtime.nlu.analyse(POSSIBLE_EMERGENCY)
    assert (analysis.route, analysis.intent, analysis.safety.is_emergency) == (Route.HANDOFF, "emergency", False)
    first = send(runtime, "can i talk to a real person please")
    with session_scope() as session:
        session.get(Conversation, first.conversation_id).state = state
        handoff = session.scalars(select(Handoff)).one()
        before = (handoff.id, handoff.reason, handoff.priority, handoff.team, handoff.due_at)

    outcome = send(runtime, POSSIBLE_EMERGENCY)
    assert (outcome.route, outcome.intent) == (Route.HANDOFF, "emergency")
    assert [reply.response_key for reply in outcome.replies] == ["utter_handoff_medical"]
    # The words a bot chat gets, naming the chat's own team and reply time.
    assert texts(outcome) == (
        "I can't give medical advice, but I've passed your question to our front desk team. "
        "They'll reply by 3 pm today. If it gets worse or feels urgent, call 911."
    )
    assert queued_replies(outcome.message_id) == [(f"reply:{outcome.message_id}:0", texts(outcome))]
    assert [reply.urgent for reply in outcome.replies] == [True]
    assert staff_alerts() == [("emergency", before[0], outcome.message_id, Priority.EMERGENCY)]
    with session_scope() as session:
        handoffs = [(h.id, h.reason, h.priority, h.team, h.due_at) for h in session.scalars(select(Handoff))]
        assert session.get(Conversation, first.conversation_id).state == state
        possible = session.scalars(select(AuditEvent.details).where(AuditEvent.action == "emergency.possible")).all()
    # The hand-off stays the staff's: its holder keeps the chat, and its team still sees it.
    assert handoffs == [before]
    assert possible == [{"handoff_id": before[0], "message_id": outcome.message_id}]

    # Anything else still waits for staff, silently and without an alert.
    quiet = send(runtime, "what are your hours")
    assert (quiet.route, quiet.replies) == (Route.SILENT, [])
    assert queued_replies(quiet.message_id) == []
    assert len(staff_alerts()) == 1


def outbox_after(outbox_id: int) -> list[tuple[str, int, bool]]:
    """Return (key, priority, bypasses the opt-out) of every text queued after an outbox id."""
    with session_scope() as session:
        rows = session.execute(
            select(OutboxMessage.key, OutboxMessage.priority, OutboxMessage.bypass_opt_out)
            .where(OutboxMessage.id > outbox_id)
            .order_by(OutboxMessage.id)
        ).all()
    return [(row[0], row[1], row[2]) for row in rows]


def last_outbox_id() -> int:
    with session_scope() as session:
        return session.scalar(select(func.max(OutboxMessage.id))) or 0


@pytest.mark.parametrize("state", [ConversationState.BOT, ConversationState.WAITING, ConversationState.STAFF])
def test_a_possible_emergency_after_an_opt_out_gets_the_911_advice_alone_and_alerts_staff(runtime, state) -> None:
    first = send(runtime, "hello there" if state == ConversationState.BOT else "can i talk to a real person please")
    with session_scope() as session:
        session.get(Conversation, first.conversation_id).state = state
        handoff = session.scalars(select(Handoff)).first()
        before = (handoff.id, handoff.reason) if handoff is not None else None
    assert send(runtime, "STOP").replies == []
    queued_before = last_outbox_id()

    outcome = send(runtime, POSSIBLE_EMERGENCY)
    assert (outcome.route, outcome.intent) == (Route.HANDOFF, "emergency")
    assert [(reply.response_key, reply.urgent) for reply in outcome.replies] == [("utter_handoff_medical", True)]
    assert "If it gets worse or feels urgent, call 911." in texts(outcome)
    # Sent though the number opted out, first in the queue: that reply alone.
    assert outbox_after(queued_before) == [(f"reply:{outcome.message_id}:0", 100, True)]
    with session_scope() as session:
        handoffs = [(h.id, h.reason) for h in session.scalars(select(Handoff))]
        conversation = session.get(Conversation, outcome.conversation_id)
        identity = session.get(ChannelIdentity, conversation.identity_id)
        assert identity.opted_out_at is not None
    if before is None:
        # A bot chat had no hand-off: a nurse's is opened for the message, as for a number still opted in.
        ((handoff_id, reason),) = handoffs
        assert (reason, conversation.state) == ("medical", ConversationState.WAITING)
        assert "our nursing team" in texts(outcome)
    else:
        assert (handoffs, conversation.state) == ([before], state)
        handoff_id = before[0]
    assert staff_alerts() == [("emergency", handoff_id, outcome.message_id, Priority.EMERGENCY)]

    # The number stays opted out: anything else gets nothing, and raises no alert.
    quiet = send(runtime, "what are your hours")
    assert (quiet.route, quiet.replies) == (Route.SILENT, [])
    assert outbox_after(queued_before) == [(f"reply:{outcome.message_id}:0", 100, True)]
    assert len(staff_alerts()) == 1


@pytest.mark.parametrize(
    "text", ["I ran out of my seizure meds, can I skip a few days?", "my heart hurts really bad", "me corté las venas"]
)
def test_a_clinical_question_or_an_emergency_is_never_a_form_answer(runtime, text: str) -> None:
    send(runtime, "I need a refill")
    outcome = send(runtime, text)
    assert outcome.route in (Route.HANDOFF, Route.EMERGENCY)
    with session_scope() as session:
        assert session.get(Conversation, outcome.conversation_id).active_form is None
        assert session.scalars(select(PatientRequest)).all() == []


def test_a_question_only_a_clinician_may_answer_is_handed_to_a_nurse(runtime) -> None:
    outcome = send(runtime, "¿debo ir a urgencias?", address=MARIA)
    assert (outcome.route, outcome.intent) == (Route.HANDOFF, "medical_question")
    assert outcome.replies[0].response_key == "utter_handoff_medical"
    with session_scope() as session:
        assert session.scalars(select(Handoff)).one().priority == Priority.MEDICAL


def test_spanish_lab_status_reads_naturally(runtime) -> None:
    outcome = send(runtime, "como van mis resultados de laboratorio?", address=MARIA)
    assert outcome.replies[0].response_key == "utter_lab_status_pending"
    text = texts(outcome)
    assert "solicitada el " in text and "del el" not in text
    assert "hemoglobin" not in text.lower()


def test_a_question_about_something_else_leaves_the_form(runtime) -> None:
    send(runtime, "I need a refill", address=JIM)
    outcome = send(runtime, "wait, is my lab result back yet?", address=JIM)
    assert outcome.intent == "lab_results"
    assert outcome.replies[0].response_key.startswith("utter_lab_status")
    with session_scope() as session:
        assert session.get(Conversation, outcome.conversation_id).active_form is None
