"""The newest migrations run down and up again on both backends, with rows in the tables they change."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import inspect, select

from bot.conversations.models import Handoff
from bot.conversations.service import open_conversation
from bot.db import get_engine, session_scope, utcnow
from bot.db.migrate import alembic_config, current_revision, head_revision, upgrade_to_head
from bot.patients.models import Channel
from bot.patients.service import get_or_create_identity
from bot.promises.models import Promise, PromiseKind, PromiseStatus
from bot.staff.models import StaffUser


def downgrade(revision: str) -> None:
    """Migrate the process database down to a revision."""
    from alembic import command

    engine = get_engine()
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


@pytest.fixture
def migrated(database_url: str) -> Iterator[str]:
    """The process database, left at head whatever the test did (PostgreSQL's schema is shared by the run)."""
    yield database_url
    engine = get_engine()
    if current_revision(engine) != head_revision(engine):
        upgrade_to_head(engine)


def tables() -> set[str]:
    return set(inspect(get_engine()).get_table_names())


def test_0015_outbox_part_goes_down_and_up(migrated: str) -> None:
    downgrade("0014")
    assert "outbox_part" not in tables()
    upgrade_to_head(get_engine())
    assert "outbox_part" in tables()
    assert current_revision(get_engine()) == head_revision(get_engine())


def test_every_migration_goes_down_to_an_empty_database_and_up_again(migrated: str) -> None:
    downgrade("base")
    assert tables() <= {"alembic_version"}
    upgrade_to_head(get_engine())
    assert current_revision(get_engine()) == head_revision(get_engine())


def test_0016_resolves_a_conversations_extra_open_handoffs_down_to_the_oldest(migrated: str) -> None:
    # Before 0016 a race could open a conversation's hand-off twice; the index cannot be built over them.
    downgrade("0015")
    now = utcnow()
    with session_scope() as session:
        nurse = StaffUser(email="nurse@example.org", name="Nora", role="nurse", password_hash="x")
        session.add(nurse)
        conversations = []
        for address in ("+16175550101", "+16175550102", "+16175550103"):
            identity = get_or_create_identity(session=session, channel=Channel.SMS, address=address)
            conversations.append(open_conversation(session=session, identity=identity).id)
        twice, once, same_time = conversations

        def handoff(conversation_id: int, minutes_ago: int, **values: object) -> int:
            row = Handoff(conversation_id=conversation_id, reason="human", priority=10, team="front_desk",
                          due_at=now, created_at=now - timedelta(minutes=minutes_ago), **values)  # fmt: skip
            session.add(row)
            session.flush()
            return row.id

        def promise(handoff_id: int, status: str = PromiseStatus.OPEN) -> int:
            row = Promise(conversation_id=twice, kind=PromiseKind.HANDOFF_REPLY, subject_type="handoff",
                          subject_id=handoff_id, reason_key="handoff_human", due_at=now, status=status)  # fmt: skip
            session.add(row)
            session.flush()
            return row.id

        session.flush()
        closed_before = handoff(twice, 90, resolved_at=now - timedelta(minutes=80))
        # Inserted before the oldest: the oldest by time is kept, whatever its id.
        claimed = handoff(twice, 20, claimed_at=now - timedelta(minutes=15), claimed_by_id=nurse.id,
                          first_response_at=now - timedelta(minutes=10))  # fmt: skip
        oldest = handoff(twice, 30)
        newest = handoff(twice, 5, claimed_at=now - timedelta(minutes=4), first_response_at=now - timedelta(minutes=3))
        alone = handoff(once, 30)
        tie_first, tie_second = handoff(same_time, 30), handoff(same_time, 30)
        oldest_promise, claimed_promise, newest_promise = promise(oldest), promise(claimed), promise(newest)
    upgrade_to_head(get_engine())

    with session_scope() as session:
        rows = {row.id: row for row in session.scalars(select(Handoff))}
        promises = dict(session.execute(select(Promise.id, Promise.status)).tuples().all())
    assert sorted(i for i, row in rows.items() if row.resolved_at is None) == sorted([oldest, alone, tie_first])
    assert [rows[i].resolved_at is not None for i in (claimed, newest, tie_second)] == [True, True, True]
    assert rows[closed_before].resolved_at == now - timedelta(minutes=80)
    # What staff did on the duplicates stays on the kept one: the earliest claim and first reply.
    kept = rows[oldest]
    assert (kept.claimed_at, kept.claimed_by_id, kept.first_response_at) == (
        now - timedelta(minutes=15), nurse.id, now - timedelta(minutes=10))  # fmt: skip
    # The duplicates' reply promises are cancelled, as closing a hand-off cancels them; the kept one's stays.
    assert [promises[i] for i in (oldest_promise, claimed_promise, newest_promise)] == ["open", "cancelled", "cancelled"]

    downgrade("0015")
    assert "ix_handoff_one_open_per_conversation" not in {ix["name"] for ix in inspect(get_engine()).get_indexes("handoff")}
    upgrade_to_head(get_engine())
    assert "ix_handoff_one_open_per_conversation" in {ix["name"] for ix in inspect(get_engine()).get_indexes("handoff")}
