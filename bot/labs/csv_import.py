"""Import lab orders from a CSV file: check every row first, then import all of them or none."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from sqlalchemy.orm import Session

from bot.labs.flows import PatientConflict, UpsertOutcome, do_upsert_order
from bot.labs.validation import OrderIn, check_order_row

COLUMNS = (
    "order_id",
    "external_id",
    "name",
    "date_of_birth",
    "phone",
    "test_name",
    "ordered_at",
    "expected_by",
)
SOURCE = "csv"
# Flow field names as the CSV's column names.
COLUMN_OF = {"patient": "external_id", "patient.external_id": "external_id", "patient.name": "name",
             "patient.date_of_birth": "date_of_birth", "patient.phone": "phone"}  # fmt: skip


class CsvFileError(Exception):
    """The file cannot be read as a lab-order CSV (missing, unreadable, wrong header)."""


@dataclass(frozen=True)
class Rejection:
    """One problem with one row, by its line number in the file."""

    line: int
    field: str
    problem: str


@dataclass(frozen=True)
class CsvOrder:
    """A checked row and the line it came from."""

    line: int
    order: OrderIn


@dataclass(frozen=True)
class ImportCounts:
    """What an import did."""

    created: int
    unchanged: int


class ImportConflicts(Exception):
    """Rows that clash with orders or patients already stored; the import was rolled back."""

    def __init__(self, rejections: list[Rejection]) -> None:
        super().__init__(f"{len(rejections)} rows clash with stored orders or patients")
        self.rejections = rejections


def read_records(path: Path) -> list[tuple[int, dict[str, str | None]]]:
    """Return each data row with its line number; raise CsvFileError for an unusable file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CsvFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CsvFileError(f"{path}: is a directory, not a CSV file") from None
    except UnicodeDecodeError:
        raise CsvFileError(f"{path}: not UTF-8 text") from None
    except OSError as error:
        raise CsvFileError(f"{path}: cannot be read ({error.strerror})") from None
    reader = csv.reader(text.splitlines(keepends=True))
    try:
        header = [name.strip() for name in next(reader, [])]
    except csv.Error as error:
        raise CsvFileError(f"{path}: line 1: {error}") from None
    missing = [column for column in COLUMNS if column not in header]
    unknown = [column for column in header if column not in COLUMNS]
    if missing or unknown or len(header) != len(set(header)):
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing))
        if unknown:
            parts.append("unknown " + ", ".join(unknown))
        if not parts:
            parts.append("repeated column names")
        raise CsvFileError(f"{path}: wrong header ({'; '.join(parts)}); expected {','.join(COLUMNS)}")
    records: list[tuple[int, dict[str, str | None]]] = []
    while True:
        # A quoted value may span lines: a row is named by the line it starts on.
        first_line = reader.line_num + 1
        try:
            row = next(reader, None)
        except csv.Error as error:
            raise CsvFileError(f"{path}: line {first_line}: {error}") from None
        if row is None:
            return records
        if not row:
            continue  # a blank line
        if len(row) > len(header):
            records.append((first_line, {"__extra__": "yes"}))
            continue
        values: dict[str, str | None] = dict.fromkeys(header)
        values.update(zip(header, row, strict=False))
        records.append((first_line, values))


def check_records(
    records: list[tuple[int, dict[str, str | None]]],
    *,
    today: date,
    advance: Callable[[], None] = lambda: None,
) -> tuple[list[CsvOrder], list[Rejection]]:
    """Check every row; return the good orders and every problem, by line."""
    orders: list[CsvOrder] = []
    rejections: list[Rejection] = []
    first_seen: dict[str, CsvOrder] = {}
    for line, values in records:
        advance()
        if "__extra__" in values:
            rejections.append(Rejection(line, "row", f"has more than {len(COLUMNS)} values"))
            continue
        order, problems = check_order_row(values, today=today)
        rejections.extend(Rejection(line, problem.field, problem.problem) for problem in problems)
        if order is None:
            continue
        earlier = first_seen.get(order.order_id)
        if earlier is not None and earlier.order != order:
            rejections.append(
                Rejection(line, "order_id", f"repeats line {earlier.line} with different values")
            )
            continue
        first_seen.setdefault(order.order_id, CsvOrder(line, order))
        orders.append(CsvOrder(line, order))
    return orders, rejections


def do_import_orders(
    *, session: Session, orders: list[CsvOrder], advance: Callable[[], None] = lambda: None
) -> ImportCounts:
    """Upsert every checked order in the caller's transaction; raise ImportConflicts if any clashes."""
    created = unchanged = 0
    conflicts: list[Rejection] = []
    for item in orders:
        order = item.order
        try:
            result = do_upsert_order(session=session, order_id=order.order_id, patient=order.patient,
                                     test_name=order.test_name, ordered_at=order.ordered_at,
                                     expected_by=order.expected_by, source=SOURCE)  # fmt: skip
        except PatientConflict as conflict:
            # Refused before anything was written; keep checking the other rows.
            conflicts.extend(
                Rejection(item.line, COLUMN_OF.get(field, field), conflict.problem)
                for field in conflict.fields
            )
            advance()
            continue
        if result.outcome == UpsertOutcome.CREATED:
            created += 1
        elif result.outcome == UpsertOutcome.UNCHANGED:
            unchanged += 1
        else:
            conflicts.extend(
                Rejection(
                    item.line,
                    COLUMN_OF.get(field, field),
                    "differs from the order already stored with this order_id",
                )
                for field in result.differences
            )
        advance()
    if conflicts:
        raise ImportConflicts(conflicts)
    return ImportCounts(created=created, unchanged=unchanged)
