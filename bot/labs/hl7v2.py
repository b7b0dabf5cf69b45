"""HL7 v2 lab messages: ORM^O01 (new or cancelled orders) and ORU^R01 (results) in, ACK out.

Field map (1-based HL7 positions):
  MSH-9 message type, MSH-10 control id (retries reuse it; we dedupe on it).
  ORM^O01: ORC-1 order control (NW new, CA cancel), ORC-2/OBR-2 placer order number = order_id,
    PID-3 patient id (the clinic's external id), PID-5 name (family^given), PID-7 date of birth,
    PID-13 phone, OBR-4 test (text, else code), OBR-7 ordered time (ORC-9 as a fallback),
    OBR-27 quantity/timing: its end (component 5, else start, component 4) is the expected time;
    a date without a time means by the end of that day: the clinic's closing time, or midnight
    when it does not open that day.
    Without OBR-27 the result is expected CLINICBOT_LAB_TURNAROUND_DAYS working days after the
    order (clinic calendar: weekly hours, public holidays, closures), at the same local clock time.
  ORU^R01: OBR-2 order_id (ORC-2 as a fallback), OBR-25 result status: F or C final -> resulted,
    P/A/R/I preliminary or in progress -> in_lab, X -> cancelled. PID-3, when sent, must be the
    order's patient.
  Times without an offset are read in the clinic's time zone.
ACK: AA stored; AE with a reason naming the segment and field (never patient data), values checked
as the REST API checks them (lengths, NUL); AR for an unsupported message type or an unusable MSH-10.
An MSH too short for an ACK to copy its fields gets one written by hand, MSA-2 still repeating
MSH-10. The ACK's code and reason are stored with MSH-10 so a retry of the same message gets the
same answer and changes nothing.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import hl7
from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.clinic_settings import load_clinic
from bot.config import get_settings
from bot.db import utcnow
from bot.labs.flows import (
    LabInputError,
    LabOrderNotFound,
    PatientConflict,
    PatientIn,
    UpsertOutcome,
    do_update_order,
    do_upsert_order,
    get_order,
)
from bot.labs.models import LabMessage, LabStatus
from bot.labs.validation import UNSTORABLE, check_external_id, check_in_range, check_storable, check_text
from bot.patients.models import Patient
from bot.patients.service import InvalidPhoneError, normalize_phone

log = logging.getLogger(__name__)

SOURCE = "mllp"
SUPPORTED = ("ORM^O01", "ORU^R01")
RESULT_STATUS = {
    "F": LabStatus.RESULTED,
    "C": LabStatus.RESULTED,
    "P": LabStatus.IN_LAB,
    "A": LabStatus.IN_LAB,
    "R": LabStatus.IN_LAB,
    "I": LabStatus.IN_LAB,
    "X": LabStatus.CANCELLED,
}
# Where each lab-order field comes from, to name it in an AE.
FIELD_SOURCE = {
    "order_id": "OBR-2",
    "patient": "PID-3",
    "patient.external_id": "PID-3",
    "patient.name": "PID-5",
    "patient.date_of_birth": "PID-7",
    "patient.phone": "PID-13",
    "test_name": "OBR-4",
    "ordered_at": "OBR-7",
    "expected_by": "OBR-27",
    "status": "OBR-25",
}
TS = re.compile(r"(\d{4})(\d{2})(\d{2})(?:(\d{2})(\d{2})?(\d{2})?(?:\.\d{1,4})?)?([+-]\d{4})?")
MAX_CONTROL_ID = 64
# Real UTC offsets run from -12:00 to +14:00; anything beyond 14 hours is a typo.
MAX_OFFSET = timedelta(hours=14)
# How much of a sender's value an ACK reason repeats (an unsupported code, say).
SHOWN_CHARS = 20


class Rejected(Exception):
    """The message cannot be applied; carries the ACK code and a reason naming the segment and field."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Hl7Result:
    """The ACK to send, and what the message was."""

    code: str
    reason: str | None
    ack: str
    control_id: str | None
    duplicate: bool = False


