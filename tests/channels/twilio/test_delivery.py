"""Delivery through the real twilio client: retries, Retry-After, timeouts reconciled, long texts split,
and status callbacks that race the sender's record of the send."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from bot.channels import outbox
from bot.channels.models import EarlyStatus, OutboxPart, OutboxStatus
from bot.channels.outbox import OutboxSender
from bot.channels.sms_text import segments
from bot.db import session_scope, utcnow
from bot.patients.models import ChannelIdentity
from bot.patients.service import get_or_create_identity
from bot.staff.alerts import run_sla_sweeps
from tests.channels.twilio.conftest import JIM, SmsApp, make_due, new_sid, outbox_rows, twilio_env
from tests.fakes.fake_twilio import FakeTwilio, Fault

LONG_TEXT = " ".join(
    f"Step {n}: bring your insurance card, a photo ID and the list of medicines you take every day."
    for n in range(1, 9)
)


def queue_text(body: str, *, key: str = "test:1", address: str = JIM) -> int:
    with session_scope() as session:
        identity = get_or_create_identity(session=session, channel="sms", address=address)
        row_id = outbox.enqueue(session=session, key=key, identity=identity, body=body)
        assert row_id is not None
        return row_id


def test_a_provider_error_is_retried_and_sent_once(sms_app: SmsApp) -> None:
    sms_app.fake.fail_next(Fault.server_error())
    sms_app.text_in("what are your hours?")
    sms_app.settle()
    (after_error,) = outbox_rows()
    make_due()
    sms_app.settle()
    (after_retry,) = outbox_rows()
    assert (after_error.status, after_error.attempts, after_error.error_code) == (OutboxStatus.PENDING, 1, "500")
    assert (after_retry.status, after_retry.attempts) == (OutboxStatus.SENT, 2)
    assert [m.sid for m in sms_app.fake.messages] == [after_retry.provider_message_id]


def test_retry_after_is_honoured(sms_app: SmsApp) -> None:
    sms_app.fake.fail_next(Fault.rate_limited(retry_after=120))
    before = utcnow()
    sms_app.text_in("what are your hours?")
    sms_app.settle()
    (row,) = outbox_rows()
    assert (row.status, row.error_code, sms_app.fake.messages) == (OutboxStatus.PENDING, "20429", [])
    assert row.next_attempt_at >= before + timedelta(seconds=120)


def test_a_timeout_is_reconciled_not_sent_twice(sms_app: SmsApp) -> None:
    # Twilio took the message but answered after our timeout: the outcome is unknown.
    sms_app.fake.fail_next(Fault.slow(seconds=2, record=True))
    sms_app.text_in("what are your hours?")
    sms_app.settle()
    (unknown,) = outbox_rows()
    make_due()
    sms_app.settle()
    (reconciled,) = outbox_rows()
    (accepted,) = sms_app.fake.messages
    assert (unknown.status, unknown.error_code) == (OutboxStatus.UNKNOWN, "timeout")
    assert (reconciled.status, reconciled.provider_message_id) == (OutboxStatus.SENT, accepted.sid)
    assert [method for method, _ in sms_app.fake.requests] == ["POST", "GET"]


def test_a_timeout_that_never_reached_twilio_is_sent_once(sms_app: SmsApp) -> None:
    sms_app.fake.fail_next(Fault.slow(seconds=2, record=False))
    sms_app.text_in("what are your hours?")
    sms_app.settle()
    make_due()
    sms_app.settle()
    (row,) = outbox_rows()
    (accepted,) = sms_app.fake.messages
    assert (row.status, row.provider_message_id) == (OutboxStatus.SENT, accepted.sid)
    assert [method for method, _ in sms_app.fake.requests] == ["POST", "GET", "POST"]


def test_reconcile_waits_while_twilio_cannot_answer(sms_app: SmsApp) -> None:
    sms_app.fake.fail_next(Fault.slow(seconds=2, record=True))
    sms_app.fake.fail_next(Fault.server_error(), on="list")
    sms_app.text_in("what are your hours?")
    sms_app.settle()
    make_due()
    sms_app.settle()
    (still_unknown,) = outbox_rows()
    make_due()
    sms_app.settle()
    (row,) = outbox_rows()
    assert still_unknown.status == OutboxStatus.UNKNOWN
    assert (row.status, len(sms_app.fake.messages)) == (OutboxStatus.SENT, 1)


def test_a_long_text_goes_as_several_messages_in_order(sms_app: SmsApp) -> None:
    queue_text(LONG_TEXT)
    sms_app.settle()
    sent = sms_app.fake.messages
    (row,) = outbox_rows()
    assert len(sent) > 1
    assert all(segments(m.body) <= 3 for m in sent)
    assert " ".join(m.body for m in sent) == LONG_TEXT
    assert (row.status, row.provider_message_id) == (OutboxStatus.SENT, sent[0].sid)


def test_a_long_text_cut_short_sends_only_the_missing_parts(sms_app: SmsApp) -> None:
    sms_app.fake.fail_next(Fault.ok())
    sms_app.fake.fail_next(Fault.server_error())
    queue_text(LONG_TEXT)
    sms_app.settle()
    (partial,) = outbox_rows()
    make_due()
    sms_app.settle()
    (row,) = outbox_rows()
    sent = sms_app.fake.messages
    assert partial.status == OutboxStatus.UNKNOWN
    assert " ".join(m.body for m in sent) == LONG_TEXT
    assert (row.status, row.provider_message_id) == (OutboxStatus.SENT, sent[0].sid)


def test_texts_go_out_in_gsm7_when_they_can(sms_app: SmsApp) -> None:
    queue_text("We\u2019re open today \u2013 see you soon\u2026")
    sms_app.settle()
    assert [m.body for m in sms_app.fake.messages] == ["We're open today - see you soon..."]


def test_an_identical_earlier_text_is_not_mistaken_for_a_lost_one(sms_app: SmsApp) -> None:
    queue_text("Sorry, I didn't catch that.", key="test:1")
    sms_app.settle()
    sms_app.fake.fail_next(Fault.slow(seconds=2, record=False))
    queue_text("Sorry, I didn't catch that.", key="test:2")
    sms_app.settle()
    make_due()
    sms_app.settle()
    first, second = outbox_rows()
    sent = sms_app.fake.messages
    assert len(sent) == 2
    assert (first.provider_message_id, second.provider_message_id) == (sent[0].sid, sent[1].sid)


def test_two_identical_texts_reconciled_together_never_share_one_twilio_message(sms_app: SmsApp) -> None:
    # Both sends time out: Twilio has the first, never got the second. One wave reconciles both, and the
    # first's match is not recorded until the wave ends: the second must not settle on it too.
    sms_app.fake.fail_next(Fault.slow(seconds=2, record=True))
    sms_app.fake.fail_next(Fault.slow(seconds=2, record=False))
    queue_text("Sorry, I didn't catch that.", key="test:1")
    queue_text("Sorry, I didn't catch that.", key="test:2")
    sms_app.settle()
    assert [row.status for row in outbox_rows()] == [OutboxStatus.UNKNOWN, OutboxStatus.UNKNOWN]
    make_due()
    sms_app.settle()
    first, second = outbox_rows()
    sent = sms_app.fake.messages_to(JIM)
    assert [m.body for m in sent] == ["Sorry, I didn't catch that."] * 2
    assert (first.status, second.status) == (OutboxStatus.SENT, OutboxStatus.SENT)
    assert sorted([first.provider_message_id, second.provider_message_id]) == sorted(m.sid for m in sent)


def test_a_reconcile_never_takes_a_text_sent_just_before_it_in_the_same_wave(sms_app: SmsApp) -> None:
    # The first text got a 503 (due again), the second timed out before Twilio had it. Due together, the
    # first is sent, then the second is reconciled: Twilio now has an identical message, not its own.
    sms_app.fake.fail_next(Fault.server_error(status=503))
    sms_app.fake.fail_next(Fault.slow(seconds=2, record=False))
    queue_text("Sorry, I didn't catch that.", key="test:1")
    queue_text("Sorry, I didn't catch that.", key="test:2")
    sms_app.settle()
    assert [row.status for row in outbox_rows()] == [OutboxStatus.PENDING, OutboxStatus.UNKNOWN]
    make_due()
    sms_app.settle()
    sent = sms_app.fake.messages_to(JIM)
    assert len(sent) == 2
    assert sorted(row.provider_message_id for row in outbox_rows()) == sorted(m.sid for m in sent)


def test_a_split_texts_later_parts_are_never_taken_for_an_identical_text(sms_app: SmsApp) -> None:
    # Only a split text's first message id is stored: its later parts must still count as taken.
    queue_text(LONG_TEXT, key="test:1")
    sms_app.settle()
    parts = len(sms_app.fake.messages)
    sms_app.fake.fail_next(Fault.slow(seconds=2, record=False))
    queue_text(LONG_TEXT, key="test:2")
    sms_app.settle()
    make_due()
    sms_app.settle()
    sent = [m.body for m in sms_app.fake.messages_to(JIM)]
    assert parts > 1 and " ".join(sent) == f"{LONG_TEXT} {LONG_TEXT}"
    assert [row.status for row in outbox_rows()] == [OutboxStatus.SENT, OutboxStatus.SENT]


def stored_parts() -> list[tuple[int, int, str]]:
    """Return the stored (outbox id, part, Twilio id) of every split text's messages, in order."""
    with session_scope() as session:
        return [tuple(row) for row in session.execute(  # type: ignore[misc]
            select(OutboxPart.outbox_id, OutboxPart.part, OutboxPart.provider_message_id)
            .order_by(OutboxPart.outbox_id, OutboxPart.part, OutboxPart.id))]  # fmt: skip


