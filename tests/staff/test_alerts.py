"""Staff alerts over HTTP on real databases: emergencies and overdue hand-offs, once each, and the Telegram group."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from bot.channels.models import OutboxMessage
from bot.config import get_settings
from bot.conversations import flows
from bot.conversations.engine import Outcome
from bot.conversations.models import Conversation, ConversationState, Handoff, Message, Route
from bot.db import session_scope, utcnow
from bot.metrics import database_metrics
from bot.patients.service import get_or_create_identity
from bot.staff import alerts as alerts_module
from bot.staff.alerts import do_queue_owed_copies, open_alert_count, run_sla_sweeps, sweep_overdue_handoffs
from bot.staff.models import AuditEvent, OwedAlert, StaffAlert
from tests.channels.telegram.conftest import telegram_env
from tests.channels.twilio.conftest import JIM
from tests.fakes.fake_telegram import FakeTelegram
from tests.staff.conftest import DEMO_CLINICIAN_EMAIL, DEMO_STAFF_EMAIL, sign_in
from tests.staff.test_complaints import audit_rows, fake_twilio, sms_app, staff_id, visitor

__all__ = ["fake_twilio"]  # a fixture used below

STAFF_GROUP = "-1001234567890"
EMERGENCY = "I have crushing chest pain and can't breathe"
# The rules see no emergency in it; the trained classifier reads a possible one (below its threshold).
POSSIBLE_EMERGENCY = "i feel like i'm going to pass out"


@pytest.fixture
def fake_telegram() -> Iterator[FakeTelegram]:
    """A fake Telegram Bot API on loopback."""
    with FakeTelegram() as fake:
        yield fake


def alerts() -> list[tuple[str, int, int, int]]:
    """Return (kind, conversation id, hand-off id, priority) of every alert."""
    with session_scope() as session:
        rows = session.execute(
            select(
                StaffAlert.kind, StaffAlert.conversation_id, StaffAlert.handoff_id, StaffAlert.priority
            ).order_by(StaffAlert.id)
        ).all()
    return [(row[0], row[1], row[2], row[3]) for row in rows]


def only_handoff() -> tuple[int, int]:
    with session_scope() as session:
        handoff = session.scalars(select(Handoff)).one()
        return handoff.id, handoff.conversation_id


def sweep(now_offset: timedelta = timedelta(0)) -> int:
    with session_scope() as session:
        return sweep_overdue_handoffs(session=session, now=utcnow() + now_offset)


def sweep_past_due(handoff_id: int, *, later: timedelta = timedelta(minutes=1)) -> int:
    """Sweep `later` after the hand-off's due time (working hours decide it: after hours, the next working day)."""
    with session_scope() as session:
        handoff = session.get(Handoff, handoff_id)
        assert handoff is not None
        return sweep_overdue_handoffs(session=session, now=handoff.due_at + later)


def emergency_message_ids() -> list[int]:
    """Return the ids of the inbound messages routed as emergencies, oldest first."""
    with session_scope() as session:
        return list(session.scalars(select(Message.id).where(Message.direction == "in", Message.route == "emergency").order_by(Message.id)))


def test_an_emergency_raises_an_alert_which_staff_acknowledge(make_app) -> None:
    chat = visitor(make_app)
    chat.ask(EMERGENCY)
    handoff_id, conversation_id = only_handoff()
    assert alerts() == [("emergency", conversation_id, handoff_id, 40)]

    csrf = sign_in(chat.client, DEMO_STAFF_EMAIL)
    page = chat.client.get("/staff/alerts")
    assert page.status_code == 200
    row = page.text.split('data-alert="')[1].split("</tr>")[0]
    assert "Emergency" in row and f'href="/staff/conversations/{conversation_id}"' in row
    assert EMERGENCY.replace("'", "&#39;") not in page.text
    with session_scope() as session:
        alert_id = session.scalars(select(StaffAlert.id)).one()
        assert open_alert_count(session=session) == 1
    assert chat.client.post(f"/staff/alerts/{alert_id}/ack").status_code == 403  # no CSRF token
    done = chat.client.post(
        f"/staff/alerts/{alert_id}/ack", data={"csrf_token": csrf}, follow_redirects=False
    )
    assert (done.status_code, done.headers["location"]) == (303, "/staff/alerts")
    with session_scope() as session:
        alert = session.get(StaffAlert, alert_id)
        assert alert is not None
        assert (alert.acknowledged_by_id, alert.acknowledged_at is not None) == (
            staff_id(DEMO_STAFF_EMAIL),
            True,
        )
        assert open_alert_count(session=session) == 0
    assert 'data-alert="' not in chat.client.get("/staff/alerts").text
    sam = str(staff_id(DEMO_STAFF_EMAIL))
    assert [row[:2] for row in audit_rows("alert.acknowledged")] == [(sam, str(alert_id))]
    assert chat.client.post("/staff/alerts/999/ack", data={"csrf_token": csrf}).status_code == 404