def normalize_segments(text: str) -> str:
    """Return the message with CR segment separators (senders use CR, LF or CRLF)."""
    return text.replace("\r\n", "\r").replace("\n", "\r").strip("\r \t\x00")


def _get(segment: Any, field: int, component: int = 1, repetition: int = 1) -> str:
    try:
        return str(segment.extract_field(1, field, repetition, component, 1)).strip()
    except (IndexError, KeyError):
        return ""


def _segments(message: Any, name: str) -> list[Any]:
    try:
        return list(message.segments(name))
    except KeyError:
        return []


def _shown(value: str) -> str:
    return value if len(value) <= SHOWN_CHARS else value[:SHOWN_CHARS] + "..."


def _checked(check: Any, value: str, *, where: str) -> Any:
    """Run a REST API field check on an HL7 value; its problem becomes an AE naming the field."""
    try:
        return check(value)
    except ValueError as error:
        raise Rejected("AE", f"{where} {error}") from None


def _unstorable_field(text: str) -> tuple[str, str] | None:
    """Return where (SEG-n) the first NUL or lone surrogate is, and the problem, if the message holds one."""
    if UNSTORABLE.search(text) is None:
        return None
    separator = text[3] if len(text) > 3 else "|"
    for segment in text.split("\r"):
        if UNSTORABLE.search(segment) is None:
            continue
        fields = segment.split(separator)
        name = fields[0]
        for number, value in enumerate(fields):
            try:
                check_storable(value)
            except ValueError as error:
                if number == 0:
                    return "a segment name", str(error)
                # MSH-1 is the field separator itself, so MSH's fields are numbered one higher.
                return f"{name}-{number + 1 if name == 'MSH' else number}", str(error)
    return "the message", "must not contain NUL characters"


def _one(message: Any, name: str) -> Any:
    found = _segments(message, name)
    if not found:
        raise Rejected("AE", f"{name} segment is missing")
    return found[0]


def parse_ts(value: str, *, where: str, tz: Any) -> datetime:
    """Parse an HL7 TS/DTM value; without an offset it is clinic-local time."""
    match = TS.fullmatch(value)
    if match is None:
        raise Rejected("AE", f"{where} is not an HL7 date/time (YYYYMMDD[HHMM[SS]][+/-ZZZZ])")
    year, month, day, hour, minute, second, offset = match.groups()
    try:
        naive = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0))  # noqa: DTZ001
    except ValueError:
        raise Rejected("AE", f"{where} is not a real date/time") from None
    if offset:
        shift = timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
        if shift > MAX_OFFSET or int(offset[3:5]) > 59:
            raise Rejected("AE", f"{where} has a UTC offset beyond 14 hours")
        tz = timezone(shift if offset[0] == "+" else -shift)
    return _checked(check_in_range, naive.replace(tzinfo=tz), where=where)


def parse_expected(value: str, *, where: str, calendar: Any) -> datetime:
    """Parse an expected-by TS/DTM; a date alone means the end of that day (closing time), not its start."""
    at = parse_ts(value, where=where, tz=calendar.tz)
    match = TS.fullmatch(value)
    assert match is not None  # parse_ts accepted it
    if match.group(4) is not None:
        return at
    # "Results by Wednesday" read as Wednesday 00:00 made the order late all Wednesday: the patient asking
    # that morning heard "taking longer than expected", and staff saw it among the late ones.
    day = date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    intervals = calendar.opening_intervals(day)
    end = intervals[-1][1] if intervals else calendar.at_local(day + timedelta(days=1), time(0, 0))
    return _checked(check_in_range, end, where=where)