def test_every_part_of_a_split_text_is_stored_with_its_row(sms_app: SmsApp) -> None:
    sms_app.fake.fail_next(Fault.ok())
    sms_app.fake.fail_next(Fault.server_error())
    first_id = queue_text(LONG_TEXT)
    sms_app.settle()
    (cut_short,) = sms_app.fake.messages
    # Cut short after the first part: what went out is stored before the row is reconciled.
    assert stored_parts() == [(first_id, 0, cut_short.sid)]
    make_due()
    sms_app.settle()
    sent = sms_app.fake.messages
    assert len(sent) > 1
    assert stored_parts() == [(first_id, n, m.sid) for n, m in enumerate(sent)]
    # A text sent as one message keeps its id on the row alone.
    queue_text("Sorry, I didn't catch that.", key="test:2")
    sms_app.settle()
    assert len(stored_parts()) == len(sent)


def test_a_split_texts_later_parts_are_never_taken_for_an_identical_text_after_a_restart(
    make_app, fake_twilio: FakeTwilio  # type: ignore[no-untyped-def]
) -> None:
    # The first text goes out whole; the second times out before Twilio has it, and the process stops.
    # A fresh one (nothing in memory) reconciles the second: Twilio's only identical messages are the
    # first text's, whose later parts only the database now knows are taken.
    before = SmsApp(harness=make_app(**twilio_env(fake_twilio)), fake=fake_twilio)
    queue_text(LONG_TEXT, key="test:1")
    before.settle()
    parts = len(fake_twilio.messages)
    fake_twilio.fail_next(Fault.slow(seconds=2, record=False))
    queue_text(LONG_TEXT, key="test:2")
    before.settle()
    assert [row.status for row in outbox_rows()] == [OutboxStatus.SENT, OutboxStatus.UNKNOWN]

    after = SmsApp(harness=make_app(**twilio_env(fake_twilio)), fake=fake_twilio)
    assert after.harness.workers.sender.channels["sms"] is not before.harness.workers.sender.channels["sms"]
    make_due()
    after.settle()
    sent = fake_twilio.messages_to(JIM)
    first, second = outbox_rows()
    assert parts > 1 and " ".join(m.body for m in sent) == f"{LONG_TEXT} {LONG_TEXT}"
    assert (first.status, second.status) == (OutboxStatus.SENT, OutboxStatus.SENT)
    assert (first.provider_message_id, second.provider_message_id) == (sent[0].sid, sent[parts].sid)
    assert stored_parts() == [(row.id, n % parts, m.sid) for n, (row, m) in enumerate(
        zip([first] * parts + [second] * parts, sent, strict=True))]  # fmt: skip


