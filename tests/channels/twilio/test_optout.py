"""Opt-out over SMS, end to end: STOP, START, HELP, plain phrases, emergencies, and Twilio's 21610."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from bot.channels.models import OutboxMessage, OutboxStatus
from bot.db import session_scope, utcnow
from bot.patients.models import ChannelIdentity
from bot.staff.models import AuditEvent, StaffAlert
from tests.channels.twilio.conftest import JIM, SmsApp, outbox_rows
from tests.channels.twilio.test_delivery import queue_text
from tests.channels.twilio.test_webhooks import THREE_PART_TEXT


def opted_out(address: str = JIM) -> bool:
    with session_scope() as session:
        identity = session.scalars(select(ChannelIdentity).where(ChannelIdentity.address == address)).one()
        return identity.opted_out_at is not None


def test_stop_silences_the_number_and_cancels_pending_texts(sms_app: SmsApp) -> None:
    pending = queue_text("Your lab test from yesterday is still being processed.", key="lab:1")
    sms_app.text_in("STOP")
    sms_app.settle()
    sms_app.text_in("what are your hours?")
    sms_app.settle()
    statuses = {row.id: row.status for row in outbox_rows()}
    assert (sms_app.fake.messages, opted_out(), statuses) == ([], True, {pending: OutboxStatus.CANCELLED})


def test_an_emergency_after_stop_still_gets_instructions(sms_app: SmsApp) -> None:
    sms_app.text_in("stop")
    sms_app.settle()
    sms_app.text_in("my husband has crushing chest pain and can't breathe")
    sms_app.settle()
    (reply,) = sms_app.fake.messages
    assert reply.body.startswith("If this is an emergency, call 911 now")
    assert opted_out()


def test_a_possible_emergency_after_stop_gets_the_911_advice_alone_and_alerts_staff(sms_app: SmsApp) -> None:
    sms_app.text_in("stop")
    sms_app.settle()
    # The rules see no emergency in it; the classifier reads a possible one.
    sms_app.text_in("i feel like i'm going to pass out")
    sms_app.settle()
    sms_app.text_in("what are your hours?")
    sms_app.settle()
    (reply,) = sms_app.fake.messages
    assert "If it gets worse or feels urgent, call 911." in reply.body
    with session_scope() as session:
        alerts = session.execute(select(StaffAlert.kind, StaffAlert.priority)).all()
    assert ([tuple(alert) for alert in alerts], opted_out()) == ([("emergency", 40)], True)


def test_start_opts_back_in_with_a_confirmation(sms_app: SmsApp) -> None:
    sms_app.text_in("STOP")
    sms_app.text_in("START")
    sms_app.settle()
    (reply,) = sms_app.fake.messages
    assert reply.body == "You will get texts from Riverside Family Clinic again. Reply STOP at any time to stop them."
    assert not opted_out()


def test_help_names_the_clinic_and_how_to_stop(sms_app: SmsApp) -> None:
    sms_app.text_in("HELP")
    sms_app.settle()
    (reply,) = sms_app.fake.messages
    assert reply.body.startswith("Riverside Family Clinic: call +1 (617) 555-0100")
    assert "Reply STOP to stop texts" in reply.body


def test_a_plain_request_to_stop_asks_for_the_keyword(sms_app: SmsApp) -> None:
    sms_app.text_in("please stop texting me")
    sms_app.settle()
    (reply,) = sms_app.fake.messages
    assert reply.body == (
        "To stop all texts from Riverside Family Clinic, reply STOP. You can reply START later to get them again."
    )
    assert not opted_out()


def test_twilio_refusing_an_unsubscribed_number_opts_it_out(sms_app: SmsApp) -> None:
    # The patient opted out at the carrier (Twilio answers 21610); a later text was already queued.
    sms_app.fake.opt_out(JIM)
    due = queue_text("Your lab results are in.", key="lab:1")
    later = queue_text("Reminder: your lab results are in.", key="lab:2")
    with session_scope() as session:
        session.get(OutboxMessage, later).next_attempt_at = utcnow() + timedelta(hours=1)
    sms_app.settle()
    rows = {row.id: (row.status, row.error_code) for row in outbox_rows()}
    assert rows == {due: (OutboxStatus.FAILED, "21610"), later: (OutboxStatus.CANCELLED, "opted_out")}
    assert (sms_app.fake.messages, opted_out()) == ([], True)


def opt_out_audits() -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    with session_scope() as session:
        return [(action, details) for action, details in session.execute(
            select(AuditEvent.action, AuditEvent.details).where(AuditEvent.action.like("identity.%")))]  # fmt: skip


@pytest.mark.parametrize("part", [0, 2], ids=["the first part", "a later part"])
def test_a_21610_in_a_status_callback_opts_the_number_out_for_any_part(sms_app: SmsApp, part: int) -> None:
    # Twilio took the text (a Messaging Service may refuse an opted-out number only afterwards) and then
    # reports 21610 for one of its messages; a later text was already queued.
    due = queue_text(THREE_PART_TEXT, key="lab:1")
    later = queue_text("Reminder: your lab results are in.", key="lab:2")
    with session_scope() as session:
        session.get(OutboxMessage, later).next_attempt_at = utcnow() + timedelta(hours=1)
    sms_app.settle()
    sids = [m.sid for m in sms_app.fake.messages]
    answer = sms_app.status(sids[part], "failed", error_code="21610")
    sms_app.status(sids[part], "failed", error_code="21610")  # again: audited once
    rows = {row.id: (row.status, row.error_code) for row in outbox_rows()}
    assert (len(sids), answer.status_code, opted_out()) == (3, 204, True)
    assert rows == {due: (OutboxStatus.FAILED, "21610"), later: (OutboxStatus.CANCELLED, "opted_out")}
    assert opt_out_audits() == [("identity.opted_out", {"outbox_id": due, "error_code": "21610"})]


def test_an_undelivered_text_for_another_reason_leaves_the_number_opted_in(sms_app: SmsApp) -> None:
    queue_text(THREE_PART_TEXT, key="lab:1")
    sms_app.settle()
    sms_app.status(sms_app.fake.messages[1].sid, "undelivered", error_code="30003")
    assert ([(row.status, row.error_code) for row in outbox_rows()], opted_out()) == (
        [(OutboxStatus.UNDELIVERED, "30003")], False
    )