def test_every_emergency_message_alerts_staff_even_in_a_handoff_they_acknowledged_and_own(make_app) -> None:
    chat = visitor(make_app)
    chat.ask("my chest hurts really bad")
    handoff_id, conversation_id = only_handoff()
    assert alerts() == [("emergency", conversation_id, handoff_id, 40)]
    csrf = sign_in(chat.client, DEMO_STAFF_EMAIL)
    with session_scope() as session:
        first_alert = session.scalars(select(StaffAlert.id)).one()
    acked = chat.client.post(f"/staff/alerts/{first_alert}/ack", data={"csrf_token": csrf}, follow_redirects=False)
    assert acked.status_code == 303
    claimed = chat.client.post(
        f"/staff/conversations/{conversation_id}/claim", data={"csrf_token": csrf}, follow_redirects=False
    )
    assert claimed.status_code == 303
    with session_scope() as session:
        assert session.get(Conversation, conversation_id).state == "staff"  # type: ignore[union-attr]
        assert open_alert_count(session=session) == 0

    # A second, different emergency in the same open hand-off: the crisis line, and a new alert.
    replies = chat.ask("i want to kill myself")
    assert any("988" in reply for reply in replies), replies
    # A third message of the same kind alerts again too: each emergency message is one alert.
    chat.ask("my father collapsed and is not breathing")
    assert only_handoff() == (handoff_id, conversation_id)
    assert alerts() == [("emergency", conversation_id, handoff_id, 40)] * 3
    with session_scope() as session:
        keyed = session.scalars(select(StaffAlert.message_id).order_by(StaffAlert.id)).all()
        assert open_alert_count(session=session) == 2
    assert keyed == emergency_message_ids()


def test_an_emergency_message_handled_again_alerts_once(make_app) -> None:
    chat = visitor(make_app)
    chat.ask(EMERGENCY)
    (message_id,) = emergency_message_ids()
    _, conversation_id = only_handoff()
    # A retry of the same message (a worker that died after raising the alert, a redelivered action call).
    with session_scope() as session:
        flows.do_emergency(session=session, conversation_id=conversation_id, kind="cardiac", message_id=message_id)
    with session_scope() as session:
        assert session.scalars(select(StaffAlert.message_id)).all() == [message_id]
    # An unkeyed alert (an action server that sends no message id) is still once per hand-off.
    for _ in range(2):
        with session_scope() as session:
            flows.do_emergency(session=session, conversation_id=conversation_id, kind="cardiac")
    with session_scope() as session:
        assert session.scalars(select(StaffAlert.message_id).order_by(StaffAlert.id)).all() == [message_id, None]


def test_a_possible_emergency_in_a_chat_staff_hold_gets_the_911_advice_and_an_urgent_alert(make_app) -> None:
    chat = visitor(make_app)
    chat.ask("I want to talk to a person")
    handoff_id, conversation_id = only_handoff()
    csrf = sign_in(chat.client, DEMO_STAFF_EMAIL)
    claimed = chat.client.post(
        f"/staff/conversations/{conversation_id}/claim", data={"csrf_token": csrf}, follow_redirects=False
    )
    assert claimed.status_code == 303
    chat.app.settle()

    replies = chat.ask(POSSIBLE_EMERGENCY)
    assert len(replies) == 1 and "If it gets worse or feels urgent, call 911" in replies[0], replies
    assert alerts() == [("emergency", conversation_id, handoff_id, 40)]
    with session_scope() as session:
        keyed = session.scalars(select(StaffAlert.message_id)).all()
        asked = session.scalars(select(Message.id).where(Message.body == POSSIBLE_EMERGENCY)).all()
    assert keyed == asked
    # The front desk member holding the chat sees the alert and keeps the chat.
    page = chat.client.get("/staff/alerts").text
    assert "Emergency" in page and f'href="/staff/conversations/{conversation_id}"' in page
    assert chat.client.get(f"/staff/conversations/{conversation_id}").status_code == 200
    with session_scope() as session:
        conversation = session.get(Conversation, conversation_id)
        assert conversation is not None
        assert (conversation.state, conversation.assigned_staff_id) == ("staff", staff_id(DEMO_STAFF_EMAIL))

    # The bot is otherwise silent while staff hold the chat.
    assert chat.ask("ok, and what are your hours?") == []
    assert len(alerts()) == 1