def test_logs_carry_ids_not_numbers_or_words(sms_app: SmsApp, caplog: pytest.LogCaptureFixture) -> None:
    # INFO is the configured default; at DEBUG, urllib3 itself logs request URLs.
    caplog.set_level(logging.INFO)
    sms_app.fake.fail_next(Fault.slow(seconds=2, record=True))
    sms_app.text_in("what are your opening hours on weekdays?")
    sms_app.settle()
    make_due()
    sms_app.settle()
    (message,) = sms_app.fake.messages
    logged = caplog.text
    assert message.sid in logged
    assert [leak for leak in ("5550142", "5550199", "weekdays", message.body[:20]) if leak in logged] == []


def wait_for(condition: Callable[[], bool], *, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("then", ["answer", "disconnect"])
def test_a_late_attempt_never_sets_back_a_delivered_text(make_app, fake_twilio: FakeTwilio, then: str) -> None:  # type: ignore[no-untyped-def]
    # A sender whose rows looked stale (its heartbeat could not reach the database) is taken for dead: another
    # sender's reconcile finds its message at Twilio and records it, and Twilio's "delivered" comes. The first
    # sender's answer comes last, "sent" or none at all: the text stays delivered.
    app = SmsApp(harness=make_app(**twilio_env(fake_twilio, CLINICBOT_OUTBOX_SEND_TIMEOUT="10")), fake=fake_twilio)
    fake_twilio.fail_next(Fault.held(then=then))  # type: ignore[arg-type]
    queue_text("Your results are in.")
    first = app.harness.workers.sender
    sending = threading.Thread(target=first.run_once, daemon=True)
    sending.start()
    wait_for(lambda: len(fake_twilio.messages) == 1)
    (message,) = fake_twilio.messages
    other = OutboxSender(channels=first.channels, pacing=False, stale_after=timedelta(0))
    try:
        reconciled = other.run_once()
    finally:
        other.close()
    callback = app.status(message.sid, "delivered")
    fake_twilio.release()
    sending.join(15)
    (row,) = outbox_rows()
    assert (reconciled, callback.status_code, sending.is_alive()) == (1, 204, False)
    assert (row.status, row.provider_message_id, len(fake_twilio.messages)) == (
        OutboxStatus.DELIVERED, message.sid, 1
    )
    # Each attempt is still counted: the first sender's unknown outcome is one more.
    assert row.attempts == (1 if then == "answer" else 2)


def test_a_late_attempt_never_replaces_the_message_a_settled_text_is_counted_by(make_app, fake_twilio: FakeTwilio) -> None:  # type: ignore[no-untyped-def]
    # A sender taken for dead waits for Twilio's answer. Another sender's reconcile asks Twilio, whose list
    # lags behind the first create, finds no trace and sends again; that message is delivered. The first
    # sender's answer then comes: its message went too, but the text stays counted by the one it settled on.
    app = SmsApp(harness=make_app(**twilio_env(fake_twilio, CLINICBOT_OUTBOX_SEND_TIMEOUT="10")), fake=fake_twilio)
    fake_twilio.fail_next(Fault.held())
    queue_text("Your results are in.")
    first = app.harness.workers.sender
    sending = threading.Thread(target=first.run_once, daemon=True)
    sending.start()
    wait_for(lambda: len(fake_twilio.messages) == 1)
    fake_twilio.fail_next(Fault.lagging(), on="list")
    other = OutboxSender(channels=first.channels, pacing=False, stale_after=timedelta(0))
    try:
        assert other.run_once() == 1
    finally:
        other.close()
    late, settled = (m.sid for m in fake_twilio.messages)
    assert app.status(settled, "delivered").status_code == 204
    fake_twilio.release()
    sending.join(15)
    (row,) = outbox_rows()
    assert sending.is_alive() is False
    assert (row.status, row.provider_message_id) == (OutboxStatus.DELIVERED, settled)


@pytest.mark.parametrize("callback_comes", ["after the answer", "before the answer"])
@pytest.mark.parametrize("attempt", ["send", "reconcile"])
def test_a_text_in_flight_when_the_patient_opts_out_is_looked_up_and_recorded_as_sent(
    make_app,  # type: ignore[no-untyped-def]
    fake_twilio: FakeTwilio,
    caplog: pytest.LogCaptureFixture,
    attempt: str,
    callback_comes: str,
) -> None:
    # A sender's answer from Twilio is slow; meanwhile the patient texts STOP, and another sender takes the
    # text in flight for a dead sender's. Its outcome is unknown and the number opted out: the other sender
    # only asks Twilio (sending nothing), finds it, and records it as sent, as it reached the patient. The
    # first sender's late answer changes nothing, and the delivery status counts as any sent text's.
    caplog.set_level(logging.INFO)
    env = twilio_env(fake_twilio, CLINICBOT_OUTBOX_SEND_TIMEOUT="10")
    app = SmsApp(harness=make_app(**env), fake=fake_twilio)
    first = app.harness.workers.sender
    outbox_id = queue_text("Your results are in.")
    if attempt == "reconcile":
        # Twilio took the first attempt but the connection dropped before its answer: the text waits to be
        # reconciled, and the reconcile's look-up at Twilio is the slow answer.
        fake_twilio.fail_next(Fault.disconnect(record=True))
        first.run_once()
        (unknown,) = outbox_rows()
        assert unknown.status == OutboxStatus.UNKNOWN
        make_due()
        fake_twilio.fail_next(Fault.held(), on="list")
    else:
        fake_twilio.fail_next(Fault.held())
    sending = threading.Thread(target=first.run_once, daemon=True)
    sending.start()
    # Twilio has the message, and the sender waits for the answer to its create (or to its reconcile's list).
    waits_on = "GET" if attempt == "reconcile" else "POST"
    wait_for(lambda: len(fake_twilio.messages) == 1 and fake_twilio.requests[-1][0] == waits_on)
    (message,) = fake_twilio.messages
    app.text_in("STOP")
    app.harness.workers.processor.drain()
    other = OutboxSender(channels=first.channels, pacing=False, stale_after=timedelta(0))
    try:
        claimed = other.run_once()
    finally:
        other.close()
    (looked_up,) = outbox_rows()
    if callback_comes == "before the answer":
        callback = app.status(message.sid, "delivered")
    fake_twilio.release()
    sending.join(15)
    (sent,) = outbox_rows()
    if callback_comes == "after the answer":
        callback = app.status(message.sid, "delivered")
    (row,) = outbox_rows()
    assert (claimed, looked_up.status, looked_up.provider_message_id, looked_up.error_code, sending.is_alive()) == (
        1, OutboxStatus.SENT, message.sid, None, False
    )
    recorded = OutboxStatus.DELIVERED if callback_comes == "before the answer" else OutboxStatus.SENT
    assert (sent.status, sent.provider_message_id, sent.error_code, sent.sent_at is not None) == (
        recorded, message.sid, None, True
    )
    assert (callback.status_code, row.status, kept_statuses()) == (204, OutboxStatus.DELIVERED, [])
    assert (len(fake_twilio.messages), [m.sid for m in fake_twilio.messages]) == (1, [message.sid])
    warned = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING and "recorded as sent" in r.getMessage()]  # fmt: skip
    assert warned == [f"outbox {outbox_id}: the patient opted out after it was sent; sms has it: recorded as sent"]
    assert [leak for leak in ("5550142", "5550199", "results are in") if leak in caplog.text] == []


