"""Rows for promise tests: patients, identities, lab orders and their promises."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, date, datetime, time

from sqlalchemy import delete
from sqlalchemy.orm import Session

from bot.clinic_settings import load_clinic
from bot.labs.models import LabOrder, LabStatus
from bot.patients.models import ChannelIdentity, Patient
from bot.promises.models import Promise, PromiseKind, PromiseStatus, PromiseUpdate

_numbers = itertools.count(1)
VERIFICATION_METHODS = {"sms": "phone_on_file", "webchat": "otp", "telegram": "telegram_contact"}


def local(day: date, hour: int, minute: int = 0) -> datetime:
    """Return a demo-clinic-local wall time (America/New_York) as aware UTC."""
    from bot.db import session_scope

    with session_scope() as session:
        calendar = load_clinic(session=session).calendar
    return calendar.at_local(day, time(hour, minute))


def clear_demo_orders(session: Session) -> None:
    """Remove the demo clinic's lab orders (and any promises) so a test counts only its own rows."""
    session.execute(delete(PromiseUpdate))
    session.execute(delete(Promise))
    session.execute(delete(LabOrder))


@dataclass(frozen=True)
class Made:
    """Ids of what a factory made."""

    patient_id: int
    identity_id: int | None
    promise_id: int
    order_id: int | None
    phone: str


def make_patient(
    session: Session, *, name: str = "Rosa Diaz", language: str = "en", phone: str | None = None
) -> Patient:
    number = next(_numbers)
    patient = Patient(
        name=name,
        phone=phone or f"+1617555{3000 + number:04d}",
        language=language,
        external_id=f"T-{number}",
        date_of_birth=date(1980, 1, 1),
    )
    session.add(patient)
    session.flush()
    return patient


def make_identity(
    session: Session,
    patient: Patient | None,
    *,
    channel: str = "sms",
    address: str | None = None,
    verified: bool = True,
    opted_out: bool = False,
    last_seen_at: datetime | None = None,
    verified_at: datetime | None = None,
) -> ChannelIdentity:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    identity = ChannelIdentity(
        channel=channel,
        address=address
        or (patient.phone if patient is not None and channel == "sms" else f"addr-{next(_numbers)}"),
        patient_id=patient.id if patient is not None else None,
        verified_at=(verified_at or now) if verified and patient is not None else None,
        # Each channel's own way of verifying: the number on file, a code, the Telegram account's phone.
        verification_method=VERIFICATION_METHODS[channel] if verified and patient is not None else None,
        opted_out_at=now if opted_out else None,
        last_seen_at=last_seen_at,
    )
    session.add(identity)
    session.flush()
    return identity


def make_lab_promise(
    session: Session,
    *,
    due_at: datetime,
    language: str = "en",
    name: str = "Rosa Diaz",
    opted_out: bool = False,
    identity: bool = True,
    status: LabStatus = LabStatus.IN_LAB,
) -> Made:
    """A patient with an SMS identity, a lab order due at due_at and its open lab_result promise."""
    patient = make_patient(session, name=name, language=language)
    sms = make_identity(session, patient, opted_out=opted_out) if identity else None
    order = LabOrder(
        order_id=f"ORD-{next(_numbers)}",
        patient_id=patient.id,
        test_name="Hemoglobin A1c",
        ordered_at=datetime(2026, 1, 1, tzinfo=UTC),
        expected_by=due_at,
        status=status,
    )
    session.add(order)
    session.flush()
    promise = Promise(
        patient_id=patient.id,
        identity_id=sms.id if sms is not None else None,
        kind=PromiseKind.LAB_RESULT,
        subject_type="lab_order",
        subject_id=order.id,
        reason_key="lab_not_back",
        due_at=due_at,
        status=PromiseStatus.OPEN,
    )
    session.add(promise)
    session.flush()
    return Made(patient.id, sms.id if sms else None, promise.id, order.id, patient.phone or "")


def make_promise(
    session: Session,
    *,
    due_at: datetime,
    reason_key: str,
    kind: PromiseKind,
    patient: Patient | None,
    identity: ChannelIdentity | None,
    subject_type: str = "handoff",
    subject_id: int | None = None,
) -> int:
    promise = Promise(
        patient_id=patient.id if patient is not None else None,
        identity_id=identity.id if identity is not None else None,
        kind=kind,
        subject_type=subject_type,
        subject_id=subject_id if subject_id is not None else next(_numbers),
        reason_key=reason_key,
        due_at=due_at,
        status=PromiseStatus.OPEN,
    )
    session.add(promise)
    session.flush()
    return promise.id
