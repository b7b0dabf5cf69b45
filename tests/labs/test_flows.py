"""Lab order flows: create with patient, identity and promise; forward-only updates keep the promise in step."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import func, select

from bot.db import session_scope
from bot.labs.flows import (
    LabInputError,
    LabOrderNotFound,
    LabStatusConflict,
    PatientConflict,
    PatientIn,
    UpsertOutcome,
    do_update_order,
    do_upsert_order,
)
from bot.labs.models import LabMessage, LabOrder, LabStatus
from bot.patients.models import ChannelIdentity, Patient
from bot.promises.models import Promise, PromiseStatus
from bot.staff.models import AuditEvent

ORDERED = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)
EXPECTED = datetime(2026, 11, 25, 17, 0, tzinfo=UTC)
ROSA = PatientIn(
    name="Rosa Diaz", phone="+16175550199", date_of_birth=date(1990, 5, 17), external_id="RFC-2001"
)


def upsert(session, **changes):  # type: ignore[no-untyped-def]
    args = {"order_id": "ACME-1", "patient": ROSA, "test_name": "Thyroid panel", "ordered_at": ORDERED,
            "expected_by": EXPECTED, "source": "rest"}  # fmt: skip
    args.update(changes)
    return do_upsert_order(session=session, **args)


def count(session, model) -> int:  # type: ignore[no-untyped-def]
    return session.scalar(select(func.count()).select_from(model))


def test_new_order_creates_patient_identity_order_and_promise(demo_db: str) -> None:
    with session_scope() as session:
        result = upsert(session, actor_kind="api", actor_id=7)
        order_pk = result.order.id
    assert result.outcome == UpsertOutcome.CREATED
    with session_scope() as session:
        patient = session.scalars(select(Patient).where(Patient.external_id == "RFC-2001")).one()
        identity = session.scalars(
            select(ChannelIdentity).where(ChannelIdentity.address == "+16175550199")
        ).one()
        order = session.get(LabOrder, order_pk)
        promise = session.scalars(select(Promise).where(Promise.subject_id == order_pk)).one()
        audit_row = session.scalars(select(AuditEvent).where(AuditEvent.action == "lab_order.created")).one()
        assert (patient.name, patient.phone, patient.date_of_birth) == (
            "Rosa Diaz",
            "+16175550199",
            date(1990, 5, 17),
        )
        assert (identity.channel, identity.patient_id, identity.verification_method) == (
            "sms",
            patient.id,
            "phone_on_file",
        )
        assert (order.patient_id, order.status, order.ordered_at, order.expected_by) == (
            patient.id,
            "ordered",
            ORDERED,
            EXPECTED,
        )
        assert (promise.kind, promise.subject_type, promise.reason_key, promise.due_at, promise.status) == (
            "lab_result", "lab_order", "lab_not_back", EXPECTED, "open")  # fmt: skip
        assert (promise.patient_id, promise.identity_id) == (patient.id, identity.id)
        assert (audit_row.actor_kind, audit_row.actor_id, audit_row.patient_id, audit_row.subject_id) == (
            "api", "7", patient.id, str(order_pk))  # fmt: skip
        assert session.scalars(select(LabMessage.message_type).where(LabMessage.source == "rest")).all() == [
            "order.create"
        ]


def test_repeat_is_unchanged_and_a_different_body_conflicts(demo_db: str) -> None:
    with session_scope() as session:
        upsert(session)
    with session_scope() as session:
        before = (
            count(session, Patient),
            count(session, LabOrder),
            count(session, Promise),
            count(session, LabMessage),
        )
        again = upsert(session)
        conflict = upsert(session, test_name="Lipid panel", expected_by=EXPECTED + timedelta(days=1))
        other_phone = upsert(session, patient=PatientIn(name="Rosa Diaz", phone="+16175550198",
                                                        date_of_birth=date(1990, 5, 17), external_id="RFC-2001"))  # fmt: skip
        after = (
            count(session, Patient),
            count(session, LabOrder),
            count(session, Promise),
            count(session, LabMessage),
        )
    assert (again.outcome, conflict.outcome, other_phone.outcome) == (
        UpsertOutcome.UNCHANGED, UpsertOutcome.CONFLICT, UpsertOutcome.CONFLICT)  # fmt: skip
    assert conflict.differences == ("test_name", "expected_by")
    assert other_phone.differences == ("patient.phone",)
    assert after == before


def test_known_patient_is_matched_by_external_id_and_keeps_the_clinics_record(demo_db: str) -> None:
    jim = PatientIn(
        name="JAMES WILSON", phone="+16175550142", date_of_birth=date(1957, 11, 2), external_id="RFC-1002"
    )
    with session_scope() as session:
        patients = count(session, Patient)
        result = upsert(session, order_id="ACME-2", patient=jim)
        assert count(session, Patient) == patients
        patient = session.get(Patient, result.order.patient_id)
        identity = session.scalars(
            select(ChannelIdentity).where(ChannelIdentity.address == "+16175550142")
        ).one()
        assert (patient.external_id, patient.name, identity.patient_id) == (
            "RFC-1002",
            "James Wilson",
            patient.id,
        )


JIM_PHONE = "+16175550142"
JIM_BORN = date(1957, 11, 2)


def test_an_order_matching_a_patient_on_file_only_in_part_is_refused_naming_the_field(demo_db: str) -> None:
    someone_else = PatientIn(name="Someone Else", phone=JIM_PHONE, date_of_birth=date(1990, 1, 1))
    same_name_other_birthday = PatientIn(name="James Wilson", phone=JIM_PHONE, date_of_birth=date(1990, 1, 1))
    same_birthday_other_name = PatientIn(name="Someone Else", phone=JIM_PHONE, date_of_birth=JIM_BORN)
    reused_id = PatientIn(
        name="Someone Else", phone="+16175550166", date_of_birth=date(1990, 1, 1), external_id="RFC-1002"
    )
    with session_scope() as session:
        before = (count(session, Patient), count(session, LabOrder), count(session, Promise))
        refused = []
        for number, patient in enumerate(
            (someone_else, same_name_other_birthday, same_birthday_other_name, reused_id)
        ):
            with pytest.raises(PatientConflict) as conflict:
                upsert(session, order_id=f"ACME-{number}", patient=patient)
            refused.append((conflict.value.fields, conflict.value.problem))
        after = (count(session, Patient), count(session, LabOrder), count(session, Promise))
    by_phone = "differs from the patient on file with this phone number"
    assert refused == [
        (("patient.name", "patient.date_of_birth"), by_phone),
        (("patient.date_of_birth",), by_phone),
        (("patient.name",), by_phone),
        (("patient.date_of_birth",), "differs from the patient on file with this external_id"),
    ]
    assert after == before


def test_a_patient_on_file_is_still_matched_when_the_details_agree(demo_db: str) -> None:
    # The name written another way; a new phone under the same external id and birthday (the clinic's
    # number is kept: it verifies the patient's SMS); a family member with an id of their own.
    wilson_james = PatientIn(name="WILSON, James", phone=JIM_PHONE, date_of_birth=JIM_BORN)
    new_phone = PatientIn(
        name="Jim Wilson", phone="+16175550166", date_of_birth=JIM_BORN, external_id="RFC-1002"
    )
    family = PatientIn(
        name="Mary Wilson", phone=JIM_PHONE, date_of_birth=date(1960, 4, 1), external_id="RFC-9"
    )
    with session_scope() as session:
        jim = session.scalars(select(Patient).where(Patient.external_id == "RFC-1002")).one()
        orders = [
            upsert(session, order_id=f"ACME-{n}", patient=p).order
            for n, p in enumerate((wilson_james, new_phone, family))
        ]
        mary = session.scalars(select(Patient).where(Patient.external_id == "RFC-9")).one()
        assert [order.patient_id for order in orders] == [jim.id, jim.id, mary.id]
        assert (jim.name, jim.phone, mary.phone) == ("James Wilson", JIM_PHONE, JIM_PHONE)


def test_status_moves_forward_and_keeps_or_cancels_the_promise(demo_db: str) -> None:
    with session_scope() as session:
        order_pk = upsert(session).order.id
        upsert(session, order_id="ACME-2")
    with session_scope() as session:
        do_update_order(session=session, order_id="ACME-1", status=LabStatus.COLLECTED, source="rest")
        do_update_order(session=session, order_id="ACME-1", status=LabStatus.IN_LAB, source="rest")
        do_update_order(
            session=session, order_id="ACME-1", status=LabStatus.IN_LAB, source="rest"
        )  # repeat: no-op
        order = do_update_order(session=session, order_id="ACME-1", status=LabStatus.RESULTED, source="rest")
        assert order.resulted_at is not None
        do_update_order(session=session, order_id="ACME-2", status=LabStatus.CANCELLED, source="rest")
    with session_scope() as session:
        with pytest.raises(LabStatusConflict) as backwards:
            do_update_order(session=session, order_id="ACME-1", status=LabStatus.IN_LAB, source="rest")
        promises = {p.subject_id: (p.status, p.kept_at is not None) for p in session.scalars(select(Promise).where(Promise.kind == "lab_result", Promise.subject_type == "lab_order"))}  # fmt: skip
        updates = session.scalars(
            select(AuditEvent.details).where(AuditEvent.action == "lab_order.updated")
        ).all()
    assert backwards.value.field == "status"
    assert promises[order_pk] == (PromiseStatus.KEPT, True)
    assert sorted(promises.values()).count((PromiseStatus.CANCELLED, False)) == 1
    assert [u["status"] for u in updates] == ["collected", "in_lab", "resulted", "cancelled"]


def test_new_expected_time_moves_an_open_promise(demo_db: str) -> None:
    later = EXPECTED + timedelta(days=2)
    with session_scope() as session:
        order_pk = upsert(session).order.id
        do_update_order(session=session, order_id="ACME-1", expected_by=later, source="rest")
        due = session.scalars(
            select(Promise.due_at).where(Promise.subject_id == order_pk, Promise.kind == "lab_result")
        ).one()
        with pytest.raises(LabInputError) as too_early:
            do_update_order(
                session=session, order_id="ACME-1", expected_by=ORDERED - timedelta(hours=1), source="rest"
            )
        with pytest.raises(LabOrderNotFound):
            do_update_order(session=session, order_id="NOPE", status=LabStatus.RESULTED, source="rest")
    assert due == later
    assert (too_early.value.field, too_early.value.problem) == (
        "expected_by",
        "must not be earlier than the order's ordered_at",
    )


def test_demo_orders_have_their_promises(demo_db: str) -> None:
    with session_scope() as session:
        rows = session.execute(
            select(
                LabOrder.order_id, Promise.status, Promise.reason_key, Promise.due_at == LabOrder.expected_by
            )
            .join(Promise, (Promise.subject_id == LabOrder.id) & (Promise.subject_type == "lab_order"))
            .order_by(LabOrder.order_id)
        ).all()
    assert [tuple(r) for r in rows] == [
        ("DEMO-LAB-1", "open", "lab_not_back", True),
        ("DEMO-LAB-2", "open", "lab_not_back", True),
        ("DEMO-LAB-3", "kept", "lab_not_back", True),
        ("DEMO-LAB-4", "open", "lab_not_back", True),
    ]