def kept_statuses() -> list[tuple[str, str, str | None]]:
    """Return the status callbacks kept for messages not recorded yet, oldest first."""
    with session_scope() as session:
        rows = session.execute(select(EarlyStatus.provider_message_id, EarlyStatus.status, EarlyStatus.error_code)
                               .order_by(EarlyStatus.id))  # fmt: skip
        return [tuple(kept) for kept in rows]  # type: ignore[misc]


@pytest.mark.parametrize(
    ("status", "error_code", "settled"),
    [("delivered", None, OutboxStatus.DELIVERED), ("undelivered", "30003", OutboxStatus.UNDELIVERED),
     ("failed", "21610", OutboxStatus.FAILED)],
)  # fmt: skip
def test_a_status_that_comes_before_its_send_is_recorded_is_applied_when_it_is(
    sms_app: SmsApp, status: str, error_code: str | None, settled: OutboxStatus
) -> None:
    # Twilio took the text but its answer was lost: the send is recorded only when a reconcile finds it, and
    # Twilio's callback comes before that. Acknowledged, it is never sent again: it is kept until then.
    sms_app.fake.fail_next(Fault.slow(seconds=2, record=True))
    queue_text("Your results are in.")
    sms_app.settle()
    (message,) = sms_app.fake.messages
    answers = [sms_app.status(message.sid, status, error_code=error_code).status_code for _ in range(2)]
    answers.append(sms_app.status(message.sid, "sent").status_code)  # changes nothing: not kept
    (waiting,) = outbox_rows()
    kept = kept_statuses()
    make_due()
    sms_app.settle()
    (row,) = outbox_rows()
    with session_scope() as session:
        opted_out = session.scalars(select(ChannelIdentity.opted_out_at)).one() is not None
    assert (answers, waiting.status, waiting.provider_message_id) == ([204] * 3, OutboxStatus.UNKNOWN, None)
    assert kept == [(message.sid, status, error_code)]  # a repeat of the callback is kept once
    # The first attempt's "timeout" went when the reconcile found the text sent; a failure brings its own code.
    assert (row.status, row.error_code, row.provider_message_id) == (settled, error_code, message.sid)
    assert (kept_statuses(), len(sms_app.fake.messages), opted_out) == ([], 1, error_code == "21610")


