"""A bad clinic setting stops `scheduler run` with one line, and a running scheduler logs it in one line."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

import scheduler.setup
from bot.cli import main
from bot.clinic_settings import ClinicProfile
from bot.db import session_scope
from scheduler.jobs import sweep_job


def break_timezone() -> None:
    with session_scope() as session:
        session.scalars(select(ClinicProfile)).one().timezone = "Mars/Olympus_Mons"


def test_scheduler_run_with_a_bad_clinic_setting_says_which_and_does_not_start(
    clinic_db_sched, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[object] = []
    monkeypatch.setattr(scheduler.setup, "run_standalone", started.append)
    break_timezone()
    assert main(["scheduler", "run"]) == 2
    captured = capsys.readouterr()
    assert (captured.out, started) == ("", [])
    assert captured.err.splitlines()[-1] == (
        "clinicbot: error: clinic setting timezone: unknown time zone 'Mars/Olympus_Mons'"
    )


def test_a_clinic_setting_broken_while_running_is_one_log_line_per_pass(
    clinic_db_sched, caplog: pytest.LogCaptureFixture
) -> None:
    break_timezone()
    with caplog.at_level(logging.INFO, logger="scheduler.jobs"):
        sweep_job()
    records = [r for r in caplog.records if r.name == "scheduler.jobs"]
    assert [(r.levelname, r.getMessage(), r.exc_info) for r in records] == [
        ("ERROR", "promise sweep skipped: clinic setting timezone: unknown time zone 'Mars/Olympus_Mons'", None)
    ]
