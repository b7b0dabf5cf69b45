"""Lab orders in: create or update an order, its patient, SMS identity and lab-result promise."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.db import utcnow
from bot.labs.models import LabMessage, LabOrder, LabStatus
from bot.patients.models import Channel, ChannelIdentity, Patient
from bot.patients.service import do_follow_phone_file, get_by_phone, get_or_create_identity
from bot.promises.flows import do_close_promises
from bot.promises.models import Promise, PromiseKind, PromiseStatus
from bot.staff import audit

log = logging.getLogger(__name__)

LAB_SUBJECT = "lab_order"
LAB_REASON_KEY = "lab_not_back"
# Sources whose requests carry no control id of their own: a hash of the request stands in for it.
FINGERPRINTED_SOURCES = frozenset({"rest", "csv"})
ACTOR_KIND = {"rest": "api", "mllp": "hl7", "csv": "cli", "demo": "cli"}

# Forward order of statuses; RESULTED and CANCELLED are both final.
_RANK = {
    LabStatus.ORDERED: 0,
    LabStatus.COLLECTED: 1,
    LabStatus.IN_LAB: 2,
    LabStatus.RESULTED: 3,
    LabStatus.CANCELLED: 3,
}
FINAL_STATUSES = frozenset({LabStatus.RESULTED, LabStatus.CANCELLED})


class LabOrderNotFound(LookupError):
    """No lab order has this order id."""

    def __init__(self, order_id: str) -> None:
        super().__init__(f"no lab order with order_id {order_id!r}")
        self.order_id = order_id


class LabInputError(ValueError):
    """A lab input value is wrong; names the field and the problem."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class LabStatusConflict(LabInputError):
    """A status change would move an order backwards."""


class PatientConflict(LabInputError):
    """The order's patient details match a patient on file in one way and differ in another."""

    def __init__(self, fields: tuple[str, ...], problem: str) -> None:
        super().__init__(fields[0], problem)
        self.fields = fields


@dataclass(frozen=True)
class PatientIn:
    """The patient as the lab system describes them (phone in E.164)."""

    name: str
    phone: str
    date_of_birth: date | None = None
    external_id: str | None = None


class UpsertOutcome(StrEnum):
    """What an upsert did."""

    CREATED = "created"
    UNCHANGED = "unchanged"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class UpsertResult:
    """The order after an upsert, and the fields that differ when it conflicts."""

    outcome: UpsertOutcome
    order: LabOrder
    differences: tuple[str, ...] = ()


def get_order(*, session: Session, order_id: str) -> LabOrder | None:
    """Return the lab order with this order id."""
    return session.scalars(select(LabOrder).where(LabOrder.order_id == order_id)).first()


def lab_promise(*, session: Session, order: LabOrder) -> Promise | None:
    """Return the lab-result promise of an order."""
    return session.scalars(
        select(Promise).where(
            Promise.kind == PromiseKind.LAB_RESULT,
            Promise.subject_type == LAB_SUBJECT,
            Promise.subject_id == order.id,
        )
    ).first()