def test_a_status_that_comes_while_its_send_is_in_flight_is_applied_as_it_is_recorded(
    make_app, fake_twilio: FakeTwilio  # type: ignore[no-untyped-def]
) -> None:
    app = SmsApp(harness=make_app(**twilio_env(fake_twilio, CLINICBOT_OUTBOX_SEND_TIMEOUT="10")), fake=fake_twilio)
    fake_twilio.fail_next(Fault.held())
    queue_text("Your results are in.")
    sending = threading.Thread(target=app.harness.workers.sender.run_once, daemon=True)
    sending.start()
    wait_for(lambda: len(fake_twilio.messages) == 1)
    (message,) = fake_twilio.messages
    callback = app.status(message.sid, "delivered")
    (in_flight,) = outbox_rows()
    fake_twilio.release()
    sending.join(15)
    (row,) = outbox_rows()
    assert (callback.status_code, in_flight.status, sending.is_alive()) == (204, OutboxStatus.SENDING, False)
    assert (row.status, row.provider_message_id, kept_statuses()) == (OutboxStatus.DELIVERED, message.sid, [])


THREE_PART_TEXT = " ".join(
    f"Step {n}: bring your insurance card, a photo ID and the list of medicines you take every day."
    for n in range(1, 12)
)


def parts_status() -> list[tuple[str, str | None]]:
    with session_scope() as session:
        rows = session.execute(select(OutboxPart.status, OutboxPart.error_code).order_by(OutboxPart.part))
        return [tuple(part) for part in rows]  # type: ignore[misc]