def test_the_sla_sweep_alerts_once_for_an_overdue_handoff_without_a_staff_reply(make_app) -> None:
    chat = visitor(make_app)
    chat.ask("I want to talk to a person")
    handoff_id, conversation_id = only_handoff()
    with session_scope() as session:
        handoff = session.get(Handoff, handoff_id)
        assert handoff is not None and handoff.reason == "human"
        due_at = handoff.due_at
    assert sweep() == 0
    with time_machine.travel(due_at + timedelta(minutes=1), tick=False):
        assert (sweep(), sweep()) == (1, 0)
    with session_scope() as session:
        created = session.scalars(select(StaffAlert.created_at)).one()
    assert created == due_at + timedelta(minutes=1)
    assert alerts() == [("sla_breach", conversation_id, handoff_id, 10)]
    assert sweep_past_due(handoff_id, later=timedelta(days=2)) == 0


def test_an_answered_or_resolved_handoff_raises_no_sla_alert(make_app) -> None:
    chat = visitor(make_app)
    chat.ask("I want to talk to a person")
    handoff_id, _ = only_handoff()
    with session_scope() as session:
        handoff = session.get(Handoff, handoff_id)
        assert handoff is not None
        handoff.first_response_at = utcnow()
    assert sweep_past_due(handoff_id) == 0
    with session_scope() as session:
        handoff = session.get(Handoff, handoff_id)
        assert handoff is not None
        handoff.first_response_at, handoff.resolved_at = None, utcnow()
    assert sweep_past_due(handoff_id) == 0
    assert alerts() == []


def test_medical_alerts_are_for_clinicians_and_admins(make_app) -> None:
    chat = visitor(make_app)
    chat.ask("should I double my blood pressure medication dose")
    handoff_id, conversation_id = only_handoff()
    with session_scope() as session:
        assert session.get(Conversation, conversation_id).reason == "medical"  # type: ignore[union-attr]
    assert sweep_past_due(handoff_id) == 1
    with session_scope() as session:
        alert_id = session.scalars(select(StaffAlert.id)).one()
    csrf = sign_in(chat.client, DEMO_STAFF_EMAIL)
    assert 'data-alert="' not in chat.client.get("/staff/alerts").text
    assert chat.client.post(f"/staff/alerts/{alert_id}/ack", data={"csrf_token": csrf}).status_code == 403
    sign_in(chat.client, DEMO_CLINICIAN_EMAIL)
    assert f'data-alert="{alert_id}"' in chat.client.get("/staff/alerts").text


