"""HL7 v2 intake: ORM creates, ORU results, ACK codes with reasons that name the segment, MSH-10 dedupe."""

from __future__ import annotations

from datetime import UTC, date, datetime

import hl7
import time_machine
from sqlalchemy import func, select

from bot.db import session_scope
from bot.labs.hl7v2 import do_receive_hl7
from bot.labs.models import LabMessage, LabOrder
from bot.patients.models import ChannelIdentity, Patient
from bot.promises.models import Promise
from bot.staff.models import AuditEvent
from tests.labs.conftest import orm, oru


def receive(text: str) -> tuple[str, str, str, str]:
    """Store a message; return (MSA-1, MSA-2, MSA-3, MSH-9) of the ACK as the lab would read them."""
    with session_scope() as session:
        result = do_receive_hl7(session=session, text=text)
    ack = hl7.parse(result.ack)
    msa = ack.segment("MSA")
    return (
        str(msa(1)),
        str(msa(2)),
        ack.unescape(str(msa(3))) if len(msa) > 3 else "",
        str(ack.segment("MSH")(9)),
    )


def counts() -> tuple[int, int, int, int, int]:
    with session_scope() as session:
        return tuple(  # type: ignore[return-value]
            session.scalar(select(func.count()).select_from(model))
            for model in (Patient, ChannelIdentity, LabOrder, Promise, LabMessage)
        )


def test_orm_creates_order_patient_identity_and_promise(demo_db: str) -> None:
    before = counts()
    assert receive(orm()) == ("AA", "MSG-0001", "", "ACK^O01^ACK")
    assert counts() == tuple(n + 1 for n in before)
    with session_scope() as session:
        order = session.scalars(select(LabOrder).where(LabOrder.order_id == "HL7-5001")).one()
        patient = session.get(Patient, order.patient_id)
        identity = session.scalars(
            select(ChannelIdentity).where(ChannelIdentity.patient_id == patient.id)
        ).one()
        promise = session.scalars(
            select(Promise).where(Promise.subject_id == order.id, Promise.kind == "lab_result")
        ).one()
        message = session.scalars(select(LabMessage)).one()
        actor = session.scalars(
            select(AuditEvent.actor_kind).where(AuditEvent.action == "lab_order.created")
        ).one()
    assert (patient.external_id, patient.name, patient.date_of_birth, patient.phone) == (
        "RFC-3001", "Linh Nguyen", date(1988, 2, 12), "+16175550123")  # fmt: skip
    assert (identity.channel, identity.address) == ("sms", "+16175550123")
    assert (order.test_name, order.ordered_at) == (
        "Thyroid stimulating hormone",
        datetime(2026, 11, 20, 14, 30, tzinfo=UTC),
    )
    # No OBR-27: three working days later (Fri 20 Nov -> Mon 23, Tue 24, Wed 25), same local time.
    assert order.expected_by == datetime(2026, 11, 25, 14, 30, tzinfo=UTC)
    assert (promise.status, promise.due_at, promise.identity_id) == ("open", order.expected_by, identity.id)
    assert (message.source, message.control_id, message.message_type, message.ack_code, message.order_id) == (
        "mllp", "MSG-0001", "ORM^O01", "AA", "HL7-5001")  # fmt: skip
    assert actor == "hl7"


def test_default_turnaround_skips_the_thanksgiving_holiday_and_obr27_wins(demo_db: str) -> None:
    # Ordered Tue 24 Nov 2026: Wed 25, (Thu 26 Thanksgiving), Fri 27, (weekend), Mon 30.
    tuesday = orm("MSG-T", order_id="HL7-T").replace("20261120093000-0500", "20261124100000-0500")
    timed = orm("MSG-Q", order_id="HL7-Q", obr_extra="|" * 20 + "^^^^202611261200")
    assert receive(tuesday)[0] == "AA"
    assert receive(timed)[0] == "AA"
    with session_scope() as session:
        due = dict(
            session.execute(
                select(LabOrder.order_id, LabOrder.expected_by).where(LabOrder.order_id.like("HL7-%"))
            ).all()
        )
    assert due == {
        "HL7-T": datetime(2026, 11, 30, 15, 0, tzinfo=UTC),
        "HL7-Q": datetime(2026, 11, 26, 17, 0, tzinfo=UTC),  # OBR-27.5 without an offset: clinic-local noon
    }


