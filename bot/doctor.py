"""`clinicbot doctor`: check the configuration and say what is wrong and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.engine import make_url

from bot.config import Settings
from bot.db import shown_url

CONNECT_TIMEOUT_SECONDS = 5


@dataclass(frozen=True)
class Finding:
    """One check's result: ok, a warning (works, but not for production) or a problem (exit 1)."""

    check: str
    level: str  # "ok" | "warning" | "problem"
    detail: str
    fix: str = ""


def _ok(check: str, detail: str) -> Finding:
    return Finding(check, "ok", detail)


def _problem(check: str, detail: str, fix: str) -> Finding:
    return Finding(check, "problem", detail, fix)


def check_twilio(settings: Settings) -> Finding:
    """Check the SMS channel is either fully configured or fully off."""
    parts = {
        "TWILIO_ACCOUNT_SID": bool(settings.twilio_account_sid),
        "TWILIO_AUTH_TOKEN": bool(settings.twilio_auth_token.get_secret_value()),
        "TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID": bool(
            settings.twilio_from_number or settings.twilio_messaging_service_sid
        ),
    }
    if not any(parts.values()):
        return _ok("sms", "off (no Twilio settings)")
    missing = [name for name, present in parts.items() if not present]
    if missing:
        return _problem(
            "sms",
            f"half configured: {', '.join(missing)} missing, so SMS is off",
            f"set {' and '.join(missing)} (Twilio console), or unset the other TWILIO_ settings to turn SMS off",
        )
    if not settings.twilio_account_sid.startswith("AC"):
        return _problem(
            "sms", "TWILIO_ACCOUNT_SID does not start with AC", "copy the Account SID from the Twilio console"
        )
    return _ok("sms", "on")


def check_telegram(settings: Settings) -> Finding:
    """Check the Telegram channel has a token and a webhook secret, or neither."""
    token = bool(settings.telegram_bot_token.get_secret_value())
    secret = bool(settings.telegram_webhook_secret.get_secret_value())
    if not token and not secret:
        return _ok("telegram", "off (no TELEGRAM_BOT_TOKEN)")
    if not token:
        return _problem(
            "telegram",
            "TELEGRAM_WEBHOOK_SECRET is set but TELEGRAM_BOT_TOKEN is not, so Telegram is off",
            "set TELEGRAM_BOT_TOKEN (from @BotFather), or unset TELEGRAM_WEBHOOK_SECRET",
        )
    if not secret:
        return _problem(
            "telegram",
            "TELEGRAM_BOT_TOKEN is set but TELEGRAM_WEBHOOK_SECRET is not: the webhook refuses every update",
            "set TELEGRAM_WEBHOOK_SECRET to a random string (`openssl rand -hex 32`), then run "
            "`clinicbot telegram set-webhook` (or run `clinicbot serve --telegram-polling` in development)",
        )
    return _ok("telegram", "on")


def check_public_url(settings: Settings) -> Finding:
    """Check the public URL is https (http is tolerated on loopback, as a warning); settings made sure it is a URL."""
    url = settings.public_url
    if settings.public_url_is_https:
        return _ok("public url", url)
    fix = "put clinicbot behind a TLS-terminating proxy and set CLINICBOT_PUBLIC_URL to its https address"
    if not settings.reachable_by_patients:
        return Finding(
            "public url", "warning", f"{url} is plain http: fine on this machine, not for patients", fix
        )
    return _problem("public url", f"{url} is plain http: Twilio, Telegram and browsers need https", fix)


def check_rate_limits(settings: Settings) -> Finding:
    """Check where the web chat's rate limits are counted, and that a shared Redis answers."""
    from bot.web.ratelimit import RateLimiter

    url = settings.rate_limit_storage_url.get_secret_value()
    if url.startswith("memory://"):
        return _ok("rate limits", "counted in this process (one web process; replicas need a shared Redis)")
    parts = urlsplit(url)
    where = f"Redis at {parts.hostname or parts.path}" + (f":{parts.port}" if parts.port else "")
    if RateLimiter(per_minute=settings.webchat_rate_per_minute, storage_url=url).storage.check():
        return _ok("rate limits", f"shared in {where}")
    return _problem(
        "rate limits",
        f"{where} does not answer: web chat requests are let through unlimited",
        "start Redis, or correct CLINICBOT_RATE_LIMIT_STORAGE_URL (memory:// for a single web process)",
    )


