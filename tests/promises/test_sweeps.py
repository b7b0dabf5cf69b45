"""The promise sweeps on the demo clinic: one update per working day, exactly once, at the right hour."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import select

from bot.channels.models import OutboxMessage
from bot.clinic import ClinicConfigError
from bot.clinic_settings import ClinicProfile, load_clinic
from bot.conversations.flows import do_handoff
from bot.conversations.models import HandoffReason
from bot.conversations.service import open_conversation
from bot.db import session_scope
from bot.labs.flows import PatientIn, do_update_order, do_upsert_order
from bot.labs.models import LabOrder, LabStatus
from bot.patients.models import Channel, ChannelIdentity, Patient
from bot.patients.service import get_by_phone, get_identity
from bot.promises.models import Promise, PromiseKind, PromiseStatus, PromiseUpdate
from bot.promises.sweeps import SweepCounts, do_run_sweeps
from bot.staff.models import AuditEvent
from tests.promises.factories import local, make_identity, make_lab_promise, make_patient, make_promise

WED, THANKSGIVING, FRI = date(2026, 11, 25), date(2026, 11, 26), date(2026, 11, 27)
TUE = date(2026, 11, 17)
JIM = "+16175550142"  # the demo patient James Wilson, who goes by Jim


def updates() -> list[tuple[int, date, str]]:
    with session_scope() as session:
        rows = session.execute(
            select(PromiseUpdate.promise_id, PromiseUpdate.local_date, PromiseUpdate.kind).order_by(
                PromiseUpdate.id
            )
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def texts() -> list[tuple[str, str, int]]:
    with session_scope() as session:
        rows = session.execute(
            select(OutboxMessage.key, OutboxMessage.body, OutboxMessage.identity_id).order_by(
                OutboxMessage.id
            )
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def lab_promise(**kwargs) -> object:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        return make_lab_promise(session, **kwargs)


def set_profile(**values: object) -> None:
    with session_scope() as session:
        profile = session.scalars(select(ClinicProfile)).one()
        for name, value in values.items():
            setattr(profile, name, value)


def test_due_and_late_gets_one_update_and_a_second_sweep_nothing(clinic_db, sweep) -> None:
    made = lab_promise(due_at=local(TUE, 12))
    assert sweep(local(TUE, 16, 30)) == SweepCounts(updates=1)
    assert sweep(local(TUE, 16, 45)) == SweepCounts()
    assert updates() == [(made.promise_id, TUE, "late_update")]
    [(key, body, identity_id)] = texts()
    assert key == f"promise:{made.promise_id}:2026-11-17:late_update"
    assert identity_id == made.identity_id
    assert body == (
        "Hi Rosa, this is Riverside Family Clinic. Your lab results haven't come back from the lab yet. "
        "We'll update you by 4 pm tomorrow."
    )
    with session_scope() as session:
        assert session.get(Promise, made.promise_id).next_update_at == local(date(2026, 11, 18), 16)


def test_nothing_before_the_update_time_and_never_yesterdays_update(clinic_db, sweep) -> None:
    lab_promise(due_at=local(TUE, 12))
    assert sweep(local(TUE, 15, 59)) == SweepCounts()
    # The scheduler was down from 15:59 on Tuesday until Wednesday morning: Tuesday's update is lost,
    # Wednesday's goes out at Wednesday's update time.
    assert sweep(local(date(2026, 11, 18), 9)) == SweepCounts()
    assert sweep(local(date(2026, 11, 18), 16)) == SweepCounts(updates=1)
    assert [day for _, day, _ in updates()] == [date(2026, 11, 18)]


def test_a_scheduler_back_later_the_same_day_catches_up(clinic_db, sweep) -> None:
    lab_promise(due_at=local(TUE, 9))
    assert sweep(local(TUE, 19, 30)) == SweepCounts(updates=1)


def test_weekend_nothing_then_monday(clinic_db, sweep) -> None:
    saturday = date(2026, 11, 21)
    lab_promise(due_at=local(saturday, 10))
    assert sweep(local(saturday, 16, 30)) == SweepCounts()
    assert sweep(local(date(2026, 11, 22), 16, 30)) == SweepCounts()
    assert sweep(local(date(2026, 11, 23), 16, 30)) == SweepCounts(updates=1)


def test_thanksgiving_nothing_that_day_and_the_update_promises_friday(clinic_db, sweep) -> None:
    made = lab_promise(due_at=local(WED, 12))
    assert sweep(local(WED, 16, 30)) == SweepCounts(updates=1)
    assert texts()[0][1].endswith("We'll update you by 4 pm on Friday.")
    assert sweep(local(THANKSGIVING, 16, 30)) == SweepCounts()
    assert sweep(local(FRI, 16, 30)) == SweepCounts(updates=1)
    assert updates() == [(made.promise_id, WED, "late_update"), (made.promise_id, FRI, "late_update")]
    assert texts()[1][1].endswith("We'll update you by 4 pm on Monday.")


@pytest.mark.parametrize(
    ("saturday", "sunday", "offset_after"),
    [(date(2026, 3, 7), date(2026, 3, 8), 4), (date(2026, 10, 31), date(2026, 11, 1), 5)],
    ids=["spring-forward", "fall-back"],
)
def test_dst_days_send_at_four_pm_local(clinic_db, sweep, saturday, sunday, offset_after) -> None:
    weekday = "08:00-18:00"
    set_profile(weekly_hours={d: weekday for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")})
    made = lab_promise(due_at=local(saturday, 9))
    assert sweep(local(saturday, 16)) == SweepCounts(updates=1)
    # 16:00 on the DST Sunday is 20:00 UTC after spring-forward (EDT) and 21:00 UTC after fall-back (EST).
    four_pm = datetime(sunday.year, sunday.month, sunday.day, 16 + offset_after, tzinfo=UTC)
    with session_scope() as session:
        assert session.get(Promise, made.promise_id).next_update_at == four_pm
    assert sweep(four_pm - timedelta(minutes=1)) == SweepCounts()
    assert sweep(four_pm) == SweepCounts(updates=1)


def test_on_a_half_day_updates_go_before_the_clinic_closes(clinic_db, sweep) -> None:
    weekday = "08:00-18:00"
    set_profile(weekly_hours={**{day: weekday for day in ("mon", "tue", "wed", "thu", "fri")}, "sat": "09:00-12:00"})
    friday, saturday, monday = date(2026, 11, 20), date(2026, 11, 21), date(2026, 11, 23)
    made = lab_promise(due_at=local(friday, 12))
    assert sweep(local(friday, 16)) == SweepCounts(updates=1)
    # Not "by 4 pm tomorrow": nobody is in at 4 on a Saturday.
    assert texts()[0][1].endswith("We'll update you by 11:30 am tomorrow.")
    with session_scope() as session:
        assert session.get(Promise, made.promise_id).next_update_at == local(saturday, 11, 30)
    assert sweep(local(saturday, 11, 29)) == SweepCounts()
    assert sweep(local(saturday, 11, 30)) == SweepCounts(updates=1)
    assert texts()[1][1].endswith("We'll update you by 4 pm on Monday.")
    with session_scope() as session:
        assert session.get(Promise, made.promise_id).next_update_at == local(monday, 16)


def test_quiet_hours(clinic_db, sweep) -> None:
    lab_promise(due_at=local(TUE, 12))
    assert sweep(local(TUE, 20)) == SweepCounts()
    assert sweep(local(TUE, 19, 59)) == SweepCounts(updates=1)
    set_profile(daily_update_time="07:00")
    lab_promise(due_at=local(date(2026, 11, 18), 6))
    assert sweep(local(date(2026, 11, 18), 7, 30)) == SweepCounts()
    # The first promise was told "by 4 pm" on Tuesday evening: only the new one is updated at 08:00.
    assert sweep(local(date(2026, 11, 18), 8)) == SweepCounts(updates=1)


def test_an_update_time_before_quiet_hours_promises_the_time_the_update_really_goes_out(clinic_db, sweep) -> None:
    set_profile(daily_update_time="07:00")
    lab_promise(due_at=local(TUE, 12))
    assert sweep(local(TUE, 16)) == SweepCounts(updates=1)
    assert texts()[0][1].endswith("We'll update you by 8 am tomorrow.")
    assert sweep(local(date(2026, 11, 18), 7, 59)) == SweepCounts()
    assert sweep(local(date(2026, 11, 18), 8)) == SweepCounts(updates=1)


@pytest.mark.parametrize("update_time", ["20:00", "21:30"])
def test_an_update_time_at_or_after_quiet_hours_end_is_refused_naming_the_setting(clinic_db, update_time) -> None:
    set_profile(daily_update_time=update_time)
    with session_scope() as session, pytest.raises(ClinicConfigError) as refused:
        load_clinic(session=session)
    assert str(refused.value) == (
        f"daily_update_time: {update_time} is not earlier than quiet_end 20:00; "
        "late updates are sent only inside quiet hours, so none would ever go out"
    )


def test_opted_out_patient_goes_to_the_call_list(clinic_db, sweep) -> None:
    opted_out = lab_promise(due_at=local(TUE, 12), opted_out=True)
    unreachable = lab_promise(due_at=local(TUE, 12), identity=False)
    assert sweep(local(TUE, 16, 30)) == SweepCounts(call_list=2)
    assert sweep(local(TUE, 17)) == SweepCounts()
    assert texts() == []
    assert sorted(updates()) == [
        (opted_out.promise_id, TUE, "call_list"),
        (unreachable.promise_id, TUE, "call_list"),
    ]


def _result(order_id: int, at: datetime) -> None:
    """What lab intake does when a result arrives: the order resulted, its promise kept."""
    with session_scope() as session:
        order = session.get(LabOrder, order_id)
        order.status, order.resulted_at = LabStatus.RESULTED, at
        promise = session.scalars(select(Promise).where(Promise.subject_id == order_id)).one()
        promise.status, promise.kept_at = PromiseStatus.KEPT, at


def test_results_before_the_update_time_get_a_notice_and_no_late_update(clinic_db, sweep) -> None:
    made = lab_promise(due_at=local(TUE, 12))
    _result(made.order_id, local(TUE, 14))
    assert sweep(local(TUE, 14, 5)) == SweepCounts(results_ready=1)
    assert sweep(local(TUE, 16, 30)) == SweepCounts()
    [(key, body, _)] = texts()
    assert key == f"promise:{made.promise_id}:2026-11-17:results_ready"
    assert "portal" in body and "A1c" not in body and "Hemoglobin" not in body
    with session_scope() as session:
        assert session.get(LabOrder, made.order_id).result_notified_at == local(TUE, 14, 5)


def test_results_in_at_night_wait_for_quiet_hours_even_on_a_weekend(clinic_db, sweep) -> None:
    saturday = date(2026, 11, 21)
    made = lab_promise(due_at=local(saturday, 12), language="es", name="Lucia Torres")
    _result(made.order_id, local(saturday, 21))
    assert sweep(local(saturday, 21, 5)) == SweepCounts()
    assert sweep(local(date(2026, 11, 22), 8)) == SweepCounts(results_ready=1)
    assert texts()[0][1].startswith(
        "Hola, Lucia. Sus resultados ya llegaron a Riverside Family Clinic."
    )


def test_escalation_after_three_working_days_late(clinic_db, sweep) -> None:
    made = lab_promise(due_at=local(WED, 12))
    for day in (WED, THANKSGIVING, FRI, date(2026, 11, 30)):
        assert sweep(local(day, 16, 30)).escalations == 0
    # Late on Friday, Monday and Tuesday: three working days (Thanksgiving does not count).
    assert sweep(local(date(2026, 12, 1), 16, 30)) == SweepCounts(updates=1, escalations=1)
    assert sweep(local(date(2026, 12, 2), 16, 30)) == SweepCounts(updates=1)
    with session_scope() as session:
        promise = session.get(Promise, made.promise_id)
        assert (promise.escalated_at, promise.escalation_reason) == (local(date(2026, 12, 1), 16, 30), "late")
    assert (made.promise_id, date(2026, 12, 1), "escalation") in updates()


def test_channel_language_name_and_reason(clinic_db, sweep) -> None:
    with session_scope() as session:
        maria = make_patient(session, name="Maria Garcia", language="es")
        make_identity(session, maria, last_seen_at=datetime(2026, 11, 1, tzinfo=UTC))
        telegram = make_identity(
            session,
            maria,
            channel="telegram",
            address="5550001",
            last_seen_at=datetime(2026, 11, 10, tzinfo=UTC),
        )
        request = make_promise(session, due_at=local(TUE, 10), reason_key="request_refill",
                               kind=PromiseKind.REQUEST_ANSWER, patient=maria, identity=None)  # fmt: skip
        stranger = make_identity(session, None, channel="webchat")
        handoff = make_promise(session, due_at=local(TUE, 10), reason_key="handoff_human",
                               kind=PromiseKind.HANDOFF_REPLY, patient=None, identity=stranger)  # fmt: skip
        telegram_id, stranger_id = telegram.id, stranger.id
    assert sweep(local(TUE, 16)) == SweepCounts(updates=2)
    by_key = {key: (body, identity) for key, body, identity in texts()}
    assert by_key[f"promise:{request}:2026-11-17:late_update"] == (
        "Hola, Maria. Le escribe Riverside Family Clinic. Seguimos trabajando en su solicitud. "
        "Le daremos otra actualización mañana antes de las 16:00.",
        telegram_id,
    )
    assert by_key[f"promise:{handoff}:2026-11-17:late_update"] == (
        "Hi, this is Riverside Family Clinic. Our team hasn't replied to your message yet, and we're sorry "
        "for the wait. We'll update you by 4 pm tomorrow.",
        stranger_id,
    )


def jims_results_in(at: datetime) -> tuple[int, int]:
    """Run lab intake for Jim: an order (his SMS identity linked by the number on file), resulted at `at`.

    Return his patient id and his SMS identity's id.
    """
    jim = PatientIn(name="James Wilson", phone=JIM, external_id="RFC-1002")
    with time_machine.travel(at, tick=False), session_scope() as session:
        do_upsert_order(session=session, order_id="ORD-JIM", patient=jim, test_name="Lipid panel",
                        ordered_at=at - timedelta(days=2), expected_by=at - timedelta(hours=1),
                        source="rest")  # fmt: skip
        order = do_update_order(session=session, order_id="ORD-JIM", status=LabStatus.RESULTED, source="rest")
        sms = get_identity(session=session, channel=Channel.SMS, address=JIM)
        return order.patient_id, sms.id


def jims_web_chat(*, verified_at: datetime) -> int:
    """Return a web chat Jim verified with a code at `verified_at` and chatted in for ten minutes."""
    with session_scope() as session:
        jim = get_by_phone(session=session, phone=JIM)
        chat = make_identity(session, jim, channel=Channel.WEBCHAT, verified_at=verified_at,
                             last_seen_at=verified_at + timedelta(minutes=10))  # fmt: skip
        return chat.id


def ended_verifications() -> list[dict[str, object]]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(AuditEvent.details).where(AuditEvent.action == "identity.verification_ended")
            )
        )


def test_a_web_chat_verified_within_twelve_hours_gets_the_named_results_notice(clinic_db, sweep) -> None:
    noon = local(TUE, 12)
    jims_results_in(local(TUE, 9))
    chat_id = jims_web_chat(verified_at=noon - timedelta(hours=11))
    assert sweep(noon) == SweepCounts(results_ready=1)
    [(_, body, identity_id)] = texts()
    assert identity_id == chat_id
    assert body.startswith("Hi Jim, this is Riverside Family Clinic. Your lab results are in.")
    assert ended_verifications() == []


def test_a_web_chat_whose_verification_lapsed_is_passed_over_for_the_phone_and_ended(
    clinic_db, sweep
) -> None:
    noon = local(TUE, 12)
    jim_id, sms_id = jims_results_in(local(TUE, 9))
    # Verified 13 hours ago and seen more recently than the phone, which never wrote to us.
    chat_id = jims_web_chat(verified_at=noon - timedelta(hours=13))
    assert sweep(noon) == SweepCounts(results_ready=1)
    [(_, body, identity_id)] = texts()
    assert identity_id == sms_id
    assert body.startswith("Hi Jim, this is Riverside Family Clinic. Your lab results are in.")
    # Ended here as when the visitor comes back: audited, and kept as Jim's for staff.
    assert ended_verifications() == [{"patient_id": jim_id, "reason": "expired"}]
    with session_scope() as session:
        chat = session.get(ChannelIdentity, chat_id)
        assert (chat.verified_at, chat.patient_id) == (None, jim_id)


def test_a_lapsed_web_chat_and_no_other_channel_puts_the_update_on_the_call_list(clinic_db, sweep) -> None:
    monday = date(2026, 11, 16)
    chat_id = jims_web_chat(verified_at=local(monday, 14))
    with session_scope() as session:
        conversation = open_conversation(session=session, identity=session.get(ChannelIdentity, chat_id))
        with time_machine.travel(local(monday, 14, 5), tick=False):
            do_handoff(session=session, conversation_id=conversation.id, reason=HandoffReason.HUMAN)
        promise = session.scalars(select(Promise)).one()
        assert (promise.patient_id, promise.identity_id) == (conversation.patient_id, chat_id)
        promise_id = promise.id
    # Jim has no phone or Telegram identity: the browser that verified is nobody's now, so nothing is written.
    assert sweep(local(TUE, 16, 30)) == SweepCounts(call_list=1)
    assert texts() == []
    assert updates() == [(promise_id, TUE, "call_list")]


def file_ann_under_jims_number(at: datetime) -> None:
    """Run lab intake for Ann Wilson, another record, filed under Jim's number: a family line from now on."""
    ann = PatientIn(name="Ann Wilson", phone=JIM, external_id="RFC-9001")
    with time_machine.travel(at, tick=False), session_scope() as session:
        do_upsert_order(session=session, order_id="ORD-ANN", patient=ann, test_name="Thyroid panel",
                        ordered_at=at, expected_by=at + timedelta(days=3), source="rest")  # fmt: skip