def test_oru_final_result_keeps_the_promise(demo_db: str) -> None:
    receive(orm())
    assert receive(oru(status="P"))[0] == "AA"
    with session_scope() as session:
        assert (
            session.scalars(select(LabOrder.status)).all().count("in_lab") == 3
        )  # two demo orders and this one
    assert receive(oru("MSG-0003", pid="PID|1||RFC-3001^^^RFC^MR||NGUYEN^LINH"))[0] == "AA"
    with session_scope() as session:
        order = session.scalars(select(LabOrder).where(LabOrder.order_id == "HL7-5001")).one()
        promise = session.scalars(
            select(Promise).where(Promise.subject_id == order.id, Promise.kind == "lab_result")
        ).one()
    assert (order.status, order.resulted_at is not None, order.result_notified_at) == ("resulted", True, None)
    assert (promise.status, promise.kept_at is not None) == ("kept", True)


def test_corrected_result_after_final_is_accepted_and_cancel_is_final(demo_db: str) -> None:
    receive(orm())
    receive(orm("MSG-B", order_id="HL7-B"))
    assert receive(oru("R1", status="F"))[0] == "AA"
    assert receive(oru("R2", status="C"))[0] == "AA"
    code, _, reason, _ = receive(oru("R3", status="P"))
    assert (code, reason) == ("AE", "OBR-25: the order is already resulted; its status can no longer change")
    assert receive(oru("R4", order_id="HL7-B", status="X"))[0] == "AA"
    with session_scope() as session:
        statuses = dict(session.execute(select(Promise.subject_id, Promise.status).join(LabOrder, LabOrder.id == Promise.subject_id).where(LabOrder.order_id.in_(["HL7-5001", "HL7-B"]))).all())  # fmt: skip
    assert sorted(statuses.values()) == ["cancelled", "kept"]


def test_duplicate_control_id_gets_the_same_ack_and_changes_nothing(demo_db: str) -> None:
    receive(orm())
    first = receive(oru("DUP-1"))
    before = counts()
    with session_scope() as session:
        resulted_at = session.scalars(
            select(LabOrder.resulted_at).where(LabOrder.order_id == "HL7-5001")
        ).one()
    again = receive(oru("DUP-1"))
    # Even a retry under the same MSH-10 with other content is answered as the first time.
    altered = receive(oru("DUP-1", status="X"))
    failed = receive(oru("DUP-2", order_id="HL7-NOPE"))
    failed_again = receive(oru("DUP-2", order_id="HL7-NOPE"))
    with session_scope() as session:
        after_resulted_at = session.scalars(
            select(LabOrder.resulted_at).where(LabOrder.order_id == "HL7-5001")
        ).one()
        status = session.scalars(select(LabOrder.status).where(LabOrder.order_id == "HL7-5001")).one()
    assert first[:3] == again[:3] == altered[:3] == ("AA", "DUP-1", "")
    assert failed[:3] == failed_again[:3] == ("AE", "DUP-2", "OBR-2 (placer order number): unknown order")
    assert counts() == tuple(n + (1 if i == 4 else 0) for i, n in enumerate(before))  # only DUP-2's row
    assert (after_resulted_at, status) == (resulted_at, "resulted")


def test_bad_or_missing_segments_are_named_in_an_ae(demo_db: str) -> None:
    before = counts()
    cases = {
        "no PID": orm("E1", pid=None),
        "bad DOB": orm("E2", pid="PID|1||RFC-3001||NGUYEN^LINH||19881302|F|||||6175550123"),
        "no phone": orm("E3", pid="PID|1||RFC-3001||NGUYEN^LINH||19880212"),
        "bad phone": orm("E4", pid="PID|1||RFC-3001||NGUYEN^LINH||19880212|F|||||12"),
        "no name": orm("E5", pid="PID|1||RFC-3001||||19880212|F|||||6175550123"),
        "bad time": orm("E6").replace("L|||20261120093000-0500", "L|||2026-11-20"),
        "order control": orm("E7", order_control="XO"),
        "no OBR-4": orm("E8").replace("TSH^Thyroid stimulating hormone^L", ""),
    }
    answers = {name: receive(text)[::2] for name, text in cases.items()}
    assert answers == {
        "no PID": ("AE", "PID segment is missing"),
        "bad DOB": ("AE", "PID-7 (date of birth) is not a valid date (YYYYMMDD)"),
        "no phone": ("AE", "PID-13 (patient phone) is missing"),
        "bad phone": ("AE", "PID-13 (patient phone) is not a valid phone number"),
        "no name": ("AE", "PID-5 (patient name) is missing"),
        "bad time": (
            "AE",
            "OBR-7 (observation date/time) is not an HL7 date/time (YYYYMMDD[HHMM[SS]][+/-ZZZZ])",
        ),
        "order control": ("AE", "ORC-1 (order control) must be NW or CA, not XO"),
        "no OBR-4": ("AE", "OBR-4 (universal service identifier) is missing"),
    }
    patients, identities, orders, promises, messages = before
    assert counts() == (patients, identities, orders, promises, messages + len(cases))


