"""Promises closed by the lab and by staff: queued late updates withdrawn, follow-ups kept or cancelled."""

from __future__ import annotations

import secrets
from datetime import date

import time_machine
from sqlalchemy import select, update

from bot.channels.models import OutboxMessage, OutboxStatus
from bot.conversations.flows import do_handoff, do_record_request
from bot.conversations.models import HandoffReason, PatientRequest, RequestKind
from bot.conversations.service import open_conversation
from bot.db import session_scope
from bot.demo import DEMO_ADMIN_EMAIL
from bot.labs.flows import do_update_order
from bot.labs.models import LabOrder, LabStatus
from bot.promises.models import Promise
from bot.promises.sweeps import SweepCounts
from bot.staff.auth import Principal
from bot.staff.inbox import do_close, do_send
from bot.staff.models import Role, StaffUser
from scheduler.jobs import update_domain
from tests.promises.factories import local, make_identity, make_lab_promise, make_patient

TUE = date(2026, 11, 17)


def outbox() -> list[tuple[str, str, str | None]]:
    with session_scope() as session:
        rows = session.execute(
            select(OutboxMessage.key, OutboxMessage.status, OutboxMessage.error_code).order_by(OutboxMessage.id)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def lab_order_id(order_row_id: int) -> str:
    with session_scope() as session:
        return session.get(LabOrder, order_row_id).order_id


def test_results_in_after_the_late_update_was_queued_withdraw_it(clinic_db, sweep) -> None:
    with session_scope() as session:
        made = [make_lab_promise(session, due_at=local(TUE, 12)) for _ in range(2)]
    assert sweep(local(TUE, 16)) == SweepCounts(updates=2)
    first, second = made
    # The second patient's update is already on its way (claimed by the sender): it cannot be called back.
    with session_scope() as session:
        session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.key == f"promise:{second.promise_id}:2026-11-17:late_update")
            .values(status=OutboxStatus.SENDING)
        )
    for done in made:
        with time_machine.travel(local(TUE, 16, 1), tick=False), session_scope() as session:
            do_update_order(session=session, order_id=lab_order_id(done.order_id), status=LabStatus.RESULTED,
                            source="rest")  # fmt: skip
    assert sweep(local(TUE, 16, 2)) == SweepCounts(results_ready=2)
    assert outbox() == [
        (f"promise:{first.promise_id}:2026-11-17:late_update", "cancelled", "promise_kept"),
        (f"promise:{second.promise_id}:2026-11-17:late_update", "sending", None),
        (f"promise:{first.promise_id}:2026-11-17:results_ready", "pending", None),
        (f"promise:{second.promise_id}:2026-11-17:results_ready", "pending", None),
    ]


def test_an_order_cancelled_after_the_late_update_was_queued_withdraws_it(clinic_db, sweep) -> None:
    with session_scope() as session:
        made = make_lab_promise(session, due_at=local(TUE, 12))
    assert sweep(local(TUE, 16)) == SweepCounts(updates=1)
    with time_machine.travel(local(TUE, 16, 1), tick=False), session_scope() as session:
        do_update_order(session=session, order_id=lab_order_id(made.order_id), status=LabStatus.CANCELLED,
                        source="rest")  # fmt: skip
    assert outbox() == [(f"promise:{made.promise_id}:2026-11-17:late_update", "cancelled", "promise_cancelled")]


def _admin() -> Principal:
    with session_scope() as session:
        admin = session.scalars(select(StaffUser).where(StaffUser.email == DEMO_ADMIN_EMAIL)).one()
        return Principal(staff_id=admin.id, name=admin.name, email=admin.email, role=Role(admin.role),
                         session_id="s", csrf_token="c")  # fmt: skip


def _late_handoff(sweep) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """A patient asked for a person at 10:00 Tuesday; nobody answered by 16:00: return conversation and promise."""
    with session_scope() as session:
        patient = make_patient(session)
        conversation = open_conversation(session=session, identity=make_identity(session, patient))
        with time_machine.travel(local(TUE, 10), tick=False):
            do_handoff(session=session, conversation_id=conversation.id, reason=HandoffReason.HUMAN)
        conversation_id = conversation.id
        promise_id = session.scalars(select(Promise.id)).one()
    assert sweep(local(TUE, 16)) == SweepCounts(updates=1)
    return conversation_id, promise_id


def test_a_staff_reply_after_the_late_update_was_queued_withdraws_it(clinic_db, sweep) -> None:
    conversation_id, promise_id = _late_handoff(sweep)
    # The reply jumps the queue (staff priority): "our team hasn't replied yet" must not follow it.
    with time_machine.travel(local(TUE, 16, 1), tick=False), session_scope() as session:
        do_send(session=session, conversation_id=conversation_id, staff=_admin(), domain=update_domain(),
                body="Hello, this is Sam. How can I help?", submission_id="a" * 22)  # fmt: skip
    [late, *_replies] = outbox()
    assert late == (f"promise:{promise_id}:2026-11-17:late_update", "cancelled", "promise_kept")


