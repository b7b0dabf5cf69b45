"""The `clinicbot` command as a person runs it: real processes, real databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from bot.cli import main
from bot.config import REPO_ROOT
from bot.db import make_engine


def clinicbot(*args: str, env: dict[str, str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run the console script's entry point in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        input=stdin,
        capture_output=True,
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        timeout=120,
        check=False,
    )


@pytest.fixture
def env(tmp_path: Path, model_dir: Path) -> dict[str, str]:
    return {"CLINICBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "CLINICBOT_DATA_DIR": str(model_dir)}


def assert_one_line_error(result: subprocess.CompletedProcess[bytes], *fragments: str) -> None:
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err


def test_init_demo_is_safe_to_run_twice(env: dict[str, str]) -> None:
    first = clinicbot("init", "--demo", env=env)
    assert first.returncode == 0, first.stderr.decode()
    assert "demo clinic seeded: 1 clinic, 3 staff, 3 patients, 4 lab orders" in first.stdout.decode()
    second = clinicbot("init", "--demo", env=env)
    assert second.returncode == 0
    assert "already present" in second.stdout.decode()
    engine = make_engine(env["CLINICBOT_DATABASE_URL"])
    with engine.connect() as connection:
        counts = [connection.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in ("clinic", "patient")]
        mode = connection.execute(text("PRAGMA journal_mode")).scalar()
    assert (counts, mode) == ([1, 3], "wal")


def test_classify_writes_one_json_object_per_line(env: dict[str, str]) -> None:
    lines = ["what time do you open", "ya no quiero vivir", "", "necesito una receta", "can i talk to a person"]
    stdin = ("\n".join(lines) + "\n").encode() + b"\xff\xfe invalid utf-8\n"
    result = clinicbot("classify", env=env, stdin=stdin)
    assert result.returncode == 0, result.stderr.decode()
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r["text"] for r in records[:5]] == lines
    assert all(set(r) == {"text", "lang", "intent", "confidence", "route"} for r in records)
    assert all(0.0 <= r["confidence"] <= 1.0 for r in records)
    assert [(r["intent"], r["route"]) for r in records[:2]] == [("hours", "answer"), ("emergency", "emergency")]
    assert (records[2]["route"], records[3]["lang"], records[4]["route"]) == ("clarify", "es", "handoff")
    assert len(records) == 6


def test_chat_shows_replies_with_route_and_intent(env: dict[str, str]) -> None:
    assert clinicbot("init", "--demo", env=env).returncode == 0
    result = clinicbot("chat", "--as", "+1 617-555-0142", env=env, stdin=b"hi\nwhat are your hours\n")
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "Jim" in out
    assert "route answer · intent hours" in out


def test_chat_before_init_says_what_to_run(env: dict[str, str]) -> None:
    assert_one_line_error(clinicbot("chat", env=env), "clinicbot init")


def test_bad_option_is_one_line(env: dict[str, str]) -> None:
    assert_one_line_error(clinicbot("chat", "--bogus", env=env), "unrecognized arguments: --bogus")
    assert_one_line_error(clinicbot("frobnicate", env=env), "invalid choice")


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["mllp", "--port", "99999"], "clinicbot mllp: argument --port: must be 1 to 65535, not 99999"),
        (["mllp", "--port", "-5"], "clinicbot mllp: argument --port: must be 1 to 65535, not -5"),
        (["serve", "--port", "99999"], "clinicbot serve: argument --port: must be 1 to 65535, not 99999"),
        (["serve", "--processors", "-1"], "clinicbot serve: argument --processors: must be 0 to 64, not -1"),
        (["scheduler", "tick", "--at", "9999-12-31T23:59:00"],
         "clinicbot scheduler tick: argument --at: must be in the years 2000 to 2999, not 9999-12-31T23:59:00"),
        (["scheduler", "tick", "--wait", "-1"],
         "clinicbot scheduler tick: argument --wait: must be 0 to 3600 seconds, not -1"),
        (["scheduler", "tick", "--wait", "nan"],
         "clinicbot scheduler tick: argument --wait: must be 0 to 3600 seconds, not nan"),
        (["retention", "purge", "--days", "1000000"],
         "clinicbot retention purge: argument --days: must be 1 to 36500, not 1000000"),
        (["patient", "export", "--id", "99999999999999999999999"],
         "clinicbot patient export: argument --id: must be 1 to 2147483647, not 99999999999999999999999"),
        (["patient", "export", "--id", "2147483648"],
         "clinicbot patient export: argument --id: must be 1 to 2147483647, not 2147483648"),
        (["patient", "erase", "--id", "seven", "--yes"], "clinicbot patient erase: argument --id: 'seven' is not a whole number"),
    ],
)  # fmt: skip
def test_an_argument_out_of_range_is_a_usage_error_naming_the_argument(
    database_url: str, args: list[str], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    assert capsys.readouterr().err == f"clinicbot: error: {problem}\n"


@pytest.mark.parametrize(
    "args", [["patient", "export", "--id", "1"], ["patient", "erase", "--id", "1", "--yes"], ["retention", "purge"]]
)
def test_privacy_commands_before_init_say_what_to_run(env: dict[str, str], args: list[str]) -> None:
    assert_one_line_error(clinicbot(*args, env=env), "not initialised", "run `clinicbot init")


def test_bad_phone_is_one_line(env: dict[str, str]) -> None:
    clinicbot("init", "--demo", env=env)
    assert_one_line_error(clinicbot("chat", "--as", "not-a-phone", env=env), "--as 'not-a-phone'")


def test_bad_setting_names_the_setting(env: dict[str, str]) -> None:
    result = clinicbot("classify", env={**env, "CLINICBOT_CLARIFY_THRESHOLD": "2"})
    assert_one_line_error(result, "CLINICBOT_CLARIFY_THRESHOLD")


@pytest.mark.parametrize(
    ("column", "value", "fragment"),
    [
        ("timezone", "Mars/Olympus_Mons", "clinic setting timezone: unknown time zone"),
        ("weekly_hours", '{"mon": "9-5"}', "clinic setting hours.mon"),
        ("daily_update_time", "4pm", "clinic setting daily_update_time"),
        ("daily_update_time", "20:00", "clinic setting daily_update_time: 20:00 is not earlier than quiet_end 20:00"),
    ],
)
def test_bad_clinic_setting_is_a_clear_startup_error(env: dict[str, str], column: str, value: str, fragment: str) -> None:
    clinicbot("init", "--demo", env=env)
    engine = make_engine(env["CLINICBOT_DATABASE_URL"])
    with engine.begin() as connection:
        connection.execute(text(f"UPDATE clinic SET {column} = :v"), {"v": value})
    assert_one_line_error(clinicbot("chat", env=env, stdin=b"hi\n"), fragment)


def test_staff_add_and_disable(env: dict[str, str]) -> None:
    assert clinicbot("init", env=env).returncode == 0
    args = ("staff", "add", "--email", "Nurse@Riverside.example", "--name", "Nora Nurse", "--role", "clinician")
    added = clinicbot(*args, "--password-stdin", env=env, stdin=b"correct horse battery\n")
    assert (added.returncode, added.stdout.decode()) == (0, "staff 1 added (clinician)\n"), added.stderr.decode()
    assert_one_line_error(clinicbot(*args, "--password-stdin", env=env, stdin=b"another long password\n"),
                          "already exists")  # fmt: skip
    assert_one_line_error(clinicbot(*args, env=env), "--password-stdin is required")
    assert_one_line_error(clinicbot("staff", "add", "--email", "x@y.example", "--name", "X", "--role", "admin",
                                    "--password-stdin", env=env, stdin=b"short\n"), "at least 12 characters")  # fmt: skip
    assert_one_line_error(clinicbot("staff", "add", "--email", "x@y.example", "--name", "X", "--role", "boss",
                                    "--password-stdin", env=env), "invalid choice")  # fmt: skip
    disabled = clinicbot("staff", "disable", "--email", "nurse@riverside.example", env=env)
    assert disabled.returncode == 0 and "disabled" in disabled.stdout.decode()
    assert_one_line_error(clinicbot("staff", "disable", "--email", "ghost@riverside.example", env=env),
                          "no staff account")  # fmt: skip
    engine = make_engine(env["CLINICBOT_DATABASE_URL"])
    with engine.connect() as connection:
        row = connection.execute(text("SELECT email, role, password_hash, disabled_at IS NOT NULL FROM staff_user")).one()
        actions = connection.execute(text("SELECT action FROM audit_event ORDER BY id")).scalars().all()
    assert (row[0], row[1], row[2].startswith("$argon2id$"), row[3]) == ("nurse@riverside.example", "clinician", True, True)
    assert actions == ["staff.added", "staff.disabled"]


def test_demo_phone_shows_the_web_chat_code_waiting_for_a_demo_patient(env: dict[str, str]) -> None:
    # SMS is off in the demo, so the web chat's one-time code waits in the outbox: the demo phone
    # shows it (for the demo patients only, audited), and the code it shows verifies the chat.
    import re
    from datetime import date

    from bot.channels.verification import CheckResult, do_check_code, do_start_verification
    from bot.db import session_scope
    from bot.patients.service import get_or_create_identity
    from bot.runtime import get_runtime
    from bot.staff.models import AuditEvent
    from tests.conftest import reset_caches

    assert clinicbot("init", "--demo", env=env).returncode == 0
    os.environ["CLINICBOT_DATABASE_URL"] = env["CLINICBOT_DATABASE_URL"]
    try:
        reset_caches()
        with session_scope() as session:
            visitor = get_or_create_identity(session=session, channel="webchat", address="web-demo-visitor")
            do_start_verification(session=session, identity=visitor, phone="+16175550142",
                                  date_of_birth=date(1957, 11, 2), domain=get_runtime().domain)  # fmt: skip
        shown = clinicbot("demo", "phone", "--as", "(617) 555-0142", env=env)
        assert shown.returncode == 0, shown.stderr.decode()
        lines = shown.stdout.decode().splitlines()
        code = re.search(r"\b(\d{3}) ?(\d{3})\b", lines[1])
        assert lines[0] == "+16175550142 (Jim): 1 text(s) waiting, oldest first" and code is not None
        with session_scope() as session:
            visitor = get_or_create_identity(session=session, channel="webchat", address="web-demo-visitor")
            checked = do_check_code(session=session, identity=visitor, code="".join(code.groups()),
                                    domain=get_runtime().domain, lang="en")  # fmt: skip
            audited = session.query(AuditEvent).filter_by(action="demo.phone_read").count()
    finally:
        del os.environ["CLINICBOT_DATABASE_URL"]
        reset_caches()
    assert checked.result is CheckResult.VERIFIED and audited == 1
    stranger = clinicbot("demo", "phone", "--as", "+16175550199", env=env)
    assert_one_line_error(stranger, "demo phone: +16175550199 is not a demo patient's phone")
    sms_on = clinicbot("demo", "phone", env={**env, "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
                                             "TWILIO_AUTH_TOKEN": "t" * 32, "TWILIO_FROM_NUMBER": "+16175550100"})  # fmt: skip
    assert_one_line_error(sms_on, "demo phone: SMS is on")