def order_fingerprint(
    *, order_id: str, patient: PatientIn, test_name: str, ordered_at: datetime, expected_by: datetime
) -> str:
    """Return a SHA-256 of an order request's meaning, to recognise a repeated request."""
    canonical = {
        "order_id": order_id,
        "patient": {
            "name": patient.name,
            "phone": patient.phone,
            "date_of_birth": patient.date_of_birth.isoformat() if patient.date_of_birth else None,
            "external_id": patient.external_id,
        },
        "test_name": test_name,
        "ordered_at": ordered_at.timestamp(),
        "expected_by": expected_by.timestamp(),
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def _find_patient(session: Session, patient: PatientIn) -> Patient | None:
    """Return the patient on file the order is for, None for a new one; refuse a partial match."""
    if patient.external_id:
        found = session.scalars(select(Patient).where(Patient.external_id == patient.external_id)).first()
        if found is not None:
            # The same id on someone born on another day is a wrong id, not a new birthday.
            if _born_apart(found, patient):
                raise PatientConflict(
                    ("patient.date_of_birth",), "differs from the patient on file with this external_id"
                )
            return found
    by_phone = get_by_phone(session=session, phone=patient.phone)
    if by_phone is None:
        return None
    # A phone match with another external id is another person who shares the number.
    if patient.external_id and by_phone.external_id not in (None, patient.external_id):
        return None
    # A phone alone is not an identity: attaching the order needs the name and date of birth to agree.
    differs = tuple(
        field
        for field, differ in (
            ("patient.name", not _same_person_name(by_phone.name, patient.name)),
            ("patient.date_of_birth", _born_apart(by_phone, patient)),
        )
        if differ
    )
    if differs:
        raise PatientConflict(differs, "differs from the patient on file with this phone number")
    return by_phone


def _born_apart(on_file: Patient, patient: PatientIn) -> bool:
    return bool(
        on_file.date_of_birth and patient.date_of_birth and on_file.date_of_birth != patient.date_of_birth
    )


def _same_person_name(a: str, b: str) -> bool:
    """Return whether two names have the same words, whatever their order, case and punctuation."""
    return sorted(re.findall(r"\w+", a.casefold())) == sorted(re.findall(r"\w+", b.casefold()))


def _same_name(a: str, b: str) -> bool:
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def _differences(
    session: Session,
    order: LabOrder,
    *,
    patient: PatientIn,
    test_name: str,
    ordered_at: datetime,
    expected_by: datetime,
) -> tuple[str, ...]:
    differs = []
    on_file = session.get(Patient, order.patient_id)
    assert on_file is not None
    if patient.external_id and on_file.external_id != patient.external_id:
        differs.append("patient.external_id")
    if not _same_name(on_file.name, patient.name):
        differs.append("patient.name")
    if on_file.phone != patient.phone:
        differs.append("patient.phone")
    if patient.date_of_birth and on_file.date_of_birth and on_file.date_of_birth != patient.date_of_birth:
        differs.append("patient.date_of_birth")
    if order.test_name != test_name:
        differs.append("test_name")
    if order.ordered_at != ordered_at:
        differs.append("ordered_at")
    if order.expected_by != expected_by:
        differs.append("expected_by")
    return tuple(differs)


def _patient_sms_identity(session: Session, patient: Patient) -> ChannelIdentity | None:
    """Return the SMS identity of the patient's number, if it is (or was) linked to them."""
    if not patient.phone:
        return None
    identity = get_or_create_identity(session=session, channel=Channel.SMS, address=patient.phone)
    # The number may be new on file, or on file for a second patient now: every link that rests on it follows.
    do_follow_phone_file(session=session, phones=[patient.phone])
    return identity if identity.patient_id == patient.id else None


def _actor(source: str, actor_kind: str | None) -> str:
    return actor_kind or ACTOR_KIND.get(source, source)


def _record_request(
    session: Session, *, source: str, control_id: str, message_type: str, order_id: str
) -> None:
    session.add(
        LabMessage(
            source=source, control_id=control_id, message_type=message_type, ack_code="AA", order_id=order_id
        )
    )


def ensure_lab_promise(*, session: Session, order: LabOrder, identity_id: int | None) -> Promise:
    """Return the order's lab-result promise, creating it in the state the order's status implies."""
    promise = lab_promise(session=session, order=order)
    if promise is not None:
        return promise
    status = PromiseStatus.OPEN
    kept_at = None
    if order.status == LabStatus.RESULTED:
        status, kept_at = PromiseStatus.KEPT, order.resulted_at or utcnow()
    elif order.status == LabStatus.CANCELLED:
        status = PromiseStatus.CANCELLED
    promise = Promise(
        patient_id=order.patient_id,
        identity_id=identity_id,
        kind=PromiseKind.LAB_RESULT,
        subject_type=LAB_SUBJECT,
        subject_id=order.id,
        reason_key=LAB_REASON_KEY,
        due_at=order.expected_by,
        status=status,
        kept_at=kept_at,
    )
    session.add(promise)
    return promise


def do_upsert_order(
    *,
    session: Session,
    order_id: str,
    patient: PatientIn,
    test_name: str,
    ordered_at: datetime,
    expected_by: datetime,
    source: str,
    actor_kind: str | None = None,
    actor_id: str | int | None = None,
) -> UpsertResult:
    """Create a lab order with its patient, SMS identity and promise; a repeat is unchanged or a conflict."""
    if ordered_at.tzinfo is None or expected_by.tzinfo is None:
        raise LabInputError(
            "ordered_at" if ordered_at.tzinfo is None else "expected_by", "must be timezone-aware"
        )
    if expected_by < ordered_at:
        raise LabInputError("expected_by", "must not be earlier than ordered_at")
    ordered_at, expected_by = ordered_at.astimezone(UTC), expected_by.astimezone(UTC)
    fingerprint = order_fingerprint(
        order_id=order_id,
        patient=patient,
        test_name=test_name,
        ordered_at=ordered_at,
        expected_by=expected_by,
    )
    existing = get_order(session=session, order_id=order_id)
    if existing is None:
        found = _find_patient(session, patient)
        patient_created = found is None
        if found is None:
            found = Patient(
                external_id=patient.external_id,
                name=patient.name,
                date_of_birth=patient.date_of_birth,
                phone=patient.phone,
                language="en",
            )
            session.add(found)
            session.flush()
        else:
            # Fill gaps only: the clinic's own record wins over the lab's copy.
            if found.phone is None:
                found.phone = patient.phone
            if found.external_id is None and patient.external_id:
                found.external_id = patient.external_id
            if found.date_of_birth is None:
                found.date_of_birth = patient.date_of_birth
        identity = _patient_sms_identity(session, found)
        order = LabOrder(
            order_id=order_id,
            patient_id=found.id,
            test_name=test_name,
            ordered_at=ordered_at,
            expected_by=expected_by,
            status=LabStatus.ORDERED,
        )
        try:
            with session.begin_nested():
                session.add(order)
        except IntegrityError:
            # Another request created this order first; compare with theirs below.
            existing = get_order(session=session, order_id=order_id)
            assert existing is not None
        else:
            ensure_lab_promise(session=session, order=order, identity_id=identity.id if identity else None)
            if source in FINGERPRINTED_SOURCES:
                _record_request(
                    session,
                    source=source,
                    control_id=fingerprint,
                    message_type="order.create",
                    order_id=order_id,
                )
            audit.record(
                session=session,
                actor_kind=_actor(source, actor_kind),
                actor_id=actor_id,
                action="lab_order.created",
                subject_type=LAB_SUBJECT,
                subject_id=order.id,
                patient_id=found.id,
                details={"source": source, "order_id": order_id, "patient_created": patient_created},
            )
            session.flush()
            log.info("lab order %s created from %s", order.id, source)
            return UpsertResult(outcome=UpsertOutcome.CREATED, order=order)
    if source in FINGERPRINTED_SOURCES:
        seen = session.scalars(
            select(LabMessage.id).where(LabMessage.source == source, LabMessage.control_id == fingerprint)
        ).first()
        if seen is not None:
            return UpsertResult(outcome=UpsertOutcome.UNCHANGED, order=existing)
    differs = _differences(
        session,
        existing,
        patient=patient,
        test_name=test_name,
        ordered_at=ordered_at,
        expected_by=expected_by,
    )
    if differs:
        return UpsertResult(outcome=UpsertOutcome.CONFLICT, order=existing, differences=differs)
    return UpsertResult(outcome=UpsertOutcome.UNCHANGED, order=existing)


def _check_move(current: LabStatus, new: LabStatus) -> None:
    if current in FINAL_STATUSES:
        raise LabStatusConflict("status", f"the order is already {current}; its status can no longer change")
    if _RANK[new] < _RANK[current]:
        raise LabStatusConflict(
            "status", f"cannot move back from {current} to {new}; status only moves forward"
        )


def do_update_order(
    *,
    session: Session,
    order_id: str,
    status: LabStatus | None = None,
    expected_by: datetime | None = None,
    source: str,
    actor_kind: str | None = None,
    actor_id: str | int | None = None,
) -> LabOrder:
    """Move an order's status forward or change its expected time, keeping its promise in step."""
    if status is None and expected_by is None:
        raise LabInputError("status", "give a status or a new expected_by")
    order = get_order(session=session, order_id=order_id)
    if order is None:
        raise LabOrderNotFound(order_id)
    current = LabStatus(order.status)
    new_status = LabStatus(status) if status is not None else None
    if new_status is not None and new_status != current:
        _check_move(current, new_status)
    if expected_by is not None:
        if expected_by.tzinfo is None:
            raise LabInputError("expected_by", "must be timezone-aware")
        if expected_by < order.ordered_at:
            raise LabInputError("expected_by", "must not be earlier than the order's ordered_at")
        expected_by = expected_by.astimezone(UTC)
    changes: dict[str, str] = {}
    now = utcnow()
    promise = lab_promise(session=session, order=order)
    if expected_by is not None and expected_by != order.expected_by:
        order.expected_by = expected_by
        changes["expected_by"] = expected_by.isoformat()
        if promise is not None and promise.status == PromiseStatus.OPEN:
            promise.due_at = expected_by
    if new_status is not None and new_status != current:
        order.status = new_status
        changes["status"] = str(new_status)
        if new_status == LabStatus.RESULTED:
            order.resulted_at = now
        if promise is not None and new_status in FINAL_STATUSES:
            outcome = PromiseStatus.KEPT if new_status == LabStatus.RESULTED else PromiseStatus.CANCELLED
            do_close_promises(session=session, promises=[promise], status=outcome, at=now)
    if not changes:
        return order
    if source in FINGERPRINTED_SOURCES:
        # Each applied update is its own event; there is no retry key to dedupe it by.
        _record_request(session, source=source, control_id=uuid.uuid4().hex, message_type="order.update",
                        order_id=order_id)  # fmt: skip
    audit.record(
        session=session,
        actor_kind=_actor(source, actor_kind),
        actor_id=actor_id,
        action="lab_order.updated",
        subject_type=LAB_SUBJECT,
        subject_id=order.id,
        patient_id=order.patient_id,
        details={"source": source, "order_id": order_id, "from_status": str(current), **changes},
    )
    session.flush()
    log.info("lab order %s updated from %s", order.id, source)
    return order
