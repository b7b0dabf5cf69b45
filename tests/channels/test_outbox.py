"""The outbox: unique keys, retries with backoff, reconciliation, opt-out, status order, concurrent senders."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from bot.channels import outbox
from bot.channels.base import Delivery, OutgoingText, SendResult
from bot.channels.models import EarlyStatus, OutboxMessage, OutboxPart, OutboxStatus
from bot.channels.outbox import OutboxSender
from bot.db import session_scope, utcnow
from bot.patients.models import ChannelIdentity
from bot.patients.service import get_or_create_identity


class ScriptedChannel:
    """A channel whose provider answers from a script; records every attempt and reconcile call."""

    name = "sms"
    min_interval_per_address = 0.0
    max_per_second = None
    # Its provider reports delivery by status callbacks, as Twilio does (outbox.record_status).
    status_callbacks = True

    def __init__(self, *results: SendResult, reconcile_results: tuple[SendResult | None, ...] = ()) -> None:
        self.results = deque(results)
        self.reconcile_results = deque(reconcile_results)
        self.sent: list[OutgoingText] = []
        self.reconciled: list[OutgoingText] = []
        self.lock = threading.Lock()

    def send(self, text: OutgoingText) -> SendResult:
        with self.lock:
            self.sent.append(text)
            return self.results.popleft() if self.results else SendResult(Delivery.SENT, f"SM{text.outbox_id}")

    def reconcile(self, text: OutgoingText) -> SendResult | None:
        self.reconciled.append(text)
        return self.reconcile_results.popleft() if self.reconcile_results else None


def queue(key: str = "k1", *, address: str = "+16175550123", **kwargs) -> int:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        identity = get_or_create_identity(session=session, channel="sms", address=address)
        row_id = outbox.enqueue(session=session, key=key, identity=identity, body="hello", **kwargs)
        assert row_id is not None
        return row_id


def row(outbox_id: int) -> OutboxMessage:
    with session_scope() as session:
        return session.get(OutboxMessage, outbox_id)


def make_due(outbox_id: int) -> None:
    with session_scope() as session:
        session.get(OutboxMessage, outbox_id).next_attempt_at = utcnow() - timedelta(seconds=1)


def test_a_key_is_queued_once(database_url: str) -> None:
    first = queue("reply:1:0")
    with session_scope() as session:
        identity = session.scalars(select(ChannelIdentity)).one()
        again = outbox.enqueue(session=session, key="reply:1:0", identity=identity, body="hello")
    assert (first is not None, again) == (True, None)


def test_sent_once_and_recorded(database_url: str) -> None:
    outbox_id = queue()
    channel = ScriptedChannel()
    sender = OutboxSender(channels={"sms": channel}, pacing=False)
    assert sender.drain() == 1
    assert sender.drain() == 0
    sent = row(outbox_id)
    assert (sent.status, sent.provider_message_id, sent.attempts, len(channel.sent)) == ("sent", f"SM{outbox_id}", 1, 1)


def test_transient_failure_backs_off_honouring_retry_after(database_url: str) -> None:
    outbox_id = queue()
    channel = ScriptedChannel(SendResult(Delivery.RETRY, error_code="429", retry_after=120))
    sender = OutboxSender(channels={"sms": channel}, pacing=False)
    before = utcnow()
    sender.drain()
    waiting = row(outbox_id)
    assert (waiting.status, waiting.error_code) == ("pending", "429")
    assert waiting.next_attempt_at >= before + timedelta(seconds=120)
    assert sender.drain() == 0  # not due yet
    make_due(outbox_id)
    sender.drain()
    # Sent at last: the earlier attempt's code no longer describes it, so staff see none.
    sent = row(outbox_id)
    assert (sent.status, sent.attempts, sent.error_code, len(channel.sent)) == ("sent", 2, None, 2)


def test_unknown_outcome_is_reconciled_not_resent(database_url: str) -> None:
    outbox_id = queue()
    channel = ScriptedChannel(
        SendResult(Delivery.UNKNOWN), reconcile_results=(SendResult(Delivery.SENT, "SM-found"),)
    )
    sender = OutboxSender(channels={"sms": channel}, pacing=False)
    sender.drain()
    assert row(outbox_id).status == "unknown"
    make_due(outbox_id)
    sender.drain()
    done = row(outbox_id)
    assert (done.status, done.provider_message_id, len(channel.sent), len(channel.reconciled)) == (
        "sent", "SM-found", 1, 1)  # fmt: skip


def test_unknown_that_never_reached_the_provider_is_sent_again(database_url: str) -> None:
    outbox_id = queue()
    channel = ScriptedChannel(SendResult(Delivery.UNKNOWN), reconcile_results=(SendResult(Delivery.RETRY),))
    sender = OutboxSender(channels={"sms": channel}, pacing=False)
    sender.drain()
    make_due(outbox_id)
    sender.drain()
    assert (row(outbox_id).status, len(channel.sent)) == ("sent", 2)


def test_retries_end_in_a_failure_staff_can_see(database_url: str) -> None:
    outbox_id = queue()
    channel = ScriptedChannel(*[SendResult(Delivery.RETRY, error_code="500")] * 3)
    sender = OutboxSender(channels={"sms": channel}, max_attempts=3, pacing=False)
    for _ in range(3):
        make_due(outbox_id)
        sender.drain()
    failed = row(outbox_id)
    assert (failed.status, failed.error_code, failed.attempts) == ("failed", "500", 3)


def test_permanent_opt_out_cancels_the_rest(database_url: str) -> None:
    first = queue("a")
    second = queue("b")
    emergency = queue("c", bypass_opt_out=True)
    channel = ScriptedChannel(SendResult(Delivery.FAILED, error_code="21610", recipient_state="opted_out"))
    sender = OutboxSender(channels={"sms": channel}, pacing=False)
    sender.run_once(limit=1)
    assert [row(i).status for i in (first, second, emergency)] == ["failed", "cancelled", "pending"]
    with session_scope() as session:
        assert session.scalars(select(ChannelIdentity)).one().opted_out_at is not None


def test_opted_out_identity_gets_only_emergency_texts(database_url: str) -> None:
    normal = queue("normal")
    emergency = queue("emergency", bypass_opt_out=True, priority=100)
    with session_scope() as session:
        session.execute(update(ChannelIdentity).values(opted_out_at=utcnow()))
    channel = ScriptedChannel()
    OutboxSender(channels={"sms": channel}, pacing=False).drain()
    assert (row(normal).status, row(emergency).status) == ("cancelled", "sent")
    assert [t.key for t in channel.sent] == ["emergency"]


def test_emergency_jumps_the_queue(database_url: str) -> None:
    queue("routine-1")
    queue("routine-2")
    queue("urgent", priority=100)
    channel = ScriptedChannel()
    OutboxSender(channels={"sms": channel}, pacing=False).drain()
    assert [t.key for t in channel.sent] == ["urgent", "routine-1", "routine-2"]


def test_status_callbacks_only_move_forward(database_url: str) -> None:
    outbox_id = queue()
    OutboxSender(channels={"sms": ScriptedChannel()}, pacing=False).drain()
    sid = f"SM{outbox_id}"
    with session_scope() as session:
        assert outbox.record_status(session=session, provider_message_id=sid, status="delivered", error_code=None)
    with session_scope() as session:
        late = outbox.record_status(session=session, provider_message_id=sid, status="sent", error_code="30003")
    final = row(outbox_id)
    # The late callback's code came with a status that was not applied: it is not the text's.
    assert (late, final.status, final.error_code) == (False, "delivered", None)


def status_callback(sid: str, status: str, error_code: str | None = None) -> bool | None:
    """Apply one status callback in its own transaction, as the webhook does."""
    with session_scope() as session:
        return outbox.record_status(
            session=session, provider_message_id=sid, status=status, error_code=error_code
        )


def sent_in_parts(*sids: str, key: str = "split") -> int:
    """Queue a text and send it as several provider messages, with these ids in order."""
    outbox_id = queue(key)
    channel = ScriptedChannel(SendResult(Delivery.SENT, sids[0], part_ids=tuple(enumerate(sids))))
    OutboxSender(channels={"sms": channel}, pacing=False).drain()
    return outbox_id


def text_and_parts(outbox_id: int) -> tuple[tuple[str, str | None], list[tuple[str, str | None]]]:
    """Return a text's (status, error code) and each of its parts', in order."""
    with session_scope() as session:
        text = session.get(OutboxMessage, outbox_id)
        parts = session.execute(select(OutboxPart.status, OutboxPart.error_code)
                                .where(OutboxPart.outbox_id == outbox_id).order_by(OutboxPart.part)).all()  # fmt: skip
        return (text.status, text.error_code), [tuple(part) for part in parts]  # type: ignore[misc]


def test_a_split_text_is_delivered_when_every_part_is_whatever_the_order(database_url: str) -> None:
    outbox_id = sent_in_parts("SMa", "SMb", "SMc")
    steps = []
    for sid, status in [("SMc", "delivered"), ("SMa", "sent"), ("SMa", "delivered"), ("SMb", "sent"),
                        ("SMc", "sent"), ("SMb", "delivered"), ("SMb", "sent")]:  # fmt: skip
        applied = status_callback(sid, status)
        steps.append((sid, status, applied, text_and_parts(outbox_id)[0][0]))
    assert steps == [
        ("SMc", "delivered", True, "sent"),  # a later part alone does not deliver the text ...
        ("SMa", "sent", False, "sent"),
        ("SMa", "delivered", True, "sent"),  # ... nor does the first part, the row's own id
        ("SMb", "sent", False, "sent"),
        ("SMc", "sent", False, "sent"),  # late: part 3 stays delivered
        ("SMb", "delivered", True, "delivered"),  # the last part in: the whole text is
        ("SMb", "sent", False, "delivered"),  # late: the text stays delivered
    ]
    assert text_and_parts(outbox_id)[1] == [("delivered", None)] * 3
    # Not ours at all: nothing to record, as before.
    assert status_callback("SM-elsewhere", "delivered") is None


def test_a_later_part_undelivered_after_the_first_delivered_makes_the_text_so(database_url: str) -> None:
    outbox_id = sent_in_parts("SMa", "SMb", "SMc")
    status_callback("SMa", "delivered")
    status_callback("SMb", "undelivered", "30003")
    after_part_two = text_and_parts(outbox_id)
    status_callback("SMc", "failed", "30007")
    status_callback("SMc", "delivered")
    status_callback("SMb", "delivered")  # late and contradictory: part 2 stays undelivered
    assert after_part_two == (
        ("undelivered", "30003"), [("delivered", None), ("undelivered", "30003"), ("sent", None)]
    )
    # The text keeps the first failure it was given, status and code together; each part keeps its own.
    assert text_and_parts(outbox_id) == (
        ("undelivered", "30003"), [("delivered", None), ("undelivered", "30003"), ("failed", "30007")]
    )


def test_a_split_text_cut_short_is_delivered_only_once_its_other_parts_are(database_url: str) -> None:
    # The first part reached the provider, the second's answer was lost: the row waits to be reconciled,
    # and the first part's "delivered" arrives meanwhile. It is recorded, but the text is not delivered yet.
    outbox_id = queue("split")
    channel = ScriptedChannel(
        SendResult(Delivery.UNKNOWN, part_ids=((0, "SMa"),)),
        reconcile_results=(SendResult(Delivery.SENT, "SMa", part_ids=((0, "SMa"), (1, "SMb"))),),
    )
    sender = OutboxSender(channels={"sms": channel}, pacing=False)
    sender.drain()
    early = status_callback("SMa", "delivered")
    waiting = text_and_parts(outbox_id)
    make_due(outbox_id)
    sender.drain()
    resumed = text_and_parts(outbox_id)
    status_callback("SMb", "delivered")
    assert (early, waiting) == (True, (("unknown", None), [("delivered", None)]))
    assert resumed == (("sent", None), [("delivered", None), ("sent", None)])
    assert text_and_parts(outbox_id) == (("delivered", None), [("delivered", None), ("delivered", None)])


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_callbacks_for_two_parts_at_once_are_applied_one_after_the_other(database_url: str) -> None:
    # Each callback reads the other parts to settle the text: unserialised, two "delivered" at once would each
    # see the other part still "sent", and the text would never count as delivered.
    outbox_id = sent_in_parts("SMa", "SMb")
    second_done = threading.Event()
    with session_scope() as first:
        assert outbox.record_status(
            session=first, provider_message_id="SMa", status="delivered", error_code=None
        )
        second = threading.Thread(
            target=lambda: (status_callback("SMb", "delivered"), second_done.set()), daemon=True
        )
        second.start()
        waited = not second_done.wait(0.5)
    finished = second_done.wait(10)
    second.join(10)
    assert (waited, finished) == (True, True)
    assert text_and_parts(outbox_id) == (("delivered", None), [("delivered", None), ("delivered", None)])


def kept_count() -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(EarlyStatus)) or 0


# On SQLite one transaction writes at a time: a callback and the sender's record never overlap there.
@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_status_kept_while_the_sender_records_its_send_is_applied_once_that_commits(database_url: str) -> None:
    # The callback found no text and keeps its status, not yet committed, as the sender records the send:
    # unserialised, the sender would read no kept status and the callback's would wait for good.
    outbox_id = queue()
    sender = OutboxSender(channels={"sms": ScriptedChannel()}, pacing=False)
    recorded = threading.Event()
    with session_scope() as callback:
        kept = outbox.record_status(session=callback, provider_message_id=f"SM{outbox_id}", status="delivered",
                                    error_code=None)  # fmt: skip
        sending = threading.Thread(target=lambda: (sender.drain(), recorded.set()), daemon=True)
        sending.start()
        waited = not recorded.wait(0.5)
    finished = recorded.wait(10)
    sending.join(10)
    sender.close()
    assert (kept, waited, finished) == (None, True, True)
    assert (row(outbox_id).status, kept_count()) == ("delivered", 0)


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_status_that_comes_while_the_sender_records_its_send_waits_and_is_applied(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sender has recorded the id, not yet committed, as the callback comes: the callback sees no text yet,
    # waits for the sender's commit, then finds the text and applies its status rather than keep it.
    outbox_id = queue()
    sender = OutboxSender(channels={"sms": ScriptedChannel()}, pacing=False)
    recording, commit = threading.Event(), threading.Event()
    apply_early = outbox._apply_early

    def held(session, provider_ids):  # type: ignore[no-untyped-def]
        apply_early(session, provider_ids)
        recording.set()
        commit.wait(10)

    monkeypatch.setattr(outbox, "_apply_early", held)
    sending = threading.Thread(target=sender.drain, daemon=True)
    sending.start()
    assert recording.wait(10)
    applied: list[bool | None] = []
    callback = threading.Thread(target=lambda: applied.append(status_callback(f"SM{outbox_id}", "delivered")),
                                daemon=True)  # fmt: skip
    callback.start()
    callback.join(0.5)
    waited = callback.is_alive()
    commit.set()
    sending.join(10)
    callback.join(10)
    sender.close()
    assert (waited, applied) == (True, [True])
    assert (row(outbox_id).status, kept_count()) == ("delivered", 0)


def test_a_sender_that_died_mid_send_leaves_an_unknown_to_reconcile(database_url: str) -> None:
    outbox_id = queue()
    with session_scope() as session:
        stuck = session.get(OutboxMessage, outbox_id)
        stuck.status, stuck.attempts = OutboxStatus.SENDING, 1
    with session_scope() as session:
        session.execute(
            update(OutboxMessage).values(updated_at=utcnow() - timedelta(minutes=5))
        )
    channel = ScriptedChannel(reconcile_results=(SendResult(Delivery.SENT, "SM-earlier"),))
    OutboxSender(channels={"sms": channel}, pacing=False).drain()
    assert (row(outbox_id).status, len(channel.sent), len(channel.reconciled)) == ("sent", 0, 1)


@contextmanager
def _cancelled_lookups() -> Iterator[list[str]]:
    """Collect the sender's look-ups for cancelled texts among those it records as sent."""
    from sqlalchemy import event

    from bot.db import get_engine

    seen: list[str] = []

    def spy(conn, cursor, statement: str, *args: object) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT") and "'cancelled'" in statement:
            seen.append(statement)

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", spy)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", spy)