def test_alerts_reach_the_staff_telegram_group_with_a_link_and_no_patient_details(
    make_app, fake_twilio, fake_telegram: FakeTelegram
) -> None:
    env = telegram_env(fake_telegram) | {"TELEGRAM_STAFF_CHAT_ID": STAFF_GROUP}
    app = sms_app(make_app, fake_twilio, **env)
    try:
        assert app.text_in(EMERGENCY, sender=JIM).status_code == 200
        app.settle()
        handoff_id, conversation_id = only_handoff()
        link = f"https://bot.riverside.example/staff/conversations/{conversation_id}"
        sent = [(m.chat_id, m.text) for m in fake_telegram.sent]
        assert sent == [
            (
                int(STAFF_GROUP),
                f"URGENT (emergency): a patient message was flagged as an emergency. Open: {link}",
            )
        ]
        assert app.fake.messages_to(JIM), "the patient still got the emergency instructions"
        # The emergency hand-off is overdue after its few minutes: one more message, once.
        assert (sweep(timedelta(hours=1)), sweep(timedelta(hours=1))) == (1, 0)
        app.settle()
        texts = [m.text for m in fake_telegram.sent]
        assert texts[1:] == [
            f"Overdue (emergency): a hand-off has passed its response time with no staff reply. Open: {link}"
        ]
        for text in texts:
            for detail in ("Jim", "James", "Wilson", "617", "555", "chest", "breathe"):
                assert detail not in text.replace(link, ""), detail
        with session_scope() as session:
            keys = session.scalars(select(OutboxMessage.key).where(OutboxMessage.key.like("alert:%"))).all()
            alert_ids = session.scalars(select(StaffAlert.id).order_by(StaffAlert.id)).all()
        assert sorted(keys) == sorted(f"alert:{i}:telegram" for i in alert_ids)
        # The alert page works over https (the public URL), as staff use it.
        staff = TestClient(app.client.app, base_url="https://testserver")
        sign_in(staff)
        assert f'href="/staff/conversations/{conversation_id}"' in staff.get("/staff/alerts").text
        assert alerts() == [
            ("emergency", conversation_id, handoff_id, 40),
            ("sla_breach", conversation_id, handoff_id, 40),
        ]
    finally:
        app.harness.workers.channels["telegram"].close()  # type: ignore[attr-defined]


# -- alerts that fail to be raised -------------------------------------------------------------

PATIENT = "+16175550999"


def route(runtime, text: str) -> Outcome:  # type: ignore[no-untyped-def]
    """Route one text message through the engine in its own transaction, as the processor does."""
    with session_scope() as session:
        return runtime.engine.receive(
            session=session, channel="sms", address=PATIENT, text=text, provider_message_id=uuid.uuid4().hex
        )


def queued_reply_keys(message_id: int | None) -> list[str]:
    with session_scope() as session:
        return list(session.scalars(select(OutboxMessage.key).where(OutboxMessage.key.like(f"reply:{message_id}:%"))))


def owed() -> list[tuple[int | None, str, str | None, int]]:
    """Return (message id, kind, emergency kind, tries) of every alert still owed."""
    with session_scope() as session:
        rows = session.execute(
            select(OwedAlert.message_id, OwedAlert.kind, OwedAlert.emergency_kind, OwedAlert.attempts)
            .order_by(OwedAlert.id)
        ).all()
    return [(row[0], row[1], row[2], row[3]) for row in rows]


def owed_gauge() -> float:
    """Return the owed-alerts figure /metrics reports."""
    with session_scope() as session:
        families = {family.name: family for family in database_metrics(session=session, now=utcnow())}
    return families["clinicbot_staff_alerts_owed"].samples[0].value


def raise_owed() -> int:
    with session_scope() as session:
        return flows.do_raise_owed_alerts(session=session, now=utcnow())


def alert_channel_down(patch: pytest.MonkeyPatch) -> None:
    """Make raising any alert fail after writing its row, as a database that refuses part of it does."""
    write = alerts_module.do_raise_alert

    def down(**kwargs: Any) -> None:
        write(**kwargs)
        raise RuntimeError("alert cannot be written")

    patch.setattr("bot.staff.alerts.do_raise_alert", down)


def sweep_once_raising() -> None:
    """Run the SLA sweep loop as the workers do, until it raises an alert."""
    stop = threading.Event()
    loop = threading.Thread(target=run_sla_sweeps, args=(stop,), kwargs={"on_queued": stop.set, "interval": 0.05})
    loop.start()
    loop.join(timeout=30)
    stop.set()
    assert not loop.is_alive(), "the sweep raised no alert"


