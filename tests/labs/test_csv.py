"""`clinicbot labs import FILE`: all rows or none, rejected rows listed by line, one-line file errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select

from bot.config import REPO_ROOT
from bot.db import session_scope
from bot.labs.models import LabMessage, LabOrder
from bot.patients.models import Patient
from bot.promises.models import Promise

HEADER = "order_id,external_id,name,date_of_birth,phone,test_name,ordered_at,expected_by\n"
GOOD = [
    "CSV-1,RFC-1001,Maria Garcia,1984-03-14,+16175550101,Vitamin D,2026-11-20T09:00:00-05:00,2026-11-24T16:00:00-05:00\n",
    "CSV-2,,Omar Haddad,1979-08-01,+16175550188,Ferritin,2026-11-20T10:00:00-05:00,2026-11-25T12:00:00-05:00\n",
    'CSV-3,RFC-4001,"Lee, Ana",2001-01-31,+16175550166,Urinalysis,2026-11-21T08:15:00Z,2026-11-23T17:00:00Z\n',
]


def run_import(path: Path) -> subprocess.CompletedProcess[str]:
    """Run the command as a person would, on the test's database."""
    return subprocess.run([sys.executable, "-m", "bot.cli", "labs", "import", str(path)], capture_output=True,
                          text=True, cwd=REPO_ROOT, env=dict(os.environ), timeout=120, check=False)  # fmt: skip


def write(tmp_path: Path, *rows: str, header: str = HEADER) -> Path:
    path = tmp_path / "orders.csv"
    path.write_text(header + "".join(rows), encoding="utf-8")
    return path


def counts() -> tuple[int, int, int, int]:
    with session_scope() as session:
        return tuple(  # type: ignore[return-value]
            session.scalar(select(func.count()).select_from(model))
            for model in (Patient, LabOrder, Promise, LabMessage)
        )


def test_good_file_imports_every_row_and_a_rerun_changes_nothing(demo_db: str, tmp_path: Path) -> None:
    path = write(tmp_path, *GOOD)
    patients, orders, promises, messages = counts()
    first = run_import(path)
    assert (first.returncode, first.stdout) == (0, "imported 3 rows: 3 created, 0 unchanged\n"), first.stderr
    assert counts() == (patients + 2, orders + 3, promises + 3, messages + 3)
    second = run_import(path)
    assert (second.returncode, second.stdout) == (0, "imported 3 rows: 0 created, 3 unchanged\n"), (
        second.stderr
    )
    assert counts() == (patients + 2, orders + 3, promises + 3, messages + 3)
    with session_scope() as session:
        maria = session.scalars(select(LabOrder.patient_id).where(LabOrder.order_id == "CSV-1")).one()
        ana = session.scalars(select(Patient.name).where(Patient.external_id == "RFC-4001")).one()
        demo_maria = session.scalars(select(Patient.id).where(Patient.external_id == "RFC-1001")).one()
    assert (maria, ana) == (demo_maria, "Lee, Ana")


def test_bad_rows_are_listed_by_line_and_nothing_is_imported(demo_db: str, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        GOOD[0],
        "CSV-9,,Omar Haddad,1979-08-01,617-555-0188,Ferritin,2026-11-20T10:00:00-05:00,2026-11-25T12:00:00-05:00\n",
        GOOD[2],
        "CSV-8,,Ann Bo,1979-02-30,+16175550177,,2026-11-20T10:00:00,2026-11-25T12:00:00-05:00\n",
        "CSV-1,RFC-1001,Maria Garcia,1984-03-14,+16175550101,Lipids,2026-11-20T09:00:00-05:00,2026-11-24T16:00:00-05:00\n",
    )
    before = counts()
    result = run_import(path)
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        "line 3: phone: must be an E.164 phone number such as +16175550101",
        "line 5: date_of_birth: is not a real calendar date",
        "line 5: test_name: must not be empty",
        "line 5: ordered_at: must include a UTC offset or Z, e.g. 2026-11-25T12:00:00-05:00",
        "line 6: order_id: repeats line 2 with different values",
    ]
    assert "nothing imported: 3 of 5 rows rejected" in result.stderr
    assert "Traceback" not in result.stderr
    assert counts() == before


