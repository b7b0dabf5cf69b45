"""Settings: a malformed one stops every command at once with one line naming it (never its value), exit 2."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from annotated_types import Le
from pydantic import ValidationError

from bot.cli import main
from bot.config import Settings, child_environment
from tests.conftest import reset_caches

SECRET = "S3cretPW"
FINITE = "Input should be a finite number"
NOT_A_DATABASE_URL = (
    "is not a database URL; use sqlite:///path/to/clinicbot.db or postgresql+psycopg://user:password@host/database"
)
NOT_PSYCOPG = (
    "must start with sqlite:/// or postgresql+psycopg:// (PostgreSQL through psycopg 3, the driver clinicbot installs)"
)
NOT_A_PUBLIC_URL = "must be an absolute http(s) URL with a host, e.g. https://clinic.example.org"


@pytest.fixture(autouse=True)
def _no_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point the process at a SQLite file that was never created: a bad setting must stop it before."""
    monkeypatch.setenv("CLINICBOT_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CLINICBOT_DATABASE_URL", f"sqlite:///{tmp_path / 'var' / 'clinicbot.db'}")
    reset_caches()
    yield
    reset_caches()


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *command: str, **env: str) -> tuple[int, str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_caches()
    status = main(list(command))
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "name", "value", "problem"),
    [
        (["doctor"], "CLINICBOT_DATABASE_URL", "sqlite", NOT_A_DATABASE_URL),
        (["patient", "export", "--id", "1"], "CLINICBOT_DATABASE_URL", f"postgresql://clinic:{SECRET}@db/clinic",
         NOT_PSYCOPG),
        (["init"], "CLINICBOT_DATABASE_URL", f"postgresql+psycopg://clinic:{SECRET}@db:54x2/clinic", NOT_A_DATABASE_URL),
        (["init"], "CLINICBOT_DATABASE_URL", f"postgresql+psycopg://clinic:{SECRET}@db:99999/clinic",
         "has a port outside 1 to 65535"),
        (["init"], "CLINICBOT_DATABASE_URL", "sqlite://", "needs a file: sqlite:///path/to/clinicbot.db"),
        (["scheduler", "run"], "CLINICBOT_SCHEDULER_SWEEP_SECONDS", "inf", FINITE),
        (["scheduler", "run"], "CLINICBOT_SCHEDULER_SWEEP_SECONDS", "1e300",
         "Input should be less than or equal to 3600"),
        (["scheduler", "tick"], "CLINICBOT_OUTBOX_STALE_SECONDS", "1e300",
         "Input should be less than or equal to 86400"),
        (["retention", "purge"], "CLINICBOT_RETENTION_DAYS", "99999999999",
         "Input should be less than or equal to 36500"),
        (["serve"], "CLINICBOT_SMS_RATE_PER_SECOND", "inf", FINITE),
        (["serve"], "CLINICBOT_OUTBOX_SEND_TIMEOUT", "inf", FINITE),
        (["serve"], "CLINICBOT_OUTBOX_SEND_TIMEOUT", "nan", FINITE),
        (["serve"], "CLINICBOT_OUTBOX_STALE_SECONDS", "1",
         "must exceed CLINICBOT_OUTBOX_SEND_TIMEOUT (10 s), or live sends are retried"),
        (["doctor"], "CLINICBOT_RATE_LIMIT_STORAGE_URL", f"redis://:{SECRET}@localhost:xx/0",
         "is not a URL: its host or port cannot be read"),
        (["doctor"], "CLINICBOT_RATE_LIMIT_STORAGE_URL", f"redis://:{SECRET}@:6379/0",
         "needs a host: redis://host:6379/0"),
        (["doctor"], "CLINICBOT_RATE_LIMIT_STORAGE_URL", f"rediss://:{SECRET}@cache:0/0",
         "has a port outside 1 to 65535"),
        (["doctor"], "CLINICBOT_RATE_LIMIT_STORAGE_URL", f"redis://:{SECRET}@cache:6379/zero",
         "has a database that is not a number: redis://host:6379/0"),
        (["doctor"], "CLINICBOT_RATE_LIMIT_STORAGE_URL", f"redis://:{SECRET}@cache:6379/0?socket_timeout=soon",
         "has an option redis cannot read in its query string"),
        (["doctor"], "CLINICBOT_RATE_LIMIT_STORAGE_URL", f"redis+unix://:{SECRET}@",
         "needs the Redis socket's path: redis+unix:///path/to/redis.sock"),
        (["serve"], "CLINICBOT_PUBLIC_URL", "notaurl", NOT_A_PUBLIC_URL),
        (["serve"], "CLINICBOT_PUBLIC_URL", "https://", NOT_A_PUBLIC_URL),
        (["serve"], "CLINICBOT_PUBLIC_URL", "ftp://clinic.example.org", NOT_A_PUBLIC_URL),
        (["serve"], "CLINICBOT_PUBLIC_URL", "https://clinic.example.org:4430x", NOT_A_PUBLIC_URL),
    ],
)  # fmt: skip
def test_a_malformed_setting_stops_the_command_with_one_line_naming_the_setting_but_not_its_value(
    command: list[str], name: str, value: str, problem: str, monkeypatch, capsys
) -> None:
    status, err = run(monkeypatch, capsys, *command, **{name: value})
    assert (status, err) == (2, f"clinicbot: error: setting {name}: {problem}\n")
    assert SECRET not in err