def test_an_emergency_alert_that_fails_is_owed_and_raised_once_by_the_sweep(runtime) -> None:
    with pytest.MonkeyPatch.context() as patch:
        alert_channel_down(patch)
        outcome = route(runtime, EMERGENCY)
        # The patient's instructions never wait on the alert.
        assert outcome.route == Route.EMERGENCY and "911" in outcome.replies[0].text
        assert queued_reply_keys(outcome.message_id) == [f"reply:{outcome.message_id}:0"]
        assert alerts() == []
        assert owed() == [(outcome.message_id, "emergency", "cardiac", 0)]
        assert owed_gauge() == 1
        # Still failing: the try is counted and the alert stays owed.
        assert raise_owed() == 0
        assert owed() == [(outcome.message_id, "emergency", "cardiac", 1)]

    assert (raise_owed(), raise_owed()) == (1, 0)
    handoff_id, conversation_id = only_handoff()
    assert alerts() == [("emergency", conversation_id, handoff_id, 40)]
    with session_scope() as session:
        assert session.scalars(select(StaffAlert.message_id)).all() == [outcome.message_id]
        handoff = session.get(Handoff, handoff_id)
        assert handoff is not None and handoff.reason == "emergency"
        detected = session.scalars(select(AuditEvent.details).where(AuditEvent.action == "emergency.detected")).all()
    assert detected == [{"kind": "cardiac", "handoff_id": handoff_id, "message_id": outcome.message_id}]
    assert (owed(), owed_gauge()) == ([], 0)
    # The message handled again (a redelivery) alerts no more.
    with session_scope() as session:
        flows.do_emergency_or_log(session=session, conversation_id=conversation_id, kind="cardiac",
                                  message_id=outcome.message_id)  # fmt: skip
    assert (len(alerts()), owed()) == (1, [])


def test_a_possible_emergency_alert_that_fails_is_raised_by_the_sla_sweep(runtime) -> None:
    first = route(runtime, "can i talk to a real person please")
    with session_scope() as session:
        conversation = session.get(Conversation, first.conversation_id)
        assert conversation is not None
        conversation.state = ConversationState.STAFF
    handoff_id, conversation_id = only_handoff()
    with pytest.MonkeyPatch.context() as patch:
        alert_channel_down(patch)
        outcome = route(runtime, POSSIBLE_EMERGENCY)
    assert outcome.route == Route.HANDOFF and "call 911" in outcome.replies[0].text
    assert queued_reply_keys(outcome.message_id) == [f"reply:{outcome.message_id}:0"]
    assert (alerts(), owed()) == ([], [(outcome.message_id, "possible_emergency", None, 0)])

    sweep_once_raising()
    assert alerts() == [("emergency", conversation_id, handoff_id, 40)]
    with session_scope() as session:
        assert session.scalars(select(StaffAlert.message_id)).all() == [outcome.message_id]
        assert session.scalars(select(Handoff.reason)).all() == ["human"]
    assert (owed(), raise_owed()) == ([], 0)


def test_a_possible_emergency_whose_handoff_cannot_be_opened_still_gets_the_911_advice(runtime) -> None:
    with session_scope() as session:
        # An opted-out number in a bot chat: the nurse's hand-off it needs must be opened now, and that fails.
        identity = get_or_create_identity(session=session, channel="sms", address=PATIENT)
        identity.opted_out_at = utcnow()
    with pytest.MonkeyPatch.context() as patch:

        def down(**_: Any) -> None:
            raise RuntimeError("hand-off cannot be written")

        patch.setattr("bot.conversations.flows.do_handoff", down)
        outcome = route(runtime, POSSIBLE_EMERGENCY)
    # The advice without a team or a time to name, first in the queue and past the opt-out.
    assert [(reply.response_key, reply.urgent) for reply in outcome.replies] == [("utter_possible_emergency", True)]
    assert outcome.replies[0].text == (
        "I can't give medical advice. Our staff will see your message. If it gets worse or feels urgent, call 911."
    )
    with session_scope() as session:
        queued = session.execute(select(OutboxMessage.key, OutboxMessage.priority, OutboxMessage.bypass_opt_out)).all()
        assert session.scalars(select(Handoff)).all() == []
    assert [tuple(row) for row in queued] == [(f"reply:{outcome.message_id}:0", 100, True)]
    assert (alerts(), owed()) == ([], [(outcome.message_id, "possible_emergency", None, 0)])

    # The sweep opens the nurse's hand-off and raises the alert, once.
    assert (raise_owed(), raise_owed()) == (1, 0)
    handoff_id, conversation_id = only_handoff()
    assert alerts() == [("emergency", conversation_id, handoff_id, 40)]
    with session_scope() as session:
        assert session.scalars(select(Handoff.reason)).all() == ["medical"]


# -- the staff group's copy of an alert ----------------------------------------------------------


