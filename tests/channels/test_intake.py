"""Group commit on the acknowledgement path: stored together, answered only after the commit, failures kept apart."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import func, select

from bot.channels.inbound import InboundText, do_accept_inbound
from bot.channels.intake import Intake
from bot.conversations.models import Message
from bot.db import get_engine, session_scope


def store(text: str, provider_id: str, address: str = "+16175550123") -> int | None:
    with session_scope(urgent=True) as session:
        accepted = do_accept_inbound(
            session=session,
            inbound=InboundText(channel="sms", address=address, text=text, provider_message_id=provider_id),
        )
        return accepted.message_id


def committed(provider_id: str) -> bool:
    """Whether another connection sees the message: it was committed, not just written."""
    with get_engine().connect() as connection:
        found = connection.execute(select(Message.id).where(Message.provider_message_id == provider_id)).first()
        return found is not None


@pytest.fixture
def intake(demo_db: str):  # type: ignore[no-untyped-def]
    running = Intake()
    running.start()
    yield running
    running.stop()


def hold_writer(intake: Intake) -> tuple[threading.Event, threading.Event]:
    """Occupy the writer with a job that waits, so the next jobs queue up behind it as one group."""
    started, release = threading.Event(), threading.Event()

    def wait() -> None:
        started.set()
        release.wait(10)

    threading.Thread(target=intake.run_blocking, args=(wait,), daemon=True).start()
    assert started.wait(10)
    return started, release


def test_waiting_stores_share_one_transaction_and_answer_after_the_commit(intake: Intake) -> None:
    _, release = hold_writer(intake)
    seen_committed: list[bool] = []

    async def webhooks() -> list[int | None]:
        async def one(index: int) -> int | None:
            message_id = await intake.run(store, f"hello {index}", f"SM-group-{index}", f"+1617555{2100 + index:04d}")
            seen_committed.append(committed(f"SM-group-{index}"))
            return message_id

        tasks = [asyncio.ensure_future(one(index)) for index in range(12)]
        await asyncio.sleep(0.2)  # every job is queued behind the held writer
        release.set()
        return await asyncio.gather(*tasks)

    groups_before, jobs_before = intake.groups, intake.jobs
    ids = asyncio.run(webhooks())
    assert all(ids) and len(set(ids)) == 12
    assert seen_committed == [True] * 12  # no request was answered before its message was durable
    # The held job was one transaction; all twelve webhooks shared the next.
    assert (intake.groups - groups_before, intake.jobs - jobs_before) == (2, 13)


def test_a_failing_store_fails_alone(intake: Intake) -> None:
    _, release = hold_writer(intake)

    def broken() -> None:
        raise RuntimeError("bad row")

    async def webhooks() -> list[object]:
        tasks = [
            asyncio.ensure_future(intake.run(store, "first", "SM-ok-1")),
            asyncio.ensure_future(intake.run(broken)),
            asyncio.ensure_future(intake.run(store, "second", "SM-ok-2", "+16175550124")),
        ]
        await asyncio.sleep(0.2)
        release.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    first, failed, second = asyncio.run(webhooks())
    assert isinstance(failed, RuntimeError)
    assert isinstance(first, int) and isinstance(second, int)
    assert committed("SM-ok-1") and committed("SM-ok-2")


def test_a_duplicate_in_the_same_group_is_stored_once(intake: Intake) -> None:
    _, release = hold_writer(intake)

    async def webhooks() -> list[int | None]:
        tasks = [asyncio.ensure_future(intake.run(store, "hi", "SM-same")) for _ in range(5)]
        await asyncio.sleep(0.2)
        release.set()
        return await asyncio.gather(*tasks)

    ids = asyncio.run(webhooks())
    assert sum(1 for message_id in ids if message_id is not None) == 1
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Message).where(Message.provider_message_id == "SM-same")) == 1


def test_stopping_stores_what_was_already_queued(demo_db: str) -> None:
    intake = Intake()
    intake.start()
    _, release = hold_writer(intake)
    results: list[int | None] = []
    waiter = threading.Thread(target=lambda: results.append(intake.run_blocking(store, "late", "SM-late")))
    waiter.start()
    stopper = threading.Thread(target=intake.stop)
    stopper.start()
    release.set()
    stopper.join(10)
    waiter.join(10)
    assert results and results[0] is not None and committed("SM-late")