def test_a_text_cancelled_in_flight_that_the_provider_accepted_is_sent(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Rows settled while their attempts were in flight, in one wave: a cancelled text the provider took
    # reached the patient and is sent; a delivered or failed one keeps what it was told.
    ids = {name: queue(name, address=f"+1617555{5000 + n:04d}")
           for n, name in enumerate(("plain", "cancelled", "delivered", "failed"))}  # fmt: skip
    settled = {
        "cancelled": {"status": OutboxStatus.CANCELLED, "error_code": "opted_out"},
        "delivered": {"status": OutboxStatus.DELIVERED, "provider_message_id": f"SM{ids['delivered']}"},
        "failed": {"status": OutboxStatus.FAILED, "error_code": "unknown_outcome"},
    }
    sender = OutboxSender(channels={"sms": ScriptedChannel()}, pacing=False)
    with _cancelled_lookups() as before:
        sender.drain()  # nothing cancelled: the wave is recorded with one statement, no look-up
    with session_scope() as session:
        session.execute(update(OutboxMessage).values(status=OutboxStatus.PENDING, provider_message_id=None,
                                                     sent_at=None))  # fmt: skip
    texts = sender.claim()
    with session_scope() as session:
        for name, values in settled.items():
            session.execute(update(OutboxMessage).where(OutboxMessage.id == ids[name]).values(**values))
    with _cancelled_lookups() as during:
        sender.deliver_all(texts)
    rows = {name: row(i) for name, i in ids.items()}
    recorded = {name: (text.status, text.provider_message_id, text.error_code) for name, text in rows.items()}
    delivered = status_callback(f"SM{ids['cancelled']}", "delivered")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (len(before), len(during), len(texts)) == (0, 1, 4)
    assert recorded == {
        "plain": ("sent", f"SM{ids['plain']}", None),
        "cancelled": ("sent", f"SM{ids['cancelled']}", None),
        "delivered": ("delivered", f"SM{ids['delivered']}", None),
        "failed": ("failed", f"SM{ids['failed']}", "unknown_outcome"),
    }
    assert (rows["cancelled"].sent_at is not None, delivered, row(ids["cancelled"]).status) == (
        True, True, "delivered"
    )
    cancelled = ids["cancelled"]
    assert warnings == [f"outbox {cancelled} was cancelled but the provider accepted it: recorded as sent"]


# SKIP LOCKED claims are what let several app processes send; SQLite has a single writer anyway.
@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_concurrent_senders_never_send_a_text_twice(database_url: str) -> None:
    ids = [queue(f"k{i}", address=f"+1617555{i:04d}") for i in range(60)]
    channel = ScriptedChannel()
    senders = [OutboxSender(channels={"sms": channel}, pacing=False) for _ in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda s: s.drain(), senders))
    keys = [t.key for t in channel.sent]
    assert (len(keys), len(set(keys))) == (60, 60)
    assert all(row(i).status == "sent" for i in ids)