def _engine_for(settings: Settings) -> tuple[Engine | None, Finding | None]:
    """Return an engine that will not create a database or wait long for one."""
    url = settings.effective_database_url
    shown = shown_url(url)
    if url.startswith("sqlite"):
        path = make_url(url).database or ""
        if path and path != ":memory:" and not Path(path).exists():
            return None, _problem("database", f"{shown} does not exist", "run `clinicbot init` to create it")
        return create_engine(url), None
    return create_engine(url, connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS}), None


def check_database(settings: Settings) -> list[Finding]:
    """Check the database answers, is migrated to head, and holds a clinic with a valid time zone."""
    from bot.clinic_settings import ClinicProfile
    from bot.db.migrate import current_revision, head_revision

    shown = shown_url(settings.effective_database_url)
    engine, missing = _engine_for(settings)
    if engine is None:
        assert missing is not None
        return [missing]
    try:
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as error:
            cause = type(getattr(error, "orig", None) or error).__name__
            return [
                _problem(
                    "database",
                    f"{shown} unreachable ({cause})",
                    "check CLINICBOT_DATABASE_URL, that PostgreSQL is running and accepts this user",
                )
            ]
        findings = [_ok("database", f"{shown} reachable")]
        current, head = current_revision(engine), head_revision(engine)
        if current != head:
            findings.append(
                _problem(
                    "migrations",
                    f"database at {current or 'no revision (empty)'}, code at {head}",
                    "run `clinicbot init` (it migrates to head; safe to repeat)",
                )
            )
            return findings
        findings.append(_ok("migrations", f"at head ({head})"))
        with engine.connect() as connection:
            zone = connection.execute(
                select(ClinicProfile.timezone).order_by(ClinicProfile.id).limit(1)
            ).scalar()
        findings.append(check_timezone(zone))
        findings.append(check_demo_accounts(settings, engine))
        return findings
    finally:
        engine.dispose()


def check_demo_accounts(settings: Settings, engine: Engine) -> Finding:
    """Check no demo staff account still signs in with the password the README and `make run` publish."""
    from sqlalchemy.orm import Session

    from bot.demo import accounts_with_demo_password

    with Session(engine) as session:
        exposed = accounts_with_demo_password(session)
    if not exposed:
        return _ok("demo accounts", "none signs in with the published demo password")
    detail = f"{', '.join(exposed)} sign(s) in with the published demo password"
    fix = ("give each a real password (`clinicbot staff password --email EMAIL --password-stdin`), or create real "
           "accounts (`clinicbot staff add`) and `clinicbot staff disable --email EMAIL` each demo account")
    if not settings.reachable_by_patients:
        return Finding("demo accounts", "warning", f"{detail}: fine for a demo on this machine, not for patients", fix)
    return _problem("demo accounts", f"{detail}, and this server is reachable by patients: their sign-ins are refused",
                    fix)


def check_timezone(zone: str | None) -> Finding:
    """Check the clinic's time zone is a known IANA name."""
    if zone is None:
        return _problem(
            "clinic timezone",
            "no clinic in the database",
            "run `clinicbot init --demo`, then edit the clinic",
        )
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        return _problem(
            "clinic timezone",
            f"unknown time zone {zone!r}",
            "set the clinic's timezone to an IANA name such as America/New_York",
        )
    return _ok("clinic timezone", zone)


def check_dialogues(settings: Settings) -> Finding:
    """Check the dialogues folder exists in both languages."""
    root = settings.dialogues_dir
    missing = [lang for lang in ("en", "es") if not (root / lang / "domain.yml").is_file()]
    if missing:
        return _problem(
            "dialogues",
            f"{root} has no domain.yml for {', '.join(missing)}",
            "set CLINICBOT_DIALOGUES_DIR to the folder holding en/ and es/",
        )
    return _ok("dialogues", str(root))


def run_checks(settings: Settings) -> list[Finding]:
    """Run every check, in the order they are printed."""
    return [
        check_twilio(settings),
        check_telegram(settings),
        check_public_url(settings),
        check_rate_limits(settings),
        check_dialogues(settings),
        *check_database(settings),
    ]


def report(findings: list[Finding]) -> tuple[list[str], int]:
    """Return the lines to print and the exit status (1 if any problem)."""
    marks = {"ok": "ok     ", "warning": "warning", "problem": "PROBLEM"}
    lines = []
    for finding in findings:
        lines.append(f"{marks[finding.level]}  {finding.check}: {finding.detail}")
        if finding.fix:
            lines.append(f"         fix: {finding.fix}")
    problems = sum(finding.level == "problem" for finding in findings)
    lines.append(f"{problems} problem{'s' if problems != 1 else ''} found" if problems else "all good")
    return lines, 1 if problems else 0