def _birth_date(value: str) -> date | None:
    if not value:
        return None
    match = TS.fullmatch(value)
    try:
        if match is None:
            raise ValueError
        born = date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        raise Rejected("AE", "PID-7 (date of birth) is not a valid date (YYYYMMDD)") from None
    if born > utcnow().date() or born.year < 1900:
        raise Rejected("AE", "PID-7 (date of birth) is out of range")
    return born


def _phone(pid: Any) -> str:
    # XTN: component 1 is the formatted number; v2.3+ senders split it into 5 country, 6 area, 7 local.
    raw = _get(pid, 13, 1) or _get(pid, 13, 12)
    if not raw:
        country, area, local = _get(pid, 13, 5), _get(pid, 13, 6), _get(pid, 13, 7)
        if area and local:
            raw = f"+{country or '1'}{area}{local}"
    if not raw:
        raise Rejected("AE", "PID-13 (patient phone) is missing")
    try:
        return normalize_phone(raw)
    except InvalidPhoneError:
        raise Rejected("AE", "PID-13 (patient phone) is not a valid phone number") from None


def _name(pid: Any) -> str:
    family, given = _get(pid, 5, 1), _get(pid, 5, 2)
    name = " ".join(part for part in (given, family) if part)
    if not name:
        raise Rejected("AE", "PID-5 (patient name) is missing")
    name = _checked(check_text, name, where="PID-5 (patient name)")
    # Many lab systems send names in capitals; store them the way people write them.
    return name.title() if name.isupper() else name


def _external_id(pid: Any) -> str | None:
    return _checked(check_external_id, _get(pid, 3), where="PID-3 (patient id)")


def _placer_id(obr: Any, orc: Any | None, *, first: str) -> str:
    order_id = _get(obr, 2) or (_get(orc, 2) if orc is not None else "")
    if not order_id:
        raise Rejected("AE", f"{first} (placer order number) is missing")
    if len(order_id) > 64:
        raise Rejected("AE", f"{first} (placer order number) is longer than 64 characters")
    return order_id


def _plain(value: str) -> str:
    """Return text without HL7 separators or escapes (for an ACK written by hand)."""
    value = value.replace("|", "/").replace("^", " ").replace("&", "+").replace("~", "-").replace("\\", "/")
    return "".join(char for char in value if char.isprintable())


def hand_built_ack(code: str, reason: str | None, *, control_id: str | None = None) -> str:
    """Return an ACK written without the sender's MSH (missing or unusable); MSA-2 repeats its MSH-10 if known."""
    stamp = utcnow().strftime("%Y%m%d%H%M%S")
    text = f"MSH|^~\\&|CLINICBOT||||{stamp}||ACK|{uuid.uuid4().hex[:20]}|P|2.5\r"
    text += f"MSA|{code}|{_plain(control_id or '')[:MAX_CONTROL_ID]}"
    if reason:
        text += "|" + _plain(reason)
    return text + "\r"


def _ack(message: Any | None, code: str, reason: str | None, *, control_id: str | None = None) -> str:
    if message is None:
        return hand_built_ack(code, reason, control_id=control_id)
    try:
        ack = message.create_ack(ack_code=code, message_id=uuid.uuid4().hex[:20])
        if reason:
            ack.segment("MSA").assign_field(ack.escape(reason), 3)
        text = str(ack)
    except Exception:  # an MSH short of fields the ACK repeats (MSH-9.2, MSH-11, MSH-12) fails in many ways
        return hand_built_ack(code, reason, control_id=control_id)
    return text if text.endswith("\r") else text + "\r"


def framing_nak(head: str, reason: str) -> str:
    """Return the AR for bytes that were not a well-formed MLLP frame; MSA-2 names its MSH-10 if it has one."""
    first = normalize_segments(head).split("\r", 1)[0]
    msh, control_id = None, ""
    if first.startswith("MSH"):
        try:
            msh = hl7.parse(first)
            control_id = _get(msh.segment("MSH"), 10)
        except Exception:  # the parser raises many kinds on malformed input
            msh = None
    if msh is None or not control_id or len(control_id) > MAX_CONTROL_ID or UNSTORABLE.search(control_id):
        return hand_built_ack("AR", reason)
    return _ack(msh, "AR", reason, control_id=control_id)