def test_an_opt_out_mid_batch_stops_the_rest_of_the_batch(database_url: str) -> None:
    first = queue("a")
    second = queue("b")
    channel = ScriptedChannel(SendResult(Delivery.FAILED, error_code="21610", recipient_state="opted_out"))
    sender = OutboxSender(channels={"sms": channel}, pacing=False)
    # Both texts are claimed in one batch before the provider reports the opt-out.
    assert sender.run_once(limit=10) == 2
    assert [row(i).status for i in (first, second)] == ["failed", "cancelled"]
    assert [t.key for t in channel.sent] == ["a"]


class ParallelChannel(ScriptedChannel):
    """A scripted channel that lets the sender send to several addresses at once."""

    parallel_sends = 4


def test_parallel_sends_keep_each_patients_texts_in_order_and_send_each_once(database_url: str) -> None:
    ids = [queue(f"k{i}", address=f"+1617555{2000 + i % 5:04d}") for i in range(30)]
    channel = ParallelChannel()
    assert OutboxSender(channels={"sms": channel}, pacing=False).drain() == 30
    keys = [t.key for t in channel.sent]
    addresses = {t.address for t in channel.sent}
    per_address = {a: [t.key for t in channel.sent if t.address == a] for a in addresses}
    expected = {f"+1617555{2000 + n:04d}": [f"k{i}" for i in range(n, 30, 5)] for n in range(5)}
    assert (len(keys), len(set(keys)), per_address) == (30, 30, expected)
    assert [row(i).status for i in ids] == ["sent"] * 30


