"""Links that rest on a phone number follow the patient file as lab intake and erasure change it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import select, update

from bot.channels.linking import do_link_by_contact
from bot.conversations.models import Conversation
from bot.db import session_scope
from bot.labs.flows import PatientIn, do_upsert_order
from bot.patients.models import Channel, ChannelIdentity, Patient
from bot.patients.service import get_identity, get_or_create_identity, verified_patient
from bot.privacy import do_erase_patient
from bot.staff.models import AuditEvent

JIM = "+16175550142"  # demo patient with a late and a resulted lab order
STRANGER = "+16175550999"
TELEGRAM_CHAT = "8080801"
# A Wednesday afternoon in clinic hours (America/New_York, 14:00 local).
OPEN_HOURS = datetime(2026, 11, 18, 19, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _clinic_open():  # type: ignore[no-untyped-def]
    with time_machine.travel(OPEN_HOURS, tick=False):
        yield


def send(runtime, text: str, *, address: str):  # type: ignore[no-untyped-def]
    with session_scope() as session:
        return runtime.engine.receive(session=session, channel="sms", address=address, text=text,
                                      provider_message_id=uuid.uuid4().hex)  # fmt: skip


def file_order(*, name: str, phone: str, external_id: str, order_id: str) -> int:
    """Run lab intake for an order of a patient; return the patient's id."""
    with session_scope() as session:
        result = do_upsert_order(session=session, order_id=order_id, test_name="Thyroid panel",
                                patient=PatientIn(name=name, phone=phone, external_id=external_id),
                                ordered_at=OPEN_HOURS - timedelta(days=1), expected_by=OPEN_HOURS + timedelta(days=2),
                                source="rest")  # fmt: skip
        return result.order.patient_id


def patient_by_name(name: str) -> int:
    with session_scope() as session:
        return session.scalars(select(Patient.id).where(Patient.name == name)).one()


def sms(address: str) -> ChannelIdentity:
    with session_scope() as session:
        identity = get_identity(session=session, channel="sms", address=address)
        assert identity is not None
        return identity


def telegram() -> ChannelIdentity:
    with session_scope() as session:
        identity = get_identity(session=session, channel="telegram", address=TELEGRAM_CHAT)
        assert identity is not None
        return identity


def trail(action: str) -> list[dict[str, object]]:
    with session_scope() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id))
        return [{"actor": row.actor_kind, **row.details} for row in rows]


def link_jims_telegram() -> None:
    with session_scope() as session:
        identity = get_or_create_identity(session=session, channel=Channel.TELEGRAM, address=TELEGRAM_CHAT)
        session.flush()
        assert do_link_by_contact(session=session, identity=identity, phone=JIM.lstrip("+"), own=True,
                                  update_id=7) == "utter_telegram_linked"  # fmt: skip


def test_a_stranger_whose_number_the_lab_files_is_verified_from_then_on(runtime) -> None:
    first = send(runtime, "are my lab results back yet", address=STRANGER)
    assert [r.response_key for r in first.replies] == ["utter_lab_results_unverified"]
    assert sms(STRANGER).verified_at is None

    file_order(name="Rosa Diaz", phone=STRANGER, external_id="RFC-7001", order_id="ORD-ROSA")
    rosa = patient_by_name("Rosa Diaz")
    identity = sms(STRANGER)
    assert (identity.patient_id, identity.verification_method) == (rosa, "phone_on_file")
    assert identity.verified_at is not None
    assert trail("identity.linked") == [{"actor": "system", "patient_id": rosa, "method": "phone_on_file",
                                         "previous_patient_id": None, "reason": "phone_on_file"}]  # fmt: skip
    with session_scope() as session:
        # Staff see her open conversation under her name from now on.
        assert session.get(Conversation, first.conversation_id).patient_id == rosa
    # Her own status now, still without the test's name.
    again = send(runtime, "are my lab results back yet", address=STRANGER)
    assert [r.response_key for r in again.replies] == ["utter_lab_status_pending"]
    assert "expected by Friday" in again.replies[0].text and "thyroid" not in again.replies[0].text.lower()