def _upsert_from_orm(session: Session, message: Any) -> str:
    pid = _one(message, "PID")
    orcs, obrs = _segments(message, "ORC"), _segments(message, "OBR")
    if not orcs:
        raise Rejected("AE", "ORC segment is missing")
    if not obrs:
        raise Rejected("AE", "OBR segment is missing")
    clinic = load_clinic(session=session)
    first_id = ""
    for index, obr in enumerate(obrs):
        orc = orcs[index] if index < len(orcs) else orcs[0]
        control = _get(orc, 1).upper()
        order_id = _placer_id(obr, orc, first="ORC-2/OBR-2")
        first_id = first_id or order_id
        if control == "CA":
            try:
                do_update_order(session=session, order_id=order_id, status=LabStatus.CANCELLED, source=SOURCE)
            except LabOrderNotFound:
                raise Rejected("AE", "ORC-2 (placer order number): unknown order") from None
            continue
        if control != "NW":
            raise Rejected("AE", f"ORC-1 (order control) must be NW or CA, not {_shown(control) or 'empty'}")
        patient = PatientIn(
            name=_name(pid),
            phone=_phone(pid),
            date_of_birth=_birth_date(_get(pid, 7)),
            external_id=_external_id(pid),
        )
        test_name = _get(obr, 4, 2) or _get(obr, 4, 1)
        if not test_name:
            raise Rejected("AE", "OBR-4 (universal service identifier) is missing")
        test_name = _checked(check_text, test_name, where="OBR-4 (universal service identifier)")
        ordered_raw = _get(obr, 7) or _get(orc, 9)
        if not ordered_raw:
            raise Rejected("AE", "OBR-7 (observation date/time) is missing")
        ordered_at = parse_ts(ordered_raw, where="OBR-7 (observation date/time)", tz=clinic.calendar.tz)
        expected_raw = _get(obr, 27, 5) or _get(obr, 27, 4)
        if expected_raw:
            expected_by = parse_expected(
                expected_raw, where="OBR-27 (quantity/timing)", calendar=clinic.calendar
            )
        else:
            expected_by = default_expected_by(ordered_at, calendar=clinic.calendar)
        result = do_upsert_order(session=session, order_id=order_id, patient=patient,
                                 test_name=test_name, ordered_at=ordered_at, expected_by=expected_by,
                                 source=SOURCE)  # fmt: skip
        if result.outcome == UpsertOutcome.CONFLICT:
            fields = ", ".join(FIELD_SOURCE.get(field, field) for field in result.differences)
            raise Rejected("AE", f"ORC-2 (placer order number): the order exists with a different {fields}")
    return first_id


def default_expected_by(ordered_at: datetime, *, calendar: Any) -> datetime:
    """Return the expected result time: the configured working days after the order, same local time."""
    local = calendar.local(ordered_at)
    day = local.date()
    for _ in range(get_settings().lab_turnaround_days):
        day = calendar.next_working_day(day)
    return calendar.at_local(day, local.time())


def _result_from_oru(session: Session, message: Any) -> str:
    obrs = _segments(message, "OBR")
    if not obrs:
        raise Rejected("AE", "OBR segment is missing")
    orcs = _segments(message, "ORC")
    pids = _segments(message, "PID")
    external_id = _external_id(pids[0]) if pids else None
    first_id = ""
    for index, obr in enumerate(obrs):
        order_id = _placer_id(obr, orcs[index] if index < len(orcs) else None, first="OBR-2")
        first_id = first_id or order_id
        order = get_order(session=session, order_id=order_id)
        if order is None:
            raise Rejected("AE", "OBR-2 (placer order number): unknown order")
        if external_id:
            patient = session.scalars(select(Patient).where(Patient.external_id == external_id)).first()
            if patient is None:
                raise Rejected("AE", "PID-3 (patient id): unknown patient")
            if patient.id != order.patient_id:
                raise Rejected("AE", "PID-3 (patient id) is not the patient of the order in OBR-2")
        code = _get(obr, 25).upper()
        if not code:
            raise Rejected("AE", "OBR-25 (result status) is missing")
        if code not in RESULT_STATUS:
            raise Rejected(
                "AE", f"OBR-25 (result status) {_shown(code)} is not supported (F, C, P, A, R, I, X)"
            )
        do_update_order(session=session, order_id=order_id, status=RESULT_STATUS[code], source=SOURCE)
    return first_id