def test_unknown_order_or_patient_in_oru_is_an_ae(demo_db: str) -> None:
    receive(orm())
    assert receive(oru("U1", order_id="HL7-404"))[::2] == ("AE", "OBR-2 (placer order number): unknown order")
    assert receive(oru("U2", pid="PID|1||RFC-9999"))[::2] == ("AE", "PID-3 (patient id): unknown patient")
    assert receive(oru("U3", pid="PID|1||RFC-1001"))[::2] == (
        "AE",
        "PID-3 (patient id) is not the patient of the order in OBR-2",
    )
    assert receive(oru("U4", status=""))[::2] == ("AE", "OBR-25 (result status) is missing")
    with session_scope() as session:
        assert (
            session.scalars(select(LabOrder.status).where(LabOrder.order_id == "HL7-5001")).one() == "ordered"
        )


def test_unsupported_type_is_ar_and_newlines_are_accepted(demo_db: str) -> None:
    adt = "MSH|^~\\&|ADT|ACME|CLINICBOT|RFC|20261120093000||ADT^A01|ADT-1|P|2.5\rPID|1||RFC-1001\r"
    assert receive(adt) == (
        "AR",
        "ADT-1",
        "MSH-9 message type ADT^A01 is not supported; send ORM^O01 or ORU^R01",
        "ACK^A01^ACK",
    )
    assert receive(orm("LF-1", sep="\n"))[0] == "AA"
    assert receive(oru("CRLF-1").replace("\r", "\r\n"))[0] == "AA"
    assert receive("hello")[0] == "AR"
    assert receive("MSH|^~\\&|LAB|ACME|CB|RFC|20261120||ORM^O01||P|2.5\r")[::2] == (
        "AR",
        "MSH-10 (message control id) is missing",
    )


def test_a_changed_order_under_a_new_control_id_is_an_ae_naming_the_fields(demo_db: str) -> None:
    receive(orm())
    same = receive(orm("MSG-again"))
    changed = receive(orm("MSG-changed").replace("TSH^Thyroid stimulating hormone", "LIPID^Lipid panel"))
    assert same[0] == "AA"
    assert changed[::2] == ("AE", "ORC-2 (placer order number): the order exists with a different OBR-4")


def test_a_short_msh_gets_a_readable_ack_naming_the_field(demo_db: str) -> None:
    before = counts()
    bare = receive("MSH|^~\\&|")
    short = receive("MSH|^~\\&|A|B|C|D|E|F|ORM^O01|CID1")
    again = receive("MSH|^~\\&|A|B|C|D|E|F|ORM^O01|CID1")
    assert bare == ("AR", "", "MSH-10 (message control id) is missing", "ACK")
    # MSH-11 and MSH-12 are missing, so the ACK cannot copy them: it is written by hand, still naming MSH-10.
    assert short == again == ("AE", "CID1", "PID segment is missing", "ACK")
    assert counts() == tuple(n + (1 if i == 4 else 0) for i, n in enumerate(before))


def test_times_with_impossible_offsets_or_years_are_an_ae_naming_the_field(demo_db: str) -> None:
    before = counts()
    ordered = "L|||20261120093000-0500"
    cases = {
        "offset": orm("T1").replace(ordered, "L|||202611201000+2500"),
        "year 1": orm("T2").replace(ordered, "L|||00010101000000+1400"),
        "year 9999": orm("T3").replace(ordered, "L|||99991231235900-1200"),
        "local year 9999": orm("T4").replace(ordered, "L|||99991231"),
        "expected year 9999": orm("T5", obr_extra="|" * 20 + "^^^^99991231235900-1200"),
        "expected year 1": orm("T6", obr_extra="|" * 20 + "^^^^00010101"),
    }
    answers = {name: receive(text)[::2] for name, text in cases.items()}
    out_of_range = "must be between the years 1900 and 2200"
    assert answers == {
        "offset": ("AE", "OBR-7 (observation date/time) has a UTC offset beyond 14 hours"),
        "year 1": ("AE", f"OBR-7 (observation date/time) {out_of_range}"),
        "year 9999": ("AE", f"OBR-7 (observation date/time) {out_of_range}"),
        "local year 9999": ("AE", f"OBR-7 (observation date/time) {out_of_range}"),
        "expected year 9999": ("AE", f"OBR-27 (quantity/timing) {out_of_range}"),
        "expected year 1": ("AE", f"OBR-27 (quantity/timing) {out_of_range}"),
    }
    assert counts() == tuple(n + (len(cases) if i == 4 else 0) for i, n in enumerate(before))