@pytest.mark.parametrize(("status", "error_code"), [("delivered", None), ("undelivered", "30003")])
def test_a_parts_status_that_comes_before_the_part_is_recorded_counts_for_the_text(
    sms_app: SmsApp, status: str, error_code: str | None
) -> None:
    # The first part was answered; the second reached Twilio but its answer was lost, so the text waits to be
    # reconciled, knowing only the first part's id. Both parts' callbacks come meanwhile.
    sms_app.fake.fail_next(Fault.ok())
    sms_app.fake.fail_next(Fault.slow(seconds=2, record=True))
    queue_text(THREE_PART_TEXT)
    sms_app.settle()
    first, second = (m.sid for m in sms_app.fake.messages)
    answers = [sms_app.status(first, "delivered").status_code,
               sms_app.status(second, status, error_code=error_code).status_code]  # fmt: skip
    waiting = (outbox_rows()[0].status, parts_status(), kept_statuses())
    make_due()
    sms_app.settle()
    third = sms_app.fake.messages[2].sid
    resumed = (outbox_rows()[0].status, parts_status(), kept_statuses())
    sms_app.status(third, "delivered")
    (row,) = outbox_rows()
    assert answers == [204, 204]
    assert waiting == (OutboxStatus.UNKNOWN, [("delivered", None)], [(second, status, error_code)])
    if status == "delivered":
        assert resumed == (OutboxStatus.SENT, [("delivered", None), ("delivered", None), ("sent", None)], [])
        # The second part's "timeout" went when the text was sent in full: every part was delivered.
        assert (row.status, row.error_code) == (OutboxStatus.DELIVERED, None)
    else:
        # A part that failed fails the text as soon as its status counts.
        assert resumed == (OutboxStatus.UNDELIVERED, [("delivered", None), ("undelivered", "30003"), ("sent", None)], [])
        assert (row.status, row.error_code) == (OutboxStatus.UNDELIVERED, "30003")
    assert len(sms_app.fake.messages) == 3


