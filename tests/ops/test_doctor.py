"""`clinicbot doctor`: each configuration problem is named with its fix; exit 1 when there is any."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update

from bot.cli import main
from bot.clinic_settings import ClinicProfile
from bot.db import session_scope, utcnow
from bot.staff.models import StaffUser
from bot.staff.passwords import hash_password
from tests.conftest import reset_caches
from tests.e2e.server import free_port
from tests.ops.conftest import stamp

GOOD = {
    "CLINICBOT_PUBLIC_URL": "https://clinic.example.org",
    "TWILIO_ACCOUNT_SID": "AC" + "ab12" * 8,
    "TWILIO_AUTH_TOKEN": "token",
    "TWILIO_FROM_NUMBER": "+16175550199",
    "TWILIO_MESSAGING_SERVICE_SID": "",
    "TELEGRAM_BOT_TOKEN": "123:abc",
    "TELEGRAM_WEBHOOK_SECRET": "secret",
}


@pytest.fixture(autouse=True)
def _forget_settings():  # type: ignore[no-untyped-def]
    yield
    reset_caches()


def retire_demo_accounts() -> None:
    """Disable the demo team, as a clinic going live does once its real staff have accounts."""
    with session_scope() as session:
        session.execute(update(StaffUser).where(StaffUser.email.like("%@riverside.example")).values(disabled_at=utcnow()))


def doctor(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], **env: str
) -> tuple[int, list[str]]:
    for name, value in (GOOD | env).items():
        monkeypatch.setenv(name, value)
    reset_caches()
    status = main(["doctor"])
    return status, capsys.readouterr().out.splitlines()


def test_a_good_configuration_passes(demo_db: str, monkeypatch, capsys) -> None:
    retire_demo_accounts()
    status, lines = doctor(monkeypatch, capsys)
    assert status == 0
    assert lines[:6] == [
        "ok       sms: on",
        "ok       telegram: on",
        "ok       public url: https://clinic.example.org",
        "ok       rate limits: counted in this process (one web process; replicas need a shared Redis)",
        f"ok       dialogues: {Path(__file__).resolve().parents[2] / 'dialogues'}",
        lines[5],
    ]
    assert lines[5].startswith("ok       database: ") and lines[5].endswith(" reachable")
    assert lines[6].startswith("ok       migrations: at head (")
    assert lines[7:] == [
        "ok       clinic timezone: America/New_York",
        "ok       demo accounts: none signs in with the published demo password",
        "all good",
    ]


def test_demo_accounts_with_the_published_password_are_a_problem_once_patients_can_reach_the_server(
    demo_db: str, monkeypatch, capsys
) -> None:
    exposed = "admin@riverside.example, sam@riverside.example, priya@riverside.example sign(s) in with the published demo password"
    fix = ("         fix: give each a real password (`clinicbot staff password --email EMAIL --password-stdin`), or "
           "create real accounts (`clinicbot staff add`) and `clinicbot staff disable --email EMAIL` each demo account")
    status, lines = doctor(monkeypatch, capsys)
    assert status == 1
    assert lines[-3:] == [f"PROBLEM  demo accounts: {exposed}, and this server is reachable by patients: their "
                          "sign-ins are refused", fix, "1 problem found"]  # fmt: skip
    # `make run`: this machine only, no channels: a reminder, not a failure.
    off = {name: "" for name in GOOD if name.startswith(("TWILIO", "TELEGRAM"))}
    status, lines = doctor(monkeypatch, capsys, CLINICBOT_PUBLIC_URL="http://127.0.0.1:8000", **off)
    assert status == 0
    assert f"warning  demo accounts: {exposed}: fine for a demo on this machine, not for patients" in lines
    # One changed password leaves the others reported.
    with session_scope() as session:
        session.execute(update(StaffUser).where(StaffUser.email == "admin@riverside.example")
                        .values(password_hash=hash_password("a-real-secret-now")))  # fmt: skip
    status, lines = doctor(monkeypatch, capsys)
    assert status == 1
    assert ("PROBLEM  demo accounts: sam@riverside.example, priya@riverside.example sign(s) in with the published "
            "demo password, and this server is reachable by patients: their sign-ins are refused") in lines  # fmt: skip


def test_a_shared_rate_limit_redis_is_checked_and_its_password_never_shown(
    demo_db: str, redis_url: str, monkeypatch, capsys
) -> None:
    retire_demo_accounts()
    status, lines = doctor(monkeypatch, capsys, CLINICBOT_RATE_LIMIT_STORAGE_URL=redis_url)
    assert "ok       rate limits: shared in Redis at 127.0.0.1:6379" in lines, lines
    assert status == 0
    down = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    status, lines = doctor(monkeypatch, capsys, CLINICBOT_RATE_LIMIT_STORAGE_URL=down)
    assert status == 1
    assert f"PROBLEM  rate limits: Redis at 127.0.0.1:{down.split(':')[-1].split('/')[0]} does not answer: web chat requests are let through unlimited" in lines
    assert "hunter2" not in "\n".join(lines)


def test_half_configured_channels_are_problems_with_fixes(demo_db: str, monkeypatch, capsys) -> None:
    retire_demo_accounts()
    status, lines = doctor(
        monkeypatch, capsys, TWILIO_AUTH_TOKEN="", TWILIO_FROM_NUMBER="", TELEGRAM_WEBHOOK_SECRET=""
    )
    assert status == 1
    assert lines[:4] == [
        "PROBLEM  sms: half configured: TWILIO_AUTH_TOKEN, TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID "
        "missing, so SMS is off",
        "         fix: set TWILIO_AUTH_TOKEN and TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID (Twilio console), "
        "or unset the other TWILIO_ settings to turn SMS off",
        "PROBLEM  telegram: TELEGRAM_BOT_TOKEN is set but TELEGRAM_WEBHOOK_SECRET is not: the webhook refuses "
        "every update",
        "         fix: set TELEGRAM_WEBHOOK_SECRET to a random string (`openssl rand -hex 32`), then run "
        "`clinicbot telegram set-webhook` (or run `clinicbot serve --telegram-polling` in development)",
    ]
    assert lines[-1] == "2 problems found"


def test_secret_without_token_and_a_bad_account_sid(demo_db: str, monkeypatch, capsys) -> None:
    status, lines = doctor(monkeypatch, capsys, TELEGRAM_BOT_TOKEN="", TWILIO_ACCOUNT_SID="XX123")
    assert status == 1
    assert "PROBLEM  sms: TWILIO_ACCOUNT_SID does not start with AC" in lines
    assert (
        "PROBLEM  telegram: TELEGRAM_WEBHOOK_SECRET is set but TELEGRAM_BOT_TOKEN is not, so Telegram is off"
        in lines
    )


def test_public_url_must_be_https_except_on_this_machine_without_channels(
    demo_db: str, monkeypatch, capsys
) -> None:
    status, lines = doctor(monkeypatch, capsys, CLINICBOT_PUBLIC_URL="http://clinic.example.org")
    assert status == 1
    assert (
        "PROBLEM  public url: http://clinic.example.org is plain http: Twilio, Telegram and browsers need https"
        in lines
    )
    off = {name: "" for name in GOOD if name.startswith(("TWILIO", "TELEGRAM"))}
    status, lines = doctor(monkeypatch, capsys, CLINICBOT_PUBLIC_URL="http://127.0.0.1:8000", **off)
    assert status == 0
    assert (
        "warning  public url: http://127.0.0.1:8000 is plain http: fine on this machine, not for patients"
        in lines
    )
    # The scheme's case does not matter, as for the Secure cookie; a URL that is not one stops every command.
    status, lines = doctor(monkeypatch, capsys, CLINICBOT_PUBLIC_URL="HTTPS://clinic.example.org")
    assert "ok       public url: HTTPS://clinic.example.org" in lines
    with monkeypatch.context() as patch:
        patch.setenv("CLINICBOT_PUBLIC_URL", "clinic.example.org")
        reset_caches()
        assert main(["doctor"]) == 2
    reset_caches()
    assert capsys.readouterr() == (
        "",
        "clinicbot: error: setting CLINICBOT_PUBLIC_URL: must be an absolute http(s) URL with a host, "
        "e.g. https://clinic.example.org\n",
    )


def test_unknown_clinic_timezone(demo_db: str, monkeypatch, capsys) -> None:
    retire_demo_accounts()
    with session_scope() as session:
        session.execute(update(ClinicProfile).values(timezone="Mars/Base"))
    status, lines = doctor(monkeypatch, capsys)
    assert status == 1
    assert lines[-4:] == [
        "PROBLEM  clinic timezone: unknown time zone 'Mars/Base'",
        "         fix: set the clinic's timezone to an IANA name such as America/New_York",
        "ok       demo accounts: none signs in with the published demo password",
        "1 problem found",
    ]


def test_pending_migrations(demo_db: str, monkeypatch, capsys) -> None:
    reset_caches()
    stamp("0006")
    try:
        status, lines = doctor(monkeypatch, capsys)
    finally:
        reset_caches()
        stamp("head")
    assert status == 1
    assert any(line.startswith("PROBLEM  migrations: database at 0006, code at ") for line in lines)
    assert "         fix: run `clinicbot init` (it migrates to head; safe to repeat)" in lines


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://postgres:pw@127.0.0.1:1/clinic", "postgresql+psycopg://postgres:***@127.0.0.1:1/clinic"),
        # libpq takes the password as a query parameter too
        ("postgresql+psycopg://postgres@127.0.0.1:1/clinic?password=S3cretPW&sslmode=prefer",
         "postgresql+psycopg://postgres@127.0.0.1:1/clinic?password=%2A%2A%2A&sslmode=prefer"),
    ],
)
def test_unreachable_database(model_dir: Path, monkeypatch, capsys, url: str, shown: str) -> None:
    monkeypatch.setenv("CLINICBOT_DATA_DIR", str(model_dir))
    status, lines = doctor(monkeypatch, capsys, CLINICBOT_DATABASE_URL=url)
    assert status == 1
    assert "S3cretPW" not in "\n".join(lines)
    assert lines[-3:] == [
        f"PROBLEM  database: {shown} unreachable (OperationalError)",
        "         fix: check CLINICBOT_DATABASE_URL, that PostgreSQL is running and accepts this user",
        "1 problem found",
    ]


def test_missing_sqlite_file_is_reported_not_created(tmp_path: Path, monkeypatch, capsys) -> None:
    path = tmp_path / "none.db"
    status, lines = doctor(monkeypatch, capsys, CLINICBOT_DATABASE_URL=f"sqlite:///{path}")
    assert status == 1
    assert lines[-3:] == [
        f"PROBLEM  database: sqlite:///{path} does not exist",
        "         fix: run `clinicbot init` to create it",
        "1 problem found",
    ]
    assert not path.exists()