def test_over_long_fields_and_nul_characters_are_an_ae_naming_the_field(demo_db: str) -> None:
    before = counts()
    pid = "PID|1||RFC-3001^^^RFC^MR||NGUYEN^LINH||19880212|F|||||(617) 555-0123"
    cases = {
        "long name": orm("L1", pid=pid.replace("NGUYEN^LINH", "NGUYEN^" + "L" * 500)),
        "long id": orm("L2", pid=pid.replace("RFC-3001^", "R" * 200 + "^")),
        "long test": orm("L3").replace("Thyroid stimulating hormone", "T" * 201),
        "NUL in name": orm("L4", pid=pid.replace("LINH", "LI\x00NH")),
        "NUL in MSH-9": orm("L5").replace("ORM^O01", "ORM^O01\x00"),
        "NUL in OBX": oru("L6").replace("2.1|mIU/L", "2.1\x00|mIU/L"),
        "NUL in ORU PID-3": oru("L7", pid="PID|1||RFC\x003001"),
        "long ORU PID-3": oru("L8", pid="PID|1||" + "R" * 200),
    }
    answers = {name: receive(text)[::2] for name, text in cases.items()}
    nul_in_control_id = receive(orm("L9\x00"))
    assert answers == {
        "long name": ("AE", "PID-5 (patient name) must be at most 200 characters"),
        "long id": ("AE", "PID-3 (patient id) must be at most 64 characters"),
        "long test": ("AE", "OBR-4 (universal service identifier) must be at most 200 characters"),
        "NUL in name": ("AE", "PID-5 must not contain NUL characters"),
        "NUL in MSH-9": ("AE", "MSH-9 must not contain NUL characters"),
        "NUL in OBX": ("AE", "OBX-5 must not contain NUL characters"),
        "NUL in ORU PID-3": ("AE", "PID-3 must not contain NUL characters"),
        "long ORU PID-3": ("AE", "PID-3 (patient id) must be at most 64 characters"),
    }
    assert nul_in_control_id[::2] == ("AR", "MSH-10 (message control id) must not contain NUL characters")
    assert counts() == tuple(n + (len(cases) if i == 4 else 0) for i, n in enumerate(before))
    with session_scope() as session:
        assert session.scalars(
            select(LabMessage.message_type).where(LabMessage.control_id == "L5")
        ).one() == ("ORM^O01")


def test_an_order_for_a_patient_on_file_with_other_details_is_an_ae_naming_the_field(demo_db: str) -> None:
    before = counts()
    jims_phone = orm("P1", pid="PID|1||||ELSE^SOMEONE||19900101|F|||||(617) 555-0142")
    reused_id = orm(
        "P2", order_id="HL7-P2", pid="PID|1||RFC-1002||NGUYEN^LINH||19880212|F|||||(617) 555-0123"
    )
    same_person = orm("P3", order_id="HL7-P3", pid="PID|1||||WILSON^JAMES||19571102|M|||||(617) 555-0142")
    assert receive(jims_phone)[::2] == (
        "AE",
        "PID-5, PID-7: differs from the patient on file with this phone number",
    )
    assert receive(reused_id)[::2] == ("AE", "PID-7: differs from the patient on file with this external_id")
    assert receive(same_person)[::2] == ("AA", "")
    patients, identities, orders, promises, messages = before
    # Only James Wilson's own order is stored, with an SMS identity on the number on file.
    assert counts() == (patients, identities + 1, orders + 1, promises + 1, messages + 3)
    with session_scope() as session:
        owner = session.scalars(
            select(Patient.external_id)
            .join(LabOrder, LabOrder.patient_id == Patient.id)
            .where(LabOrder.order_id == "HL7-P3")
        ).one()
    assert owner == "RFC-1002"


def test_an_expected_date_without_a_time_means_by_the_end_of_that_day(demo_db: str) -> None:
    from actions.common import by_day_phrase
    from bot.clinic_settings import load_clinic

    # Wednesday 25 Nov 2026 the clinic closes at 18:00 (23:00 UTC); Saturday 28 it does not open.
    for control, order_id, expected in (("MSG-W", "HL7-W", "20261125"), ("MSG-S", "HL7-S", "20261128")):
        assert receive(orm(control, order_id=order_id, obr_extra="|" * 20 + f"^^^^{expected}"))[0] == "AA"
    with session_scope() as session:
        due = dict(
            session.execute(
                select(LabOrder.order_id, LabOrder.expected_by).where(LabOrder.order_id.like("HL7-%"))
            ).all()
        )
        clinic = load_clinic(session=session)
    assert due == {
        "HL7-W": datetime(2026, 11, 25, 23, 0, tzinfo=UTC),
        "HL7-S": datetime(2026, 11, 29, 5, 0, tzinfo=UTC),  # midnight ending Saturday, clinic-local
    }
    wednesday_morning = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)
    with time_machine.travel(wednesday_morning, tick=False):
        phrases = [
            by_day_phrase(clinic=clinic, at=due[key], lang=lang)
            for key in ("HL7-W", "HL7-S")
            for lang in ("en", "es")
        ]
    assert phrases == ["today", "para hoy", "by Saturday", "para el sábado"]