def do_receive_hl7(*, session: Session, text: str) -> Hl7Result:
    """Apply one HL7 message and store its outcome under MSH-10; a repeat gets the first answer again."""
    text = normalize_segments(text)
    if not text.startswith("MSH"):
        return Hl7Result(code="AR", reason="MSH segment is missing", ack=_ack(None, "AR", "MSH segment is missing"),
                         control_id=None)  # fmt: skip
    try:
        message = hl7.parse(text)
        msh = message.segment("MSH")
    except Exception:  # the parser raises many kinds on malformed input
        reason = "MSH segment is not readable"
        return Hl7Result(code="AR", reason=reason, ack=_ack(None, "AR", reason), control_id=None)
    control_id = _get(msh, 10)
    reason = None
    if not control_id:
        reason = "MSH-10 (message control id) is missing"
    elif len(control_id) > MAX_CONTROL_ID:
        reason = "MSH-10 is longer than 64 characters"
    else:
        try:
            check_storable(control_id)
        except ValueError as error:
            reason = f"MSH-10 (message control id) {error}"
    if reason is not None:
        return Hl7Result(code="AR", reason=reason, ack=_ack(message, "AR", reason), control_id=None)
    seen = session.scalars(
        select(LabMessage).where(LabMessage.source == SOURCE, LabMessage.control_id == control_id)
    ).first()
    if seen is not None:
        log.info("hl7 message %s repeated; answering %s again", seen.id, seen.ack_code)
        return Hl7Result(code=seen.ack_code, reason=seen.error,
                         ack=_ack(message, seen.ack_code, seen.error, control_id=control_id),
                         control_id=control_id, duplicate=True)  # fmt: skip
    message_type = f"{_get(msh, 9, 1)}^{_get(msh, 9, 2)}".upper()
    code, reason, order_id = "AA", None, None
    try:
        with session.begin_nested():
            unstorable = _unstorable_field(text)
            if unstorable is not None:
                raise Rejected("AE", " ".join(unstorable))
            if message_type == "ORM^O01":
                order_id = _upsert_from_orm(session, message)
            elif message_type == "ORU^R01":
                order_id = _result_from_oru(session, message)
            else:
                raise Rejected(
                    "AR",
                    f"MSH-9 message type {_shown(message_type)} is not supported; send ORM^O01 or ORU^R01",
                )
    except Rejected as rejected:
        code, reason = rejected.code, rejected.reason
    except PatientConflict as conflict:
        code, reason = (
            "AE",
            f"{', '.join(FIELD_SOURCE[field] for field in conflict.fields)}: {conflict.problem}",
        )
    except LabInputError as error:
        code, reason = "AE", f"{FIELD_SOURCE.get(error.field, error.field)}: {error.problem}"
    stored_type = UNSTORABLE.sub("", message_type)[:16]
    row = LabMessage(source=SOURCE, control_id=control_id, message_type=stored_type, ack_code=code,
                     error=reason, order_id=order_id)  # fmt: skip
    session.add(row)
    session.flush()
    log.info("hl7 message %s %s stored: %s", row.id, stored_type, code)
    return Hl7Result(code=code, reason=reason, ack=_ack(message, code, reason, control_id=control_id),
                     control_id=control_id)  # fmt: skip