def test_a_data_dir_that_is_a_file_is_a_setting_error(tmp_path: Path, monkeypatch, capsys) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder", encoding="utf-8")
    for data_dir in (a_file, a_file / "var"):
        status, err = run(monkeypatch, capsys, "init", CLINICBOT_DATABASE_URL="", CLINICBOT_DATA_DIR=str(data_dir))
        assert (status, err) == (2, f"clinicbot: error: setting CLINICBOT_DATA_DIR: {a_file} is a file, not a folder\n")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no folder can be made")
def test_a_data_dir_that_cannot_be_created_is_one_line_naming_the_settings(monkeypatch, capsys) -> None:
    status, err = run(monkeypatch, capsys, "init", CLINICBOT_DATABASE_URL="", CLINICBOT_DATA_DIR="/proc/clinicbot/var")
    assert (status, err) == (
        2,
        "clinicbot: error: cannot create /proc/clinicbot/var, the SQLite database's folder (No such file or "
        "directory); check CLINICBOT_DATA_DIR, or CLINICBOT_DATABASE_URL if it is set\n",
    )


NUMBERS = [name for name, field in Settings.model_fields.items() if field.annotation in (int, float)]
FRACTIONS = [name for name, field in Settings.model_fields.items() if field.annotation is float]


@pytest.mark.parametrize("name", NUMBERS)
def test_every_numeric_setting_has_an_upper_bound(name: str) -> None:
    assert [type(m) for m in Settings.model_fields[name].metadata if isinstance(m, Le)] == [Le]


@pytest.mark.parametrize("name", FRACTIONS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_no_fractional_setting_takes_infinity_or_nan(name: str, value: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None, **{name: value})  # type: ignore[arg-type]
    assert [(e["loc"], e["type"]) for e in raised.value.errors()] == [((name,), "finite_number")]


def test_well_formed_values_at_the_edges_are_accepted() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=f"postgresql+psycopg://clinic:{SECRET}@db.internal:5432/clinic?sslmode=require",
        rate_limit_storage_url=f"rediss://:{SECRET}@cache.internal:6380/2?ssl_cert_reqs=none",
        public_url="HTTPS://Clinic.example.org:8443/portal",
        outbox_send_timeout=30,
        outbox_stale_seconds=30.5,
        retention_days=36500,
        scheduler_sweep_seconds=3600,
        webchat_rate_per_minute=100_000,
    )
    assert (settings.public_url_is_https, settings.outbox_stale_seconds) == (True, 30.5)
    for url in ("sqlite:///var/clinicbot.db", "postgresql+psycopg:///clinic", ""):
        assert Settings(_env_file=None, database_url=url).database_url == url  # type: ignore[call-arg]
    for url in ("memory://", "redis://redis:6379/0", "redis://127.0.0.1", "redis+unix:///run/redis/redis.sock?db=1"):
        stored = Settings(_env_file=None, rate_limit_storage_url=url).rate_limit_storage_url  # type: ignore[call-arg]
        assert stored.get_secret_value() == url


def test_a_child_process_gets_this_processs_environment_with_what_is_added(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLINICBOT_CLINIC_NAME", "Harbor Clinic")
    env = child_environment(PROMETHEUS_MULTIPROC_DIR="/run/clinicbot/metrics")
    assert env["CLINICBOT_CLINIC_NAME"] == "Harbor Clinic"
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "/run/clinicbot/metrics"
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") != "/run/clinicbot/metrics"  # this process's own is untouched