def test_parallel_sends_stop_an_address_that_opted_out_mid_wave(database_url: str) -> None:
    first = queue("a1", address="+16175552001")
    second = queue("a2", address="+16175552001")
    other = queue("b1", address="+16175552002")

    class OptedOutNumber(ParallelChannel):
        def send(self, text: OutgoingText) -> SendResult:
            super().send(text)
            if text.address == "+16175552001":
                return SendResult(Delivery.FAILED, error_code="21610", recipient_state="opted_out")
            return SendResult(Delivery.SENT, f"SM{text.outbox_id}")

    channel = OptedOutNumber()
    OutboxSender(channels={"sms": channel}, pacing=False).run_once(limit=10)
    sent = sorted(t.key for t in channel.sent)
    assert (sent, [row(i).status for i in (first, second)], row(other).status) == (
        ["a1", "b1"], ["failed", "cancelled"], "sent")  # fmt: skip


def test_a_text_waits_while_an_earlier_one_to_the_same_patient_is_in_flight_elsewhere(database_url: str) -> None:
    in_flight = queue("x1", address="+16175552001")
    later = queue("x2", address="+16175552001")
    emergency = queue("x3", address="+16175552001", priority=100, bypass_opt_out=True)
    other = queue("y1", address="+16175552002")
    with session_scope() as session:
        # Another sender (an app replica) claimed the first text and is sending it now.
        session.get(OutboxMessage, in_flight).status = OutboxStatus.SENDING
    claimed = OutboxSender(channels={"sms": ScriptedChannel()}, pacing=False).claim()
    # The emergency instructions jump the queue; the routine text waits its turn.
    assert sorted(text.outbox_id for text in claimed) == sorted([emergency, other])
    assert row(later).status == "pending"


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_sender_never_overtakes_a_text_another_sender_is_claiming(database_url: str) -> None:
    first = queue("p1", address="+16175552011")
    second = queue("p2", address="+16175552011")
    other = queue("q1", address="+16175552012")
    from bot.db import get_engine

    # Another sender's claim holds the first text locked (SKIP LOCKED passes over it) but has not committed.
    with get_engine().connect() as other_sender:
        other_sender.execute(select(OutboxMessage.id).where(OutboxMessage.id == first).with_for_update())
        claimed = OutboxSender(channels={"sms": ScriptedChannel()}, pacing=False).claim()
        other_sender.rollback()
    assert [text.outbox_id for text in claimed] == [other]
    assert (row(first).status, row(second).status) == ("pending", "pending")