def test_a_status_for_a_message_never_recorded_makes_no_text_and_is_let_go_after_a_week(sms_app: SmsApp) -> None:
    stranger, old, recent = new_sid(), new_sid(), new_sid()
    answers = [
        sms_app.status(stranger, "delivered").status_code,
        sms_app.status(stranger, "delivered").status_code,  # Twilio's retry: kept once
        sms_app.status(stranger, "read").status_code,
        sms_app.status(stranger, "sent").status_code,  # would change nothing: not kept
        sms_app.status(stranger, "scheduled").status_code,
        sms_app.status(old, "failed", error_code="30008").status_code,
        sms_app.status(recent, "canceled").status_code,
    ]
    kept = kept_statuses()
    with session_scope() as session:
        for sid, days in ((old, 8), (recent, 6)):
            session.execute(update(EarlyStatus).where(EarlyStatus.provider_message_id == sid)
                            .values(received_at=utcnow() - timedelta(days=days)))  # fmt: skip
    # The workers' sweep loop, as the app runs it beside the sender.
    stop = threading.Event()
    sweeping = threading.Thread(target=run_sla_sweeps, args=(stop,), kwargs={"interval": 0.05}, daemon=True)
    sweeping.start()
    try:
        wait_for(lambda: old not in {sid for sid, _, _ in kept_statuses()})
    finally:
        stop.set()
        sweeping.join(10)
    assert answers == [204] * 7
    assert kept == [(stranger, "delivered", None), (stranger, "read", None), (old, "failed", "30008"),
                    (recent, "failed", None)]  # fmt: skip
    assert kept_statuses() == [(stranger, "delivered", None), (stranger, "read", None), (recent, "failed", None)]
    assert (outbox_rows(), sms_app.fake.messages) == ([], [])