def test_a_family_line_is_withdrawn_when_filed_and_restored_when_it_is_one_patients_again(runtime) -> None:
    send(runtime, "hello there", address=JIM)
    jim = sms(JIM).patient_id
    assert sms(JIM).verified_at is not None

    # Intake files Ann under Jim's number: the link ends at once, before anyone texts or any sweep runs,
    # so the staff queue (which names only verified identities) stops naming Jim for it.
    ann = file_order(name="Ann Wilson", phone=JIM, external_id="RFC-9001", order_id="ORD-ANN")
    assert ann != jim
    identity = sms(JIM)
    assert (identity.verified_at, identity.patient_id) == (None, jim)
    assert trail("identity.link_withdrawn") == [{"actor": "system", "patient_id": jim, "method": "phone_on_file",
                                                 "reason": "phone_shared"}]  # fmt: skip

    # Ann's record is erased: the number is Jim's alone again, and his link comes back, audited.
    with session_scope() as session:
        do_erase_patient(session=session, patient_id=ann, actor_kind="staff", actor_id="1")
    identity = sms(JIM)
    assert identity.patient_id == jim and identity.verified_at is not None
    assert trail("identity.linked")[-1] == {"actor": "system", "patient_id": jim, "method": "phone_on_file",
                                            "previous_patient_id": jim, "reason": "phone_on_file"}  # fmt: skip
    assert "Jim" in " ".join(r.text for r in send(runtime, "hello there", address=JIM).replies)


def test_a_number_that_moves_to_another_patient_links_to_them(runtime) -> None:
    send(runtime, "hello there", address=JIM)
    jim = sms(JIM).patient_id
    with session_scope() as session:
        # Jim's number changes on the clinic's file (a new phone); the old one is then filed for Ann.
        session.execute(update(Patient).where(Patient.id == jim).values(phone="+16175550143"))
    ann = file_order(name="Ann Wilson", phone=JIM, external_id="RFC-9001", order_id="ORD-ANN")
    identity = sms(JIM)
    assert (identity.patient_id, identity.verification_method) == (ann, "phone_on_file")
    assert trail("identity.linked")[-1]["previous_patient_id"] == jim
    assert "Ann" in " ".join(r.text for r in send(runtime, "hello there", address=JIM).replies)


def test_a_telegram_chat_linked_by_its_number_is_withdrawn_with_it_and_not_relinked(runtime) -> None:
    link_jims_telegram()
    jim = telegram().patient_id
    assert telegram().linked_phone == JIM

    ann = file_order(name="Ann Wilson", phone=JIM, external_id="RFC-9001", order_id="ORD-ANN")
    chat = telegram()
    assert (chat.verified_at, chat.patient_id) == (None, jim)
    assert {"actor": "system", "patient_id": jim, "method": "telegram_contact",
            "reason": "phone_shared"} in trail("identity.link_withdrawn")  # fmt: skip

    with session_scope() as session:
        do_erase_patient(session=session, patient_id=ann, actor_kind="staff", actor_id="1")
    # The SMS number is Jim's alone again; the chat must share its number again to be trusted.
    assert telegram().verified_at is None


def test_a_telegram_link_is_checked_again_before_disclosing_even_if_the_file_changed_behind_intake(runtime) -> None:
    link_jims_telegram()
    with session_scope() as session:
        # A second record with the number, written some other way than intake (an import, a migration).
        session.add(Patient(name="Ann Wilson", phone=JIM))
    with session_scope() as session:
        chat = get_identity(session=session, channel="telegram", address=TELEGRAM_CHAT)
        assert chat is not None and chat.is_verified
        assert verified_patient(session=session, identity=chat) is None
    assert telegram().verified_at is None
    assert [d["method"] for d in trail("identity.link_withdrawn")] == ["telegram_contact"]


def test_erasure_forgets_the_number_a_telegram_chat_was_linked_by(runtime) -> None:
    link_jims_telegram()
    chat = telegram()
    with session_scope() as session:
        do_erase_patient(session=session, patient_id=chat.patient_id, actor_kind="staff", actor_id="1")
    with session_scope() as session:
        erased = session.get(ChannelIdentity, chat.id)
        assert (erased.address, erased.linked_phone) == (f"erased-{chat.id}", None)