def test_nul_characters_and_times_near_the_calendar_limits_are_row_errors(
    demo_db: str, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        GOOD[0].replace("Maria Garcia", "Maria\x00Garcia"),
        GOOD[1].replace("2026-11-20T10:00:00-05:00", "0001-01-01T00:00:00+14:00"),
        GOOD[2].replace("2026-11-23T17:00:00Z", "9999-12-31T23:00:00-14:00"),
        GOOD[2].replace("CSV-3,RFC-4001", "CSV-4,RFC\x004001").replace("Urinalysis", "Urine\x00culture"),
    )
    before = counts()
    result = run_import(path)
    assert (result.returncode, result.stdout.splitlines()) == (
        2,
        [
            "line 2: name: must not contain NUL characters",
            "line 3: ordered_at: must be between the years 1900 and 2200",
            "line 4: expected_by: must be between the years 1900 and 2200",
            "line 5: external_id: must not contain NUL characters",
            "line 5: test_name: must not contain NUL characters",
        ],
    )
    assert "Traceback" not in result.stderr
    assert counts() == before


def test_a_row_spanning_lines_is_named_by_the_line_it_starts_on(demo_db: str, tmp_path: Path) -> None:
    spanning = 'CSV-7,,"Omar\nHaddad",1979-08-01,617-555-0188,Ferritin,2026-11-20T10:00:00-05:00,2026-11-25T12:00:00-05:00\n'
    blank_then_bad = (
        "\nCSV-8,,Ann Bo,1979-02-30,+16175550177,Ferritin,2026-11-20T10:00:00Z,2026-11-25T12:00:00Z\n"
    )
    result = run_import(write(tmp_path, GOOD[0], spanning, blank_then_bad))
    assert (result.returncode, result.stdout.splitlines()) == (
        2,
        [
            "line 3: phone: must be an E.164 phone number such as +16175550101",
            "line 6: date_of_birth: is not a real calendar date",
        ],
    )


def test_a_row_clashing_with_a_stored_order_rolls_back_the_whole_file(demo_db: str, tmp_path: Path) -> None:
    assert run_import(write(tmp_path, GOOD[0])).returncode == 0
    before = counts()
    clash = GOOD[0].replace("Vitamin D", "Vitamin B12")
    result = run_import(write(tmp_path, GOOD[1], clash))
    assert (result.returncode, result.stdout) == (
        2,
        "line 3: test_name: differs from the order already stored with this order_id\n",
    )
    assert counts() == before


def test_a_row_for_a_patient_on_file_with_other_details_is_rejected_by_line(
    demo_db: str, tmp_path: Path
) -> None:
    before = counts()
    jims_phone = "CSV-5,,Someone Else,1990-01-01,+16175550142,Ferritin,2026-11-20T10:00:00-05:00,2026-11-25T12:00:00-05:00\n"
    reused_id = GOOD[1].replace(",,Omar Haddad,", ",RFC-1001,Omar Haddad,")
    result = run_import(write(tmp_path, GOOD[2], jims_phone, reused_id))
    assert (result.returncode, result.stdout.splitlines()) == (
        2,
        [
            "line 3: name: differs from the patient on file with this phone number",
            "line 3: date_of_birth: differs from the patient on file with this phone number",
            "line 4: date_of_birth: differs from the patient on file with this external_id",
        ],
    )
    assert "Traceback" not in result.stderr
    assert counts() == before


def test_missing_file_and_wrong_header_are_one_line_errors(demo_db: str, tmp_path: Path) -> None:
    missing = run_import(tmp_path / "nope.csv")
    wrong = run_import(
        write(
            tmp_path,
            GOOD[0],
            header="order,external_id,name,date_of_birth,phone,test_name,ordered_at,expected_by\n",
        )
    )
    for result, fragment in (
        (missing, "nope.csv: no such file"),
        (wrong, "wrong header (missing order_id; unknown order)"),
    ):
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert fragment in result.stderr
