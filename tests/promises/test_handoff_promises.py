"""A hand-off that becomes a complaint keeps one promise: one late update a day, about the complaint."""

from __future__ import annotations

from datetime import date

import time_machine
from sqlalchemy import select

from bot.channels.models import OutboxMessage
from bot.conversations.flows import do_handoff
from bot.conversations.models import HandoffReason
from bot.conversations.service import open_conversation
from bot.db import session_scope
from bot.demo import DEMO_ADMIN_EMAIL
from bot.promises.models import Promise
from bot.promises.sweeps import SweepCounts
from bot.staff.complaints import do_open_case_for_conversation
from bot.staff.models import StaffUser
from scheduler.jobs import update_domain
from tests.promises.factories import local, make_identity, make_patient

TUE = date(2026, 11, 17)


def promises() -> list[tuple[str, str, str, object]]:
    with session_scope() as session:
        rows = session.execute(
            select(Promise.kind, Promise.reason_key, Promise.status, Promise.due_at).order_by(Promise.id)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def late_bodies() -> list[str]:
    with session_scope() as session:
        return list(session.scalars(select(OutboxMessage.body).where(OutboxMessage.key.like("promise:%"))))


def _conversation_handed_to_the_front_desk() -> int:
    with session_scope() as session:
        patient = make_patient(session)
        conversation = open_conversation(session=session, identity=make_identity(session, patient))
        with time_machine.travel(local(TUE, 10), tick=False):
            do_handoff(session=session, conversation_id=conversation.id, reason=HandoffReason.HUMAN)
        return conversation.id


def test_a_request_for_a_person_that_turns_into_a_complaint_gets_one_update_a_day(clinic_db, sweep) -> None:
    conversation_id = _conversation_handed_to_the_front_desk()
    with time_machine.travel(local(TUE, 10, 5), tick=False), session_scope() as session:
        do_handoff(session=session, conversation_id=conversation_id, reason=HandoffReason.COMPLAINT)
    # The hour promised for a reply at 10:00 still stands (the earlier of the two times).
    assert promises() == [("complaint_followup", "handoff_complaint", "open", local(TUE, 11))]
    assert sweep(local(TUE, 16)) == SweepCounts(updates=1)
    assert late_bodies() == [
        "Hi Rosa, this is Riverside Family Clinic. We're still looking into your complaint. "
        "We'll update you by 4 pm tomorrow."
    ]


def test_staff_opening_a_complaint_on_a_handed_off_chat_gets_one_update_a_day(clinic_db, sweep) -> None:
    conversation_id = _conversation_handed_to_the_front_desk()
    with time_machine.travel(local(TUE, 10, 5), tick=False), session_scope() as session:
        admin = session.scalars(select(StaffUser.id).where(StaffUser.email == DEMO_ADMIN_EMAIL)).one()
        do_open_case_for_conversation(session=session, domain=update_domain(), conversation_id=conversation_id,
                                      staff_id=admin)  # fmt: skip
    assert [kind for kind, _, _, _ in promises()] == ["complaint_followup"]
    assert sweep(local(TUE, 16)) == SweepCounts(updates=1)
