"""The scheduler's outbox delivery: one sender per deployment, shared with the app's."""

from __future__ import annotations

import threading
import time

from sqlalchemy import select

from bot.channels.models import OutboxMessage
from bot.channels.outbox import SENDER_LEADERSHIP, OutboxSender
from bot.db import get_engine, session_scope
from bot.db.leader import Leadership
from scheduler.jobs import DeliveryCounts, deliver_due
from tests.channels.test_outbox import ScriptedChannel, queue


def statuses() -> list[str]:
    with session_scope() as session:
        return list(session.scalars(select(OutboxMessage.status).order_by(OutboxMessage.id)))


def test_the_scheduler_leaves_the_texts_to_the_process_that_leads_the_sending(database_url: str) -> None:
    for n in range(3):
        queue(f"promise:{n}", address=f"+1617555{5000 + n:04d}")
    channel = ScriptedChannel()
    with Leadership(engine=get_engine(), name=SENDER_LEADERSHIP) as app:
        assert app.try_acquire()
        left = deliver_due(OutboxSender(channels={"sms": channel}, pacing=False), wait=0.3)
        assert (left, channel.sent, statuses()) == (DeliveryCounts(led=False), [], ["pending"] * 3)
    # No app sends: the scheduler is the sender.
    sent = deliver_due(OutboxSender(channels={"sms": channel}, pacing=False))
    assert (sent, sorted(text.key for text in channel.sent)) == (
        DeliveryCounts(sent=3), ["promise:0", "promise:1", "promise:2"])  # fmt: skip


def test_the_scheduler_beside_a_running_app_sender_sends_nothing_twice(database_url: str) -> None:
    app_channel, scheduler_channel = ScriptedChannel(), ScriptedChannel()
    app_sender = OutboxSender(channels={"sms": app_channel}, pacing=False)
    stop = threading.Event()
    running = threading.Thread(target=app_sender.run_forever, args=(stop,), kwargs={"poll_seconds": 0.05})
    running.start()
    try:
        deadline = time.monotonic() + 10
        while app_sender.leading is not True and time.monotonic() < deadline:
            time.sleep(0.02)
        for n in range(5):
            queue(f"promise:{n}", address=f"+1617555{5100 + n:04d}")
        counts = deliver_due(OutboxSender(channels={"sms": scheduler_channel}, pacing=False))
        while statuses() != ["sent"] * 5 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        app_sender.wake.set()
        running.join(timeout=10)
    assert (counts.led, scheduler_channel.sent, statuses()) == (False, [], ["sent"] * 5)
    assert sorted(text.key for text in app_channel.sent) == [f"promise:{n}" for n in range(5)]
