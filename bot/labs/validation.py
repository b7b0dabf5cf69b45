"""Check lab order fields from the REST API and CSV files; every problem names its field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime

import phonenumbers

from bot.labs.flows import LabInputError, PatientIn

ORDER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:#-]{0,63}")
E164 = re.compile(r"\+[1-9][0-9]{6,14}")
ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
MAX_NAME = 200
MAX_EXTERNAL_ID = 64
EARLIEST_BIRTH = date(1900, 1, 1)
# Lab times outside these years are typos or sentinels; near year 1 or 9999 a UTC offset overflows.
EARLIEST_INSTANT = datetime(1900, 1, 1, tzinfo=UTC)
LATEST_INSTANT = datetime(2201, 1, 1, tzinfo=UTC)
INSTANT_RANGE = "must be between the years 1900 and 2200"
# PostgreSQL cannot store NUL in text, and a lone surrogate cannot be encoded at all.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True)
class OrderIn:
    """A validated lab order, ready for do_upsert_order."""

    order_id: str
    patient: PatientIn
    test_name: str
    ordered_at: datetime
    expected_by: datetime


def check_order_id(value: str) -> str:
    """Return the order id, or raise ValueError naming the problem."""
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    if not ORDER_ID.fullmatch(value):
        raise ValueError("must be 1-64 letters, digits or . _ : # - (starting with a letter or digit)")
    return value


def check_storable(value: str) -> str:
    """Return the text, or raise ValueError when it holds a NUL or a lone surrogate."""
    found = UNSTORABLE.search(value)
    if found is None:
        return value
    if found.group() == "\x00":
        raise ValueError("must not contain NUL characters")
    raise ValueError("must be valid Unicode text (it holds an unpaired surrogate)")


def check_text(value: str, *, limit: int = MAX_NAME) -> str:
    """Return trimmed text, or raise ValueError when it is empty, too long or unstorable."""
    value = " ".join(check_storable(value).split())
    if not value:
        raise ValueError("must not be empty")
    if len(value) > limit:
        raise ValueError(f"must be at most {limit} characters")
    return value


def check_external_id(value: str | None) -> str | None:
    """Return the external id, None when blank."""
    if value is None or not value.strip():
        return None
    value = check_storable(value.strip())
    if len(value) > MAX_EXTERNAL_ID:
        raise ValueError(f"must be at most {MAX_EXTERNAL_ID} characters")
    return value


def check_phone(value: str) -> str:
    """Return an E.164 phone number, or raise ValueError."""
    value = value.strip()
    if not E164.fullmatch(value):
        raise ValueError("must be an E.164 phone number such as +16175550101")
    try:
        parsed = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise ValueError("must be an E.164 phone number such as +16175550101") from None
    if not phonenumbers.is_valid_number(parsed):
        raise ValueError("is not a valid phone number")
    return value


def check_birth_date(value: str, *, today: date) -> date:
    """Return a date of birth written YYYY-MM-DD, or raise ValueError."""
    value = value.strip()
    if not ISO_DATE.fullmatch(value):
        raise ValueError("must be a date written YYYY-MM-DD")
    try:
        parsed = date.fromisoformat(value)
    except ValueError:
        raise ValueError("is not a real calendar date") from None
    if parsed > today:
        raise ValueError("must not be in the future")
    if parsed < EARLIEST_BIRTH:
        raise ValueError("must not be before 1900-01-01")
    return parsed


def check_in_range(value: datetime) -> datetime:
    """Return an aware date-time in UTC, or raise ValueError when it is outside the years 1900-2200."""
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise ValueError(INSTANT_RANGE) from None
    if not EARLIEST_INSTANT <= value < LATEST_INSTANT:
        raise ValueError(INSTANT_RANGE)
    return value


def check_instant(value: str) -> datetime:
    """Return an ISO 8601 date-time with a UTC offset, converted to UTC, or raise ValueError."""
    value = value.strip()
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("must be an ISO 8601 date-time such as 2026-11-25T12:00:00-05:00") from None
    if "T" not in value.upper() and " " not in value:
        raise ValueError("must include a time, e.g. 2026-11-25T12:00:00-05:00")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError("must include a UTC offset or Z, e.g. 2026-11-25T12:00:00-05:00")
    return check_in_range(parsed)


def check_order_row(
    values: Mapping[str, str | None], *, today: date
) -> tuple[OrderIn | None, list[LabInputError]]:
    """Check one flat order record (CSV columns); return the order or every problem found."""
    problems: list[LabInputError] = []
    checked: dict[str, object] = {}

    def run(field: str, check, *args, **kwargs):  # type: ignore[no-untyped-def]
        raw = values.get(field)
        if raw is None and field != "external_id":
            problems.append(LabInputError(field, "is required"))
            return
        try:
            checked[field] = check(raw, *args, **kwargs)
        except ValueError as error:
            problems.append(LabInputError(field, str(error)))

    run("order_id", check_order_id)
    run("external_id", check_external_id)
    run("name", check_text)
    run("date_of_birth", check_birth_date, today=today)
    run("phone", check_phone)
    run("test_name", check_text)
    run("ordered_at", check_instant)
    run("expected_by", check_instant)
    ordered_at, expected_by = checked.get("ordered_at"), checked.get("expected_by")
    if isinstance(ordered_at, datetime) and isinstance(expected_by, datetime) and expected_by < ordered_at:
        problems.append(LabInputError("expected_by", "must not be earlier than ordered_at"))
    if problems:
        return None, problems
    order = OrderIn(
        order_id=checked["order_id"],  # type: ignore[arg-type]
        patient=PatientIn(
            name=checked["name"],  # type: ignore[arg-type]
            phone=checked["phone"],  # type: ignore[arg-type]
            date_of_birth=checked["date_of_birth"],  # type: ignore[arg-type]
            external_id=checked["external_id"],  # type: ignore[arg-type]
        ),
        test_name=checked["test_name"],  # type: ignore[arg-type]
        ordered_at=ordered_at,  # type: ignore[arg-type]
        expected_by=expected_by,  # type: ignore[arg-type]
    )
    return order, problems
