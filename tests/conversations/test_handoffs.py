"""One open hand-off per conversation: the database refuses a second, and a writer that loses a race uses the first."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, insert, select
from sqlalchemy.exc import IntegrityError

from bot.conversations import flows
from bot.conversations.models import Handoff, HandoffReason, Priority
from bot.conversations.service import open_conversation
from bot.db import get_engine, session_scope, utcnow
from bot.patients.models import Channel
from bot.patients.service import get_or_create_identity
from bot.promises.models import Promise
from bot.staff.models import AuditEvent, StaffAlert


def new_conversation(address: str = "+16175550123") -> int:
    with session_scope() as session:
        identity = get_or_create_identity(session=session, channel=Channel.SMS, address=address)
        return open_conversation(session=session, identity=identity).id


def open_handoffs(conversation_id: int) -> list[tuple[int, str, int, str]]:
    """Return the conversation's open hand-offs as (id, reason, priority, team)."""
    with session_scope() as session:
        return [tuple(row) for row in session.execute(  # type: ignore[misc]
            select(Handoff.id, Handoff.reason, Handoff.priority, Handoff.team)
            .where(Handoff.conversation_id == conversation_id, Handoff.resolved_at.is_(None))
            .order_by(Handoff.id))]  # fmt: skip


def test_the_database_refuses_a_second_open_handoff_for_a_conversation(demo_db: str) -> None:
    conversation_id = new_conversation()
    with session_scope() as session:
        first = flows.do_handoff(session=session, conversation_id=conversation_id, reason=HandoffReason.HUMAN)
    with pytest.raises(IntegrityError), session_scope() as session:
        session.add(Handoff(conversation_id=conversation_id, reason="human", priority=Priority.NORMAL,
                            team="front_desk", due_at=utcnow()))  # fmt: skip
        session.flush()
    # Another conversation's hand-off, and a resolved one of this conversation, are no obstacle.
    other = new_conversation("+16175550124")
    with session_scope() as session:
        flows.do_handoff(session=session, conversation_id=other, reason=HandoffReason.HUMAN)
        session.get(Handoff, first.handoff_id).resolved_at = utcnow()  # type: ignore[union-attr]
    with session_scope() as session:
        again = flows.do_handoff(session=session, conversation_id=conversation_id, reason=HandoffReason.MEDICAL)
    assert again.handoff_id != first.handoff_id and not again.already_open
    assert open_handoffs(conversation_id) == [(again.handoff_id, "medical", Priority.MEDICAL, "nurse")]


@contextmanager
def a_rival_opens_one_first(conversation_id: int, *, reason: HandoffReason, priority: int) -> Iterator[list[int]]:
    """Commit another writer's open hand-off for the conversation just before this process inserts one.

    The race the index settles: a writer that did not lock the conversation looked, found none, and
    inserts after another transaction opened one. Yields the rival hand-off's id once it is made.
    """
    engine = get_engine()
    rival: list[int] = []

    def before_insert(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        if rival or not statement.lstrip().upper().startswith("INSERT INTO HANDOFF"):
            return
        rival.append(0)
        with engine.connect() as other:
            rival[0] = other.execute(insert(Handoff).values(
                conversation_id=conversation_id, reason=reason, priority=priority, team=flows.TEAM[reason],
                due_at=utcnow() + timedelta(hours=1), created_at=utcnow()).returning(Handoff.id)).scalar_one()  # fmt: skip
            other.commit()

    event.listen(engine, "before_cursor_execute", before_insert)
    try:
        yield rival
    finally:
        event.remove(engine, "before_cursor_execute", before_insert)


def test_a_handoff_opened_by_a_rival_since_the_look_is_used_not_doubled(demo_db: str) -> None:
    conversation_id = new_conversation()
    rival_first = a_rival_opens_one_first(conversation_id, reason=HandoffReason.MEDICAL, priority=Priority.MEDICAL)
    with rival_first as rival, session_scope() as session:
        result = flows.do_handoff(session=session, conversation_id=conversation_id, reason=HandoffReason.HUMAN)
    assert (result.handoff_id, result.team, result.already_open) == (rival[0], "nurse", True)
    assert open_handoffs(conversation_id) == [(rival[0], "medical", Priority.MEDICAL, "nurse")]
    with session_scope() as session:
        # The losing writer promised nothing for a hand-off it did not open.
        assert session.scalars(select(Promise.id).where(Promise.conversation_id == conversation_id)).all() == []


def test_a_rivals_lower_handoff_is_escalated_not_doubled(demo_db: str) -> None:
    conversation_id = new_conversation()
    rival_first = a_rival_opens_one_first(conversation_id, reason=HandoffReason.HUMAN, priority=Priority.NORMAL)
    with rival_first as rival, session_scope() as session:
        result = flows.do_handoff(session=session, conversation_id=conversation_id, reason=HandoffReason.MEDICAL)
    assert (result.handoff_id, result.team, result.already_open) == (rival[0], "nurse", False)
    assert open_handoffs(conversation_id) == [(rival[0], "medical", Priority.MEDICAL, "nurse")]
    with session_scope() as session:
        actions = session.scalars(select(AuditEvent.action).where(
            AuditEvent.subject_id == str(conversation_id), AuditEvent.action.like("handoff.%"))).all()
    assert actions == ["handoff.escalated"]


# PostgreSQL only: the emergency's savepoint opens this transaction before its look, and SQLite then refuses
# the write after another connection's commit (a stale snapshot). In the app SQLite transactions never interleave.
@pytest.mark.parametrize("database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_an_emergency_in_a_race_alerts_on_the_one_open_handoff(demo_db: str) -> None:
    conversation_id = new_conversation()
    rival_first = a_rival_opens_one_first(conversation_id, reason=HandoffReason.HUMAN, priority=Priority.NORMAL)
    with rival_first as rival, session_scope() as session:
        result = flows.do_emergency_or_log(session=session, conversation_id=conversation_id, kind="cardiac")
    assert result is not None and result.handoff_id == rival[0]
    assert open_handoffs(conversation_id) == [(rival[0], "emergency", Priority.EMERGENCY, "nurse")]
    with session_scope() as session:
        assert session.scalars(select(StaffAlert.handoff_id)).all() == [rival[0]]
