"""The inbound pipeline: stored first, processed once, recovered after a crash, never blocked by one bad message."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select, text

from bot.channels.inbound import MAX_PROCESS_ERRORS, InboundProcessor, InboundText, do_accept_inbound
from bot.channels.models import OutboxMessage
from bot.conversations.models import Conversation, Handoff, Message
from bot.db import get_engine, session_scope
from bot.staff import inbox
from bot.staff.auth import Principal
from bot.staff.models import OwedAlert, Role, StaffUser


def accept(text: str, provider_id: str, *, address: str = "+16175550123") -> int | None:
    with session_scope() as session:
        result = do_accept_inbound(
            session=session,
            inbound=InboundText(channel="sms", address=address, text=text, provider_message_id=provider_id),
        )
        return result.message_id


def test_a_stored_message_is_processed_once_after_a_restart(runtime) -> None:  # type: ignore[no-untyped-def]
    message_id = accept("what are your hours", "SM1")
    # The process that stored it died before processing; a fresh processor picks it up.
    fresh = InboundProcessor(engine=runtime.engine)
    assert fresh.drain() == 1
    assert InboundProcessor(engine=runtime.engine).drain() == 0
    with session_scope() as session:
        keys = session.scalars(select(OutboxMessage.key)).all()
        processed = session.get(Message, message_id).processed_at
    assert keys == [f"reply:{message_id}:0"] and processed is not None


def test_a_duplicate_is_acknowledged_and_ignored(runtime) -> None:  # type: ignore[no-untyped-def]
    assert accept("hi", "SM-dup") is not None
    assert accept("hi", "SM-dup") is None
    InboundProcessor(engine=runtime.engine).drain()
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(OutboxMessage)) == 1


def test_messages_are_answered_in_order(runtime) -> None:  # type: ignore[no-untyped-def]
    first = accept("I need a refill", "SM-a")
    second = accept("metformin 500", "SM-b")
    InboundProcessor(engine=runtime.engine).drain()
    with session_scope() as session:
        rows = session.execute(select(OutboxMessage.key, Message.response_key).join(
            Message, Message.id == OutboxMessage.message_id).order_by(OutboxMessage.id)).all()
    assert rows == [(f"reply:{first}:0", "utter_ask_medication"), (f"reply:{second}:0", "utter_ask_pharmacy")]


def test_a_message_that_keeps_failing_goes_to_staff(runtime, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    message_id = accept("what are your hours", "SM-poison")
    later = accept("hello", "SM-after", address="+16175550124")
    processor = InboundProcessor(engine=runtime.engine)

    def broken(*, session, message, **kwargs):  # type: ignore[no-untyped-def]
        if message.id == message_id:
            raise RuntimeError("bug")
        return original(session=session, message=message, **kwargs)

    original = runtime.engine.route
    monkeypatch.setattr(runtime.engine, "route", broken)
    processor.drain()
    with session_scope() as session:
        poison = session.get(Message, message_id)
        handoff = session.scalars(select(Handoff)).one()
        after = session.get(Message, later)
    assert (poison.process_errors, poison.route, poison.processed_at is not None) == (3, "error", True)
    assert (handoff.conversation_id, handoff.reason) == (poison.conversation_id, "unclear")
    assert after.processed_at is not None
    # Never a silent drop: the patient is told a person will reply, once.
    with session_scope() as session:
        told = session.execute(
            select(OutboxMessage.key, OutboxMessage.body, Message.response_key)
            .join(Message, Message.id == OutboxMessage.message_id)
            .where(OutboxMessage.key.like(f"reply:{message_id}:%"))
        ).all()
    assert [(key, response_key) for key, _, response_key in told] == [(f"reply:{message_id}:failed", "utter_handoff_unclear")]
    assert told[0][1].startswith("Sorry, I couldn't understand that, so I've passed your message to our front desk team.")


def test_a_failing_message_in_a_staff_owned_chat_stays_silent(runtime, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    message_id = accept("what are your hours", "SM-poison")
    with session_scope() as session:
        conversation = session.get(Message, message_id).conversation
        conversation.state = "staff"
    monkeypatch.setattr(runtime.engine, "route", lambda **_: (_ for _ in ()).throw(RuntimeError("bug")))
    InboundProcessor(engine=runtime.engine).drain()
    with session_scope() as session:
        poison = session.get(Message, message_id)
        queued = session.scalars(select(OutboxMessage.key)).all()
    assert (poison.route, queued) == ("error", [])


def test_a_batch_routes_several_conversations_at_once(runtime, database_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ids = [accept("what are your hours", f"SM-batch-{n}", address=f"+1617555{2200 + n:04d}") for n in range(5)]
    analysed_ahead: list[bool] = []
    original = runtime.engine.route

    def spy(*, session, message, analysis=None):  # type: ignore[no-untyped-def]
        analysed_ahead.append(analysis is not None)
        return original(session=session, message=message, analysis=analysis)

    monkeypatch.setattr(runtime.engine, "route", spy)
    outcomes = InboundProcessor(engine=runtime.engine).process_batch(limit=8)
    assert sorted(outcome.message_id for outcome in outcomes) == sorted(ids)
    assert all(outcome.replies for outcome in outcomes)
    # On SQLite the classifier reads each text before the write turn starts; PostgreSQL has no such turn.
    assert analysed_ahead == [database_url.startswith("sqlite")] * 5
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(OutboxMessage)) == 5


def test_a_poisoned_batch_still_routes_the_rest(runtime, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    good = [accept("hello", f"SM-good-{n}", address=f"+1617555{2300 + n:04d}") for n in range(3)]
    poison = accept("what are your hours", "SM-poison-2", address="+16175552399")
    original = runtime.engine.route

    def broken(*, session, message, **kwargs):  # type: ignore[no-untyped-def]
        if message.id == poison:
            raise RuntimeError("bug")
        return original(session=session, message=message, **kwargs)

    monkeypatch.setattr(runtime.engine, "route", broken)
    InboundProcessor(engine=runtime.engine).process_batch(limit=8)
    with session_scope() as session:
        routed = {m.id: (m.processed_at is not None, m.process_errors) for m in session.scalars(select(Message).where(Message.id.in_([*good, poison])))}
    assert routed == {**{n: (True, 0) for n in good}, poison: (False, 1)}


def emergency_texts(message_id: int) -> list[tuple[str, int, bool, str | None]]:
    """Return (key, priority, bypasses opt-out, response) of every reply queued for one inbound message."""
    with session_scope() as session:
        rows = session.execute(
            select(OutboxMessage.key, OutboxMessage.priority, OutboxMessage.bypass_opt_out, Message.response_key)
            .join(Message, Message.id == OutboxMessage.message_id)
            .where(OutboxMessage.key.like(f"reply:{message_id}:%"))
            .order_by(OutboxMessage.id)
        ).all()
    return [(row[0], row[1], row[2], row[3]) for row in rows]


def test_an_emergency_whose_alert_fails_still_gets_the_instructions(runtime, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    message_id = accept("I can't breathe, my throat is closing", "SM-alert-fails")

    def alert_fails(**_):  # type: ignore[no-untyped-def]
        # After the hand-off is written: the savepoint must take it back with the failed alert.
        raise RuntimeError("database hiccup")

    monkeypatch.setattr("bot.staff.alerts.do_raise_alert", alert_fails)
    InboundProcessor(engine=runtime.engine).drain()
    assert emergency_texts(message_id) == [(f"reply:{message_id}:0", 100, True, "utter_emergency")]
    with session_scope() as session:
        message = session.get(Message, message_id)
        assert (message.route, message.process_errors) == ("emergency", 0)
        assert session.scalars(select(Handoff)).all() == []
        # Owed, beside the instructions: the alert sweep raises it later.
        owed = session.execute(select(OwedAlert.message_id, OwedAlert.kind, OwedAlert.emergency_kind)).all()
    assert [tuple(row) for row in owed] == [(message_id, "emergency", "anaphylaxis")]
    failed = [r for r in caplog.records if "EMERGENCY ALERT FAILED" in r.getMessage()]
    assert [(r.levelname, r.exc_info is not None) for r in failed] == [("ERROR", True)]
    assert "breathe" not in caplog.text


def test_an_emergency_that_keeps_failing_gets_the_instructions_and_an_urgent_handoff(runtime, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from bot.staff.models import StaffAlert

    message_id = accept("I can't breathe, my throat is closing", "SM-emergency-poison")
    monkeypatch.setattr(runtime.engine, "route", lambda **_: (_ for _ in ()).throw(RuntimeError("bug")))
    InboundProcessor(engine=runtime.engine).drain()
    with session_scope() as session:
        poison = session.get(Message, message_id)
        handoff = session.scalars(select(Handoff)).one()
        alert = session.scalars(select(StaffAlert)).one()
        body = session.scalars(select(OutboxMessage.body)).one()
    assert (poison.process_errors, poison.route) == (3, "error")
    assert (handoff.reason, handoff.priority, handoff.team) == ("emergency", 40, "nurse")
    assert (alert.kind, alert.handoff_id, alert.message_id) == ("emergency", handoff.id, message_id)
    assert emergency_texts(message_id) == [(f"reply:{message_id}:failed", 100, True, "utter_emergency")]
    assert body.startswith("If this is an emergency, call 911 now")


def test_a_self_harm_message_that_keeps_failing_after_an_opt_out_gets_the_crisis_line(runtime, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from bot.patients.models import ChannelIdentity

    message_id = accept("i want to kill myself", "SM-self-harm-poison")
    with session_scope() as session:
        conversation = session.get(Message, message_id).conversation
        conversation.state = "staff"
        session.get(ChannelIdentity, conversation.identity_id).opted_out_at = conversation.created_at
    monkeypatch.setattr(runtime.engine, "route", lambda **_: (_ for _ in ()).throw(RuntimeError("bug")))
    InboundProcessor(engine=runtime.engine).drain()
    assert emergency_texts(message_id) == [(f"reply:{message_id}:failed", 100, True, "utter_emergency_self_harm")]
    with session_scope() as session:
        assert "988" in session.scalars(select(OutboxMessage.body)).one()
        assert session.scalars(select(Handoff.reason)).all() == ["emergency"]


POSSIBLE_EMERGENCY = "i feel like i'm going to pass out"  # the classifier reads an emergency, the rules do not


@pytest.mark.parametrize("state", ["bot", "staff"])
def test_a_possible_emergency_that_keeps_failing_goes_to_a_nurse_with_the_911_advice(runtime, monkeypatch, state) -> None:  # type: ignore[no-untyped-def]
    from bot.nlu.safety import check
    from bot.staff.models import StaffAlert

    assert not check(POSSIBLE_EMERGENCY).is_emergency and runtime.nlu.analyse(POSSIBLE_EMERGENCY).intent == "emergency"
    message_id = accept(POSSIBLE_EMERGENCY, "SM-possible-poison")
    with session_scope() as session:
        session.get(Message, message_id).conversation.state = state
    monkeypatch.setattr(runtime.engine, "route", lambda **_: (_ for _ in ()).throw(RuntimeError("bug")))
    InboundProcessor(engine=runtime.engine).drain()
    with session_scope() as session:
        poison = session.get(Message, message_id)
        handoffs = session.execute(select(Handoff.reason, Handoff.team)).all()
        alert = session.scalars(select(StaffAlert)).one()
        body = session.scalars(select(OutboxMessage.body)).one()
    assert (poison.process_errors, poison.route) == (3, "error")
    # Not "couldn't understand" for the front desk: a nurse's hand-off (this staff-owned chat had none open),
    # an urgent alert, and the advice first in the queue, sent even after an opt-out.
    assert [tuple(row) for row in handoffs] == [("medical", "nurse")]
    assert (alert.kind, alert.message_id) == ("emergency", message_id)
    assert emergency_texts(message_id) == [(f"reply:{message_id}:failed", 100, True, "utter_handoff_medical")]
    assert "call 911" in body


def test_a_possible_emergency_whose_classifier_fails_too_goes_to_the_front_desk(runtime, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    message_id = accept(POSSIBLE_EMERGENCY, "SM-possible-no-model")
    monkeypatch.setattr(runtime.engine, "route", lambda **_: (_ for _ in ()).throw(RuntimeError("bug")))
    processor = InboundProcessor(engine=runtime.engine)
    monkeypatch.setattr(runtime.engine.nlu, "analyse", lambda _text: (_ for _ in ()).throw(RuntimeError("model")))
    processor.drain()
    with session_scope() as session:
        assert session.scalars(select(Handoff.reason)).all() == ["unclear"]
    assert emergency_texts(message_id) == [(f"reply:{message_id}:failed", 0, False, "utter_handoff_unclear")]


def counting_failure(processor: InboundProcessor, message_id: int) -> tuple[threading.Thread, threading.Event]:
    """Return a thread that counts a routing failure against a message, and the event it sets once done."""
    counted = threading.Event()

    def count() -> None:
        processor._count_failure(message_id)
        counted.set()

    return threading.Thread(target=count, daemon=True), counted


# On SQLite whole transactions are serialised (bot.db): another writer holding the chat cannot interleave.
@pytest.mark.parametrize("database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_counting_a_failure_waits_while_another_writer_holds_the_chat(runtime) -> None:  # type: ignore[no-untyped-def]
    message_id = accept("what are your hours", "SM-held")
    counting, counted = counting_failure(InboundProcessor(engine=runtime.engine), message_id)
    with session_scope() as holder:
        conversation_id = holder.get(Message, message_id).conversation_id
        holder.execute(select(Conversation.id).where(Conversation.id == conversation_id).with_for_update())
        counting.start()
        waited = not counted.wait(0.5)
    finished = counted.wait(10)
    counting.join(10)
    with session_scope() as session:
        errors = session.get(Message, message_id).process_errors
    assert (waited, finished, errors) == (True, True, 1)


@pytest.mark.parametrize("database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_a_failed_message_handed_off_while_staff_claim_the_chat_leaves_it_theirs(runtime) -> None:  # type: ignore[no-untyped-def]
    # The message fails routing for the last time just as a staff member claims the chat. Had the failure
    # read the chat before the claim committed, it would put it back to "waiting" for staff and tell the
    # patient a person will reply, after they were told who is replying.
    message_id = accept("what are your hours", "SM-claimed")
    with session_scope() as session:
        message = session.get(Message, message_id)
        message.process_errors = MAX_PROCESS_ERRORS - 1
        conversation_id = message.conversation_id
        user = session.scalars(select(StaffUser).where(StaffUser.role == Role.STAFF).order_by(StaffUser.id)).first()
        staff = Principal(staff_id=user.id, name=user.name, email=user.email, role=Role(user.role),
                          session_id="test", csrf_token="test")  # fmt: skip
    counting, counted = counting_failure(InboundProcessor(engine=runtime.engine), message_id)
    with session_scope() as session:
        claim = inbox.do_claim(session=session, conversation_id=conversation_id, staff=staff, domain=runtime.engine.domain)
        counting.start()
        waited = not counted.wait(0.5)
    finished = counted.wait(10)
    counting.join(10)
    with session_scope() as session:
        conversation = session.get(Conversation, conversation_id)
        message = session.get(Message, message_id)
        handoffs = session.execute(select(Handoff.claimed_by_id, Handoff.resolved_at)
                                   .where(Handoff.conversation_id == conversation_id)).all()  # fmt: skip
        told = session.scalars(select(Message.response_key).where(
            Message.conversation_id == conversation_id, Message.direction == "out").order_by(Message.id)).all()  # fmt: skip
    assert (claim.status, waited, finished) == ("claimed", True, True)
    assert (conversation.state, conversation.assigned_staff_id) == ("staff", staff.staff_id)
    assert (message.process_errors, message.route) == (MAX_PROCESS_ERRORS, "error")
    assert [tuple(row) for row in handoffs] == [(staff.staff_id, None)]
    assert told == ["utter_staff_claimed"]


def test_a_failure_is_not_counted_against_a_message_another_worker_has_routed_since(runtime) -> None:  # type: ignore[no-untyped-def]
    # This worker's attempt failed and rolled back; another worker claimed the message and routed it before
    # this one came to count the failure.
    message_id = accept("what are your hours", "SM-routed-since")
    processor = InboundProcessor(engine=runtime.engine)
    processor.drain()
    processor._count_failure(message_id)
    with session_scope() as session:
        message = session.get(Message, message_id)
        handoffs = session.scalars(select(Handoff.id)).all()
    assert (message.process_errors, message.route, handoffs) == (0, "answer", [])


@pytest.mark.parametrize("database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_while_a_worker_routes_a_chat_its_next_message_is_stored_at_once_and_waits_its_turn(runtime) -> None:  # type: ignore[no-untyped-def]
    first = accept("I need a refill", "SM-turn-1")
    other = accept("what are your hours", "SM-turn-other", address="+16175550199")
    processor = InboundProcessor(engine=runtime.engine)
    with session_scope() as routing:
        # One worker has claimed the chat's first message and is still routing it.
        assert [message.id for message, _, _ in processor._pending(routing, limit=1)] == [first]
        # The chat's next text arrives: stored and acknowledged without waiting for that routing to commit
        # (a wait for the chat's lock would end in an error here, after a second).
        with session_scope(get_engine()) as storing:  # a session of its own, as another request's
            storing.execute(text("SET LOCAL lock_timeout = '1s'"))
            second = do_accept_inbound(session=storing, inbound=InboundText(
                channel="sms", address="+16175550123", text="metformin 500", provider_message_id="SM-turn-2")).message_id  # fmt: skip
        # Another worker's claim takes the other chat's message, never the second: it would overtake the first.
        with session_scope(get_engine()) as rival:
            assert [message.id for message, _, _ in processor._pending(rival, limit=16)] == [other]
    assert second is not None
    # Once the first is routed, the second is next.
    assert processor.process_one(only=first) is not None
    with session_scope() as session:
        assert [message.id for message, _, _ in processor._pending(session, limit=16)] == [other, second]