def test_a_hand_off_closed_after_the_late_update_was_queued_withdraws_it(clinic_db, sweep) -> None:
    conversation_id, promise_id = _late_handoff(sweep)
    with time_machine.travel(local(TUE, 16, 1), tick=False), session_scope() as session:
        do_close(session=session, conversation_id=conversation_id, staff=_admin(), outcome="resolved")
    [late, *_others] = outbox()
    assert late == (f"promise:{promise_id}:2026-11-17:late_update", "cancelled", "promise_cancelled")


def promise_states() -> list[tuple[str, str]]:
    with session_scope() as session:
        rows = session.execute(select(Promise.kind, Promise.status).order_by(Promise.id))
        return [tuple(row) for row in rows]  # type: ignore[misc]


def _reply(conversation_id: int, *, at, body: str, **followup: str) -> None:  # type: ignore[no-untyped-def]
    with time_machine.travel(at, tick=False), session_scope() as session:
        do_send(session=session, conversation_id=conversation_id, staff=_admin(), domain=update_domain(), body=body,
                submission_id=secrets.token_urlsafe(16), **followup)  # fmt: skip


def test_staff_getting_back_as_promised_keeps_the_follow_up_promise(clinic_db, sweep) -> None:
    wed = date(2026, 11, 18)
    conversation_id, _ = _late_handoff(sweep)
    _reply(conversation_id, at=local(TUE, 16, 30), body="Let me check with the doctor.", followup="next_day")
    assert promise_states() == [("handoff_reply", "kept"), ("callback", "open")]
    # Wednesday morning the staff member gets back to the patient, as promised for 6 pm.
    _reply(conversation_id, at=local(wed, 11), body="The doctor says yes.")
    assert promise_states() == [("handoff_reply", "kept"), ("callback", "kept")]
    assert sweep(local(wed, 18)) == SweepCounts()


def test_closing_the_conversation_cancels_its_follow_up_promise(clinic_db, sweep) -> None:
    wed, thu = date(2026, 11, 18), date(2026, 11, 19)
    conversation_id, _ = _late_handoff(sweep)
    _reply(conversation_id, at=local(TUE, 16, 30), body="We'll book you in.", followup="today")
    with time_machine.travel(local(TUE, 17, 30), tick=False), session_scope() as session:
        do_close(session=session, conversation_id=conversation_id, staff=_admin(), outcome="resolved")
    assert promise_states() == [("handoff_reply", "kept"), ("callback", "cancelled")]
    for day in (wed, thu):
        assert sweep(local(day, 16)) == SweepCounts()


def _request() -> int:
    """A patient asked for a refill at 10:00 Tuesday, answer promised by 10:00 Wednesday: return the conversation."""
    with session_scope() as session:
        patient = make_patient(session)
        conversation = open_conversation(session=session, identity=make_identity(session, patient))
        with time_machine.travel(local(TUE, 10), tick=False):
            do_record_request(session=session, conversation_id=conversation.id, kind=RequestKind.REFILL,
                              action=None, details={"medication": "lisinopril"})  # fmt: skip
        return conversation.id


def requests() -> list[tuple[str, bool]]:
    with session_scope() as session:
        rows = session.execute(select(PatientRequest.status, PatientRequest.completed_at.is_not(None)))
        return [tuple(row) for row in rows]  # type: ignore[misc]


def test_a_request_answered_and_closed_as_resolved_is_done_and_its_promise_kept(clinic_db, sweep) -> None:
    wed, thu = date(2026, 11, 18), date(2026, 11, 19)
    conversation_id = _request()
    _reply(conversation_id, at=local(TUE, 11), body="Sent to your pharmacy.")
    with time_machine.travel(local(TUE, 11, 1), tick=False), session_scope() as session:
        do_close(session=session, conversation_id=conversation_id, staff=_admin(), outcome="resolved")
    assert (requests(), promise_states()) == ([("done", True)], [("request_answer", "kept")])
    for day in (wed, thu):
        assert sweep(local(day, 16)) == SweepCounts()


def test_a_request_closed_otherwise_is_cancelled_with_its_queued_update(clinic_db, sweep) -> None:
    wed = date(2026, 11, 18)
    conversation_id = _request()
    assert sweep(local(wed, 16)) == SweepCounts(updates=1)
    with time_machine.travel(local(wed, 16, 1), tick=False), session_scope() as session:
        do_close(session=session, conversation_id=conversation_id, staff=_admin(), outcome="referred")
    assert (requests(), promise_states()) == ([("cancelled", True)], [("request_answer", "cancelled")])
    assert [status for _, status, _ in outbox()] == ["cancelled"]