def staff_group(patch: pytest.MonkeyPatch) -> None:
    """Configure a staff Telegram group, so every alert queues a copy for it."""
    patch.setenv("TELEGRAM_BOT_TOKEN", "123456:staff-group-test")
    patch.setenv("TELEGRAM_STAFF_CHAT_ID", STAFF_GROUP)
    get_settings.cache_clear()


def staff_group_unwritable(patch: pytest.MonkeyPatch) -> None:
    """Make the staff group's identity fail to be written: a real database error, as a bad setting gives."""

    def unwritable(*, session: Session, channel: str, address: str) -> None:
        session.execute(text("INSERT INTO channel_identity (channel) VALUES ('telegram')"))  # no address

    patch.setattr("bot.staff.alerts.get_or_create_identity", unwritable)


def copies() -> list[str]:
    """Return the outbox keys of the staff group copies queued."""
    with session_scope() as session:
        return list(session.scalars(select(OutboxMessage.key).where(OutboxMessage.key.like("alert:%")).order_by(OutboxMessage.id)))


def copies_owed() -> list[int]:
    with session_scope() as session:
        return list(session.scalars(select(StaffAlert.id).where(StaffAlert.copy_owed_at.is_not(None)).order_by(StaffAlert.id)))


def copies_gauge() -> float:
    with session_scope() as session:
        families = {family.name: family for family in database_metrics(session=session, now=utcnow())}
    return families["clinicbot_staff_alert_copies_owed"].samples[0].value


def queue_owed_copies() -> int:
    with session_scope() as session:
        return do_queue_owed_copies(session=session, now=utcnow())


def test_an_alert_whose_staff_group_copy_fails_stands_and_the_sweep_queues_the_copy_once(runtime) -> None:
    with pytest.MonkeyPatch.context() as patch:
        staff_group(patch)
        staff_group_unwritable(patch)
        outcome = route(runtime, EMERGENCY)
        assert outcome.route == Route.EMERGENCY and "911" in outcome.replies[0].text
        assert queued_reply_keys(outcome.message_id) == [f"reply:{outcome.message_id}:0"]
        # The inbox's alert is there at once, not owed: only its copy waits.
        handoff_id, conversation_id = only_handoff()
        assert alerts() == [("emergency", conversation_id, handoff_id, 40)]
        with session_scope() as session:
            alert_id = session.scalars(select(StaffAlert.id)).one()
            assert open_alert_count(session=session) == 1
        assert (owed(), owed_gauge()) == ([], 0)
        assert (copies(), copies_owed(), copies_gauge()) == ([], [alert_id], 1)
        # Still failing: the copy stays owed, and the sweep raises nothing else.
        assert (queue_owed_copies(), raise_owed()) == (0, 0)
        assert (copies(), copies_owed()) == ([], [alert_id])

        # The staff group works again: the SLA sweep loop queues the copy, once.
        patch.undo()
        staff_group(patch)
        sweep_once_raising()
        assert (copies(), copies_owed(), copies_gauge()) == ([f"alert:{alert_id}:telegram"], [], 0)
        assert queue_owed_copies() == 0
        assert copies() == [f"alert:{alert_id}:telegram"]
        with session_scope() as session:
            copy = session.scalars(select(OutboxMessage).where(OutboxMessage.key.like("alert:%"))).one()
            assert (copy.channel, copy.priority, f"/staff/conversations/{conversation_id}" in copy.body) == (
                "telegram", 100, True
            )
        assert len(alerts()) == 1
    get_settings.cache_clear()


def test_an_overdue_handoff_is_alerted_though_its_staff_group_copy_fails(runtime) -> None:
    route(runtime, "can i talk to a real person please")
    handoff_id, conversation_id = only_handoff()
    with pytest.MonkeyPatch.context() as patch:
        staff_group(patch)
        staff_group_unwritable(patch)
        # Before, the copy's failure rolled back the whole sweep, every minute: no overdue hand-off alerted.
        assert sweep_past_due(handoff_id) == 1
        assert alerts() == [("sla_breach", conversation_id, handoff_id, 10)]
        assert (copies(), len(copies_owed())) == ([], 1)
    # The staff group was since removed from the settings: nothing to send, and nothing owed.
    get_settings.cache_clear()
    assert (queue_owed_copies(), copies(), copies_owed()) == (0, [], [])