def _wait_for(condition, *, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


class _Running:
    """An outbox sender's run_forever on a thread, as in an app replica."""

    def __init__(self, channel: ScriptedChannel, **kwargs: float) -> None:
        self.channel, self.stop = channel, threading.Event()
        self.sender = OutboxSender(channels={"sms": channel}, pacing=False)
        self.thread = threading.Thread(
            target=self.sender.run_forever, args=(self.stop,), kwargs={"poll_seconds": 0.05} | kwargs, daemon=True
        )
        self.thread.start()

    def keys(self) -> list[str]:
        with self.channel.lock:
            return [text.key for text in self.channel.sent]

    def halt(self) -> None:
        self.stop.set()
        self.sender.wake.set()
        self.thread.join(timeout=10)


@contextmanager
def _senders(**kwargs: float) -> Iterator[Callable[[], _Running]]:
    """Start senders on demand (`start()`), as app replicas would; halt every one at the end."""
    started: list[_Running] = []

    def start() -> _Running:
        started.append(_Running(ScriptedChannel(), **kwargs))
        return started[-1]

    try:
        yield start
    finally:
        for running in started:
            running.halt()


def test_one_sender_per_deployment_the_other_stands_by_and_takes_over(database_url: str) -> None:
    # Pacing (a sending number's carrier rate, Telegram's per-chat limit) lives in the sending process:
    # with several app replicas exactly one sends, and another takes over when it stops.
    first_wave = [queue(f"a{i}", address=f"+1617555{3000 + i:04d}") for i in range(3)]
    with _senders() as start:
        leader = start()
        assert _wait_for(lambda: len(leader.keys()) == 3)
        standby = start()
        assert _wait_for(lambda: standby.sender.leading is False)
        second_wave = [queue(f"b{i}", address=f"+1617555{3100 + i:04d}") for i in range(3)]
        leader.sender.wake.set()
        assert _wait_for(lambda: len(leader.keys()) == 6)
        time.sleep(0.2)
        assert (standby.keys(), leader.sender.leading) == ([], True)
        leader.halt()
        assert leader.sender.leading is False
        third_wave = [queue(f"c{i}", address=f"+1617555{3200 + i:04d}") for i in range(3)]
        assert _wait_for(lambda: len(standby.keys()) == 3)
        assert sorted(standby.keys()) == ["c0", "c1", "c2"] and standby.sender.leading is True
        assert all(row(i).status == "sent" for i in first_wave + second_wave + third_wave)


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_sender_whose_database_session_ended_stops_sending(database_url: str) -> None:
    from sqlalchemy import text

    from bot.db import get_engine

    with _senders(check_seconds=0.05) as start:
        leader = start()
        assert _wait_for(lambda: leader.sender.leading is True)
        standby = start()
        assert _wait_for(lambda: standby.sender.leading is False)
        # A database restart or a dropped connection ends the leader's session, and its lock with it.
        with get_engine().connect() as admin:
            ended = admin.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND pid <> pg_backend_pid() "
                # This database's sessions only: another test run on the same server holds advisory locks too.
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )).all()  # fmt: skip
        assert len(ended) == 1
        # Exactly one leads afterwards, and it sends each new text once.
        assert _wait_for(lambda: {leader.sender.leading, standby.sender.leading} == {True, False})
        ids = [queue(f"d{i}", address=f"+1617555{3300 + i:04d}") for i in range(4)]
        leader.sender.wake.set()
        standby.sender.wake.set()
        assert _wait_for(lambda: all(row(i).status == "sent" for i in ids))
        sent = leader.keys() + standby.keys()
        assert sorted(sent) == ["d0", "d1", "d2", "d3"]


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_text_queued_by_another_replica_wakes_the_sender_at_once(database_url: str) -> None:
    # The sender runs in one replica; a text queued in another (its routing, a staff reply) cannot wake
    # it in-process. PostgreSQL's NOTIFY, sent when the queuing transaction commits, does.
    with _senders(poll_seconds=30.0) as start:
        leader = start()
        assert _wait_for(lambda: leader.sender.leading is True)
        time.sleep(0.3)  # the sender is idle now, waiting up to 30 s for a wake-up
        queued_at = time.monotonic()
        queue("n1", address="+16175553401")
        assert _wait_for(lambda: leader.keys() == ["n1"], timeout=5.0)
        assert time.monotonic() - queued_at < 5.0


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_every_insert_into_the_outbox_notifies_the_sender_on_commit(database_url: str) -> None:
    # The trigger, not each caller, sends the NOTIFY: a path that inserts on its own (the promise sweep's
    # bulk insert, a future one) cannot forget to wake the sender. Nothing is announced before the commit,
    # nor for a rolled-back insert, and a transaction queuing many texts announces them once.
    import psycopg

    from bot.db import get_engine
    from bot.promises.service import insert_texts

    url = get_engine().url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute(f"LISTEN {outbox.NOTIFY_CHANNEL}")

        def heard() -> int:
            return sum(1 for _ in listener.notifies(timeout=0.5, stop_after=10))

        with session_scope() as session:
            identity = get_or_create_identity(session=session, channel="sms", address="+16175553501")
            rows = [outbox.text_values(key=f"bulk{i}", identity=identity, body="hello") for i in range(3)]
            insert_texts(session=session, rows=rows)
            session.flush()
            before_commit = heard()
        after_commit = heard()
        with pytest.raises(RuntimeError), session_scope() as session:
            identity = get_or_create_identity(session=session, channel="sms", address="+16175553501")
            outbox.enqueue(session=session, key="rolled-back", identity=identity, body="hello")
            raise RuntimeError("the transaction fails")
        after_rollback = heard()
        queue("single", address="+16175553502")
        after_enqueue = heard()
    assert (before_commit, after_commit, after_rollback, after_enqueue) == (0, 1, 0, 1)