def test_an_unknown_text_to_a_patient_who_then_opted_out_is_only_looked_up(make_app, fake_twilio: FakeTwilio) -> None:  # type: ignore[no-untyped-def]
    # The connection drops before Twilio takes the text (unknown outcome), then the patient texts STOP. The
    # next claim asks Twilio and sends nothing: while Twilio cannot be asked the text stays unknown; once it
    # answers without a trace of it, the text is cancelled as any unsent text to an opted-out number.
    app = SmsApp(harness=make_app(**twilio_env(fake_twilio)), fake=fake_twilio)
    sender = app.harness.workers.sender
    queue_text("Your results are in.")
    fake_twilio.fail_next(Fault.disconnect(record=False))
    sender.run_once()
    assert outbox_rows()[0].status == OutboxStatus.UNKNOWN
    app.text_in("STOP")
    app.harness.workers.processor.drain()
    sender.drain()  # the STOP confirmation goes; the unknown text is not due yet
    make_due()
    fake_twilio.fail_next(Fault.server_error(), on="list")
    before = len(fake_twilio.requests)
    assert sender.run_once() == 1
    row = next(r for r in outbox_rows() if r.key == "test:1")
    assert (row.status, row.attempts) == (OutboxStatus.UNKNOWN, 3)  # each unknown outcome counts
    make_due()
    assert sender.run_once() == 1
    row = next(r for r in outbox_rows() if r.key == "test:1")
    assert (row.status, row.error_code, row.provider_message_id) == (OutboxStatus.CANCELLED, "opted_out", None)
    # Only look-ups went to Twilio for it: no message was created after the STOP's own reply.
    assert [method for method, _ in fake_twilio.requests[before:]] == ["GET", "GET"]
    assert [m.body for m in fake_twilio.messages] == []  # (Twilio itself confirms a STOP)


@pytest.mark.parametrize("twilio_has", ["two of three parts", "nothing"])
def test_an_unknown_text_whose_patient_opts_out_after_the_claim_is_only_looked_up(make_app, fake_twilio: FakeTwilio, twilio_has: str) -> None:  # type: ignore[no-untyped-def]
    # A text's last attempt had an unknown outcome; the sender claims it to reconcile, and the patient's STOP
    # is stored before it is sent. Reconciling would send what Twilio lacks (the missing part, or all of it):
    # the sender only asks, as the claim would have, and sends nothing more to the opted-out number.
    app = SmsApp(harness=make_app(**twilio_env(fake_twilio)), fake=fake_twilio)
    sender = app.harness.workers.sender
    if twilio_has == "nothing":
        queue_text("Your results are in.")
        fake_twilio.fail_next(Fault.disconnect(record=False))
    else:
        queue_text(THREE_PART_TEXT)
        fake_twilio.fail_next(Fault.ok())
        fake_twilio.fail_next(Fault.slow(seconds=2, record=True))
    sender.run_once()
    assert outbox_rows()[0].status == OutboxStatus.UNKNOWN
    make_due()
    (claimed,) = sender.claim()
    assert claimed.reconcile and not claimed.look_up_only
    with session_scope() as session:  # the STOP, routed by another worker meanwhile
        session.execute(update(ChannelIdentity).where(ChannelIdentity.address == JIM).values(opted_out_at=utcnow()))
    before, sent_before = len(fake_twilio.requests), [m.sid for m in fake_twilio.messages]
    sender.deliver_all([claimed])
    (row,) = outbox_rows()
    assert [method for method, _ in fake_twilio.requests[before:]] == ["GET"]
    assert [m.sid for m in fake_twilio.messages] == sent_before
    if twilio_has == "nothing":
        assert (row.status, row.error_code, row.provider_message_id) == (OutboxStatus.CANCELLED, "opted_out", None)
    else:
        # What reached the patient is recorded as sent, both parts; the third never goes.
        assert (row.status, row.provider_message_id) == (OutboxStatus.SENT, sent_before[0])
        assert len(parts_status()) == 2