def withdrawn_links() -> list[dict[str, object]]:
    with session_scope() as session:
        return list(
            session.scalars(select(AuditEvent.details).where(AuditEvent.action == "identity.link_withdrawn"))
        )


def test_results_for_a_number_now_on_file_for_two_patients_go_on_the_call_list(clinic_db, sweep) -> None:
    jim_id, sms_id = jims_results_in(local(TUE, 9))
    file_ann_under_jims_number(local(TUE, 10))
    assert sweep(local(TUE, 12)) == SweepCounts(call_list=1)
    assert texts() == []
    assert withdrawn_links() == [{"patient_id": jim_id, "method": "phone_on_file", "reason": "phone_shared"}]
    with session_scope() as session:
        phone = session.get(ChannelIdentity, sms_id)
        assert (phone.verified_at, phone.patient_id) == (None, jim_id)


def test_results_for_a_number_now_shared_go_to_the_patients_telegram_instead(clinic_db, sweep) -> None:
    jim_id, sms_id = jims_results_in(local(TUE, 9))
    with session_scope() as session:
        jim = session.get(Patient, jim_id)
        telegram = make_identity(session, jim, channel=Channel.TELEGRAM, last_seen_at=local(TUE, 8))
        # Linked by a one-time link staff gave him: a link that does not rest on the shared number.
        telegram.verification_method, telegram = "telegram_deeplink", telegram.id
        # He texted from the phone more recently than from Telegram.
        session.get(ChannelIdentity, sms_id).last_seen_at = local(TUE, 9, 30)
    file_ann_under_jims_number(local(TUE, 10))
    assert sweep(local(TUE, 12)) == SweepCounts(results_ready=1)
    [(_, body, identity_id)] = texts()
    assert identity_id == telegram
    assert body.startswith("Hi Jim, this is Riverside Family Clinic. Your lab results are in.")