class _SlowChannel(ScriptedChannel):
    """A provider that takes `seconds` per send and has no trace of a text it was never sent."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def send(self, text: OutgoingText) -> SendResult:
        time.sleep(self.seconds)
        return super().send(text)

    def reconcile(self, text: OutgoingText) -> SendResult | None:
        with self.lock:
            self.reconciled.append(text)
        return SendResult(Delivery.RETRY)


def test_a_live_senders_long_batch_never_goes_stale_for_another_sender(database_url: str) -> None:
    # Five texts at 0.3 s each outlast the 0.5 s stale time: without the heartbeat another sender would
    # take the last ones for a dead sender's, find no trace of them at the provider and send them too.
    ids = [queue(f"slow{i}", address=f"+1617555{4000 + i:04d}") for i in range(5)]
    channel = _SlowChannel(0.3)
    stale = timedelta(seconds=0.5)
    slow, other = (OutboxSender(channels={"sms": channel}, pacing=False, stale_after=stale) for _ in range(2))
    worker = threading.Thread(target=slow.run_once)
    worker.start()
    time.sleep(0.05)  # the slow sender has claimed the batch
    while worker.is_alive():
        other.drain()
        time.sleep(0.05)
    worker.join()
    keys = [text.key for text in channel.sent]
    assert (sorted(keys), channel.reconciled) == ([f"slow{i}" for i in range(5)], [])
    assert [row(i).status for i in ids] == ["sent"] * 5


def test_a_channel_without_status_callbacks_records_its_sends_without_looking_for_kept_statuses(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only a provider that calls back (Twilio) can have statuses kept for its ids: another channel's waves
    # skip the lookup (and, on PostgreSQL, the advisory locks) on the sender's hot path.
    looked_up: list[list[str]] = []
    apply_early = outbox._apply_early
    monkeypatch.setattr(outbox, "_apply_early", lambda session, ids: (looked_up.append(sorted(ids)),
                                                                      apply_early(session, ids)))  # fmt: skip

    class NoCallbacks(ScriptedChannel):
        status_callbacks = False

    quiet_id, twilio_id = queue("quiet", address="+16175554100"), queue("twilio", address="+16175554101")
    OutboxSender(channels={"sms": NoCallbacks()}, pacing=False).drain()
    with session_scope() as session:
        session.get(OutboxMessage, twilio_id).status = OutboxStatus.PENDING
    OutboxSender(channels={"sms": ScriptedChannel()}, pacing=False).drain()
    assert looked_up == [[], [f"SM{twilio_id}"]]
    assert (row(quiet_id).status, row(twilio_id).status) == ("sent", "sent")