def test_a_telegram_chat_linked_by_a_number_filed_again_behind_intake_loses_the_results_too(
    clinic_db, sweep
) -> None:
    jim_id, sms_id = jims_results_in(local(TUE, 9))
    with session_scope() as session:
        jim = session.get(Patient, jim_id)
        chat = make_identity(session, jim, channel=Channel.TELEGRAM, last_seen_at=local(TUE, 9, 30))
        chat.linked_phone, chat_id = JIM, chat.id  # linked by sharing his contact: his number
        # Ann is filed under the number some other way than lab intake (which would withdraw both at once).
        session.add(Patient(name="Ann Wilson", phone=JIM, external_id="RFC-9001"))
    assert sweep(local(TUE, 12)) == SweepCounts(call_list=1)
    assert texts() == []
    assert sorted(withdrawn_links(), key=str) == [
        {"patient_id": jim_id, "method": "phone_on_file", "reason": "phone_shared"},
        {"patient_id": jim_id, "method": "telegram_contact", "reason": "phone_shared"},
    ]
    with session_scope() as session:
        assert session.get(ChannelIdentity, chat_id).verified_at is None
        assert session.get(ChannelIdentity, sms_id).verified_at is None


def test_a_crash_mid_sweep_then_a_restart_handles_each_promise_exactly_once(
    clinic_db, sweep, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.config import get_settings
    from bot.promises import sweeps

    monkeypatch.setenv("CLINICBOT_SCHEDULER_BATCH_SIZE", "3")
    get_settings.cache_clear()
    made = [lab_promise(due_at=local(TUE, 12)) for _ in range(10)]
    real_render, calls = sweeps.Wording.render, []

    def crash_on_fifth(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("killed mid-batch")
        return real_render(self, *args, **kwargs)

    monkeypatch.setattr(sweeps.Wording, "render", crash_on_fifth)
    with pytest.raises(RuntimeError, match="killed mid-batch"):
        sweep(local(TUE, 16, 30))
    # The first batch of three committed; the second rolled back whole.
    assert len(updates()) == 3 and len(texts()) == 3
    monkeypatch.setattr(sweeps.Wording, "render", real_render)
    assert sweep(local(TUE, 16, 31)) == SweepCounts(updates=7)
    assert sweep(local(TUE, 16, 32)) == SweepCounts()
    assert sorted(p for p, _, _ in updates()) == sorted(m.promise_id for m in made)
    assert len({key for key, _, _ in texts()}) == 10


def test_two_sweepers_at_once_without_leadership_still_send_once(clinic_db) -> None:
    from scheduler.jobs import update_domain

    made = [lab_promise(due_at=local(TUE, 12)) for _ in range(40)]
    domain, barrier, results, errors = update_domain(), threading.Barrier(2), [], []

    def run() -> None:
        try:
            barrier.wait()
            results.append(
                do_run_sweeps(domain=domain, now=local(TUE, 16, 30), escalation_working_days=3, batch_size=7)
            )
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sum(r.updates for r in results) == 40
    assert sorted(p for p, _, _ in updates()) == sorted(m.promise_id for m in made)


def _reschedule(made, *, at: datetime, expected_by: datetime) -> None:  # type: ignore[no-untyped-def]
    """What lab intake does when the lab sends a new expected time."""
    with session_scope() as session:
        order_id = session.get(LabOrder, made.order_id).order_id
    with time_machine.travel(at, tick=False), session_scope() as session:
        do_update_order(session=session, order_id=order_id, expected_by=expected_by, source="rest")


def test_an_update_promised_before_the_lab_moved_its_date_still_comes_and_says_when_the_next_is(
    clinic_db, sweep
) -> None:
    made = lab_promise(due_at=local(TUE, 12))
    assert sweep(local(TUE, 16)) == SweepCounts(updates=1)
    assert texts()[0][1].endswith("We'll update you by 4 pm tomorrow.")
    # Wednesday morning the lab says Friday noon: the patient was still told to expect news by 4 pm today.
    wed, thu, fri = date(2026, 11, 18), date(2026, 11, 19), date(2026, 11, 20)
    _reschedule(made, at=local(wed, 9), expected_by=local(fri, 12))
    assert sweep(local(wed, 16)) == SweepCounts(updates=1)
    assert texts()[1][1].endswith("We'll update you by 4 pm on Friday.")
    assert sweep(local(thu, 16)) == SweepCounts()
    assert sweep(local(fri, 16)) == SweepCounts(updates=1)
    assert [day for _, day, _ in updates()] == [TUE, wed, fri]
    assert texts()[2][1].endswith("We'll update you by 4 pm on Monday.")


def test_a_promise_rescheduled_several_times_gets_an_update_for_each_due_never_two_a_day(clinic_db, sweep) -> None:
    made = lab_promise(due_at=local(TUE, 12), language="es", name="Lucia Torres")
    wed, thu = date(2026, 11, 18), date(2026, 11, 19)
    # Moved within Tuesday before its first update, then to later on Tuesday after it.
    _reschedule(made, at=local(TUE, 11), expected_by=local(TUE, 15))
    assert sweep(local(TUE, 16)) == SweepCounts(updates=1)
    _reschedule(made, at=local(TUE, 16, 30), expected_by=local(TUE, 18))
    assert sweep(local(TUE, 18)) == SweepCounts()
    # Moved to Wednesday 17:00 before Wednesday's update: that update says the next comes Thursday, and the
    # due passing at 17:00 adds none.
    _reschedule(made, at=local(wed, 10), expected_by=local(wed, 17))
    assert sweep(local(wed, 16)) == SweepCounts(updates=1)
    assert sweep(local(wed, 17)) == SweepCounts()
    assert sweep(local(thu, 16)) == SweepCounts(updates=1)
    assert [day for _, day, _ in updates()] == [TUE, wed, thu]
    assert [body.rsplit(". ", 1)[1] for _, body, _ in texts()] == [
        "Le daremos otra actualización mañana antes de las 16:00.",
        "Le daremos otra actualización mañana antes de las 16:00.",
        "Le daremos otra actualización mañana antes de las 16:00.",
    ]
    with session_scope() as session:
        assert session.get(Promise, made.promise_id).next_update_at == local(date(2026, 11, 20), 16)


def _call_list_rows() -> list[tuple[int, str]]:
    with session_scope() as session:
        rows = session.execute(
            select(PromiseUpdate.promise_id, PromiseUpdate.reason_key).where(PromiseUpdate.kind == "call_list")
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def test_results_after_a_late_call_list_entry_reach_a_patient_reachable_since(clinic_db, sweep) -> None:
    made = lab_promise(due_at=local(TUE, 12), identity=False)
    assert sweep(local(TUE, 16)) == SweepCounts(call_list=1)
    with session_scope() as session:
        telegram = make_identity(session, session.get(Patient, made.patient_id), channel=Channel.TELEGRAM)
        telegram.verification_method, telegram_id = "telegram_deeplink", telegram.id
    _result(made.order_id, local(TUE, 17))
    assert sweep(local(TUE, 17, 5)) == SweepCounts(results_ready=1)
    [(key, body, identity_id)] = texts()
    assert (key, identity_id) == (f"promise:{made.promise_id}:2026-11-17:results_ready", telegram_id)
    assert body.startswith("Hi Rosa, this is Riverside Family Clinic. Your lab results are in.")


def test_results_for_a_patient_on_the_late_call_list_turn_that_call_into_a_results_call(clinic_db, sweep) -> None:
    made = lab_promise(due_at=local(TUE, 12), opted_out=True)
    assert sweep(local(TUE, 16)) == SweepCounts(call_list=1)
    _result(made.order_id, local(TUE, 17))
    assert sweep(local(TUE, 17, 5)) == SweepCounts(call_list=1)
    assert sweep(local(TUE, 17, 10)) == SweepCounts()
    assert texts() == []
    assert _call_list_rows() == [(made.promise_id, "results_ready")]
