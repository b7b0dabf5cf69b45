"""Process settings, read from the environment (and an optional .env file)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

REPO_ROOT = Path(__file__).resolve().parent.parent
# Where rate limits can be counted (bot.web.ratelimit): this process's memory, or a shared Redis.
RATE_LIMIT_SCHEMES = ("memory://", "redis://", "rediss://", "redis+unix://")
# The SQLAlchemy drivers installed with clinicbot (psycopg 3; psycopg2, postgresql://'s default, is not).
DATABASE_DRIVERS = ("sqlite", "postgresql+psycopg")
# The longest retention period `retention purge` accepts, from the setting or --days: a century.
MAX_RETENTION_DAYS = 36_500


class SettingsError(ValueError):
    """A setting is invalid; the message names it."""


class Settings(BaseSettings):
    """Everything the process is configured with; secrets are SecretStr."""

    model_config = SettingsConfigDict(
        env_prefix="CLINICBOT_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        # inf and nan are never a sensible number of seconds, texts or days; every number has bounds too.
        allow_inf_nan=False,
    )

    data_dir: Path = Field(default=Path("var"), description="Where the SQLite file and model cache live.")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty means SQLite under data_dir.")
    dialogues_dir: Path = Field(
        default=REPO_ROOT / "dialogues", description="The clinic's words (Rasa format)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # "auto": JSON lines for the long-running processes (serve, scheduler), plain text for the rest.
    log_format: Literal["auto", "json", "text"] = Field(default="auto", description="Log line format.")
    retention_days: int = Field(
        default=365,
        ge=1,
        le=MAX_RETENTION_DAYS,
        description="Message bodies older than this are purged by `retention purge`.",
    )
    # /readyz answers 503 unless a scheduler (its own process, or one inside serve) beats recently.
    require_scheduler: bool = Field(default=True, description="Whether /readyz needs a fresh scheduler heartbeat.")
    public_url: str = Field(default="http://127.0.0.1:8000", description="URL patients and providers reach.")

    # Routing thresholds: below clarify_threshold the bot asks instead of guessing.
    clarify_threshold: float = Field(default=0.45, ge=0.0, le=1.0)
    # Working minutes promised for each kind of follow-up; counted inside clinic opening hours.
    # At most 30 days' worth of minutes (90 working days of 8 hours).
    sla_medical_minutes: int = Field(default=120, ge=1, le=43_200)
    sla_complaint_minutes: int = Field(default=480, ge=1, le=43_200)
    sla_human_minutes: int = Field(default=60, ge=1, le=43_200)
    sla_unclear_minutes: int = Field(default=60, ge=1, le=43_200)
    sla_emergency_minutes: int = Field(default=5, ge=1, le=43_200)
    sla_refill_minutes: int = Field(default=600, ge=1, le=43_200)
    sla_appointment_minutes: int = Field(default=240, ge=1, le=43_200)

    # Delivery: pacing and retries of the outbox sender.
    sms_rate_per_second: float = Field(
        default=1.0, gt=0, le=1000, description="Texts per second per sending number."
    )
    outbox_pacing: bool = Field(default=True, description="Off only for benchmarks against a fake provider.")
    outbox_max_attempts: int = Field(default=8, ge=1, le=100)
    outbox_send_timeout: float = Field(
        default=10.0, gt=0, le=600, description="Seconds before a send counts as unknown."
    )
    # Must exceed the send timeout: a row still SENDING after this was claimed by a process that died.
    outbox_stale_seconds: float = Field(default=120.0, gt=0, le=86_400)
    webchat_rate_per_minute: int = Field(
        default=20, ge=1, le=1_000_000, description="Web chat messages per client per minute."
    )
    # Where the web chat's rate limits are counted: this process, or a Redis the app replicas share.
    # A URL may hold a password, so it is a secret.
    rate_limit_storage_url: SecretStr = Field(
        default=SecretStr("memory://"), description="memory:// (one web process) or redis://host:6379/0."
    )

    # Staff inbox.
    staff_idle_minutes: int = Field(
        default=15, ge=1, le=1440, description="A staff session ends after this long idle."
    )
    staff_login_failures_per_account: int = Field(
        default=5,
        ge=1,
        le=10_000,
        description="Failed sign-ins per account in the window before it is throttled.",
    )
    staff_login_failures_per_ip: int = Field(
        default=20,
        ge=1,
        le=10_000,
        description="Failed sign-ins per client address in the window before it is throttled.",
    )
    staff_login_window_minutes: int = Field(
        default=15, ge=1, le=1440, description="The sign-in throttling window."
    )

    # Promise sweeps (scheduler/): same-working-day updates, results-ready notices, escalations.
    late_escalation_working_days: int = Field(
        default=3, ge=1, le=365, description="Working days late after which a promise escalates to staff."
    )
    scheduler_sweep_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="Seconds between promise sweeps."
    )
    scheduler_batch_size: int = Field(
        default=1000, ge=1, le=100_000, description="Promises claimed per sweep transaction."
    )

    # Lab intake: the HL7 v2 MLLP listener (0 = off) and the turnaround assumed when an order has none.
    mllp_port: int = Field(default=0, ge=0, le=65535, description="MLLP listener port; 0 leaves it off.")
    mllp_host: str = Field(default="127.0.0.1", description="Address the MLLP listener binds to.")
    lab_turnaround_days: int = Field(
        default=3, ge=1, le=60, description="Working days to a result when an HL7 order gives no OBR-27."
    )

    twilio_account_sid: str = Field(default="", validation_alias=AliasChoices("TWILIO_ACCOUNT_SID"))
    twilio_auth_token: SecretStr = Field(
        default=SecretStr(""), validation_alias=AliasChoices("TWILIO_AUTH_TOKEN")
    )
    twilio_from_number: str = Field(default="", validation_alias=AliasChoices("TWILIO_FROM_NUMBER"))
    twilio_messaging_service_sid: str = Field(
        default="", validation_alias=AliasChoices("TWILIO_MESSAGING_SERVICE_SID")
    )
    twilio_api_base_url: str = Field(
        default="https://api.twilio.com", validation_alias=AliasChoices("TWILIO_API_BASE_URL")
    )
    telegram_bot_token: SecretStr = Field(
        default=SecretStr(""), validation_alias=AliasChoices("TELEGRAM_BOT_TOKEN")
    )
    telegram_webhook_secret: SecretStr = Field(
        default=SecretStr(""), validation_alias=AliasChoices("TELEGRAM_WEBHOOK_SECRET")
    )

    telegram_staff_chat_id: str = Field(
        default="",
        validation_alias=AliasChoices("TELEGRAM_STAFF_CHAT_ID"),
        description="A staff Telegram group for alerts (priority and a link, never patient details).",
    )
    telegram_api_base_url: str = Field(
        default="https://api.telegram.org/bot", validation_alias=AliasChoices("TELEGRAM_API_BASE_URL")
    )

    @property
    def twilio_enabled(self) -> bool:
        """Return whether SMS is configured (a channel without credentials is off)."""
        return bool(
            self.twilio_account_sid
            and self.twilio_auth_token.get_secret_value()
            and (self.twilio_from_number or self.twilio_messaging_service_sid)
        )

    @property
    def public_url_is_https(self) -> bool:
        """Return whether the public URL is https (cookies are then Secure); the scheme's case does not matter."""
        return urlsplit(self.public_url.strip()).scheme.lower() == "https"

    @property
    def telegram_enabled(self) -> bool:
        """Return whether Telegram is configured."""
        return bool(self.telegram_bot_token.get_secret_value())

    @property
    def reachable_by_patients(self) -> bool:
        """Return whether patients can reach this server: a public URL off this machine, or SMS or Telegram on.

        Only a demo on one machine (`make run`) is not; then the published demo password may sign in.
        """
        host = urlsplit(self.public_url.strip()).hostname
        return host not in LOOPBACK_HOSTS or self.twilio_enabled or self.telegram_enabled

    # A URL may carry a password: the messages below name what is wrong, never the value.

    @field_validator("data_dir")
    @classmethod
    def _a_folder(cls, value: Path) -> Path:
        existing = next((path for path in (value, *value.parents) if path.exists()), None)
        if existing is not None and not existing.is_dir():
            raise ValueError(f"{existing} is a file, not a folder")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if not value:
            return value
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
            port = url.port
        except (ArgumentError, ValueError):
            raise ValueError(
                "is not a database URL; use sqlite:///path/to/clinicbot.db or "
                "postgresql+psycopg://user:password@host/database"
            ) from None
        if url.drivername not in DATABASE_DRIVERS:
            raise ValueError(
                "must start with sqlite:/// or postgresql+psycopg:// (PostgreSQL through psycopg 3, "
                "the driver clinicbot installs)"
            )
        if url.drivername == "sqlite" and not url.database:
            raise ValueError("needs a file: sqlite:///path/to/clinicbot.db")
        if port is not None and not 1 <= port <= 65535:
            raise ValueError("has a port outside 1 to 65535")
        return value

    @field_validator("rate_limit_storage_url")
    @classmethod
    def _known_storage(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if not url.startswith(RATE_LIMIT_SCHEMES):
            raise ValueError(f"must start with one of {', '.join(RATE_LIMIT_SCHEMES)}")
        if url.startswith("memory://"):
            return value
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ValueError("is not a URL: its host or port cannot be read") from None
        if parts.scheme == "redis+unix":
            if not parts.path.strip("/"):
                raise ValueError("needs the Redis socket's path: redis+unix:///path/to/redis.sock")
        else:
            if not parts.hostname:
                raise ValueError(f"needs a host: {parts.scheme}://host:6379/0")
            if port == 0:
                raise ValueError("has a port outside 1 to 65535")
            if parts.path.strip("/") and not parts.path.strip("/").isdigit():
                raise ValueError("has a database that is not a number: redis://host:6379/0")
        from redis.connection import parse_url

        try:
            # The options in the query string, read as redis-py will (limits hands it redis+unix as unix).
            parse_url(url.replace("redis+unix://", "unix://", 1))
        except ValueError:
            raise ValueError("has an option redis cannot read in its query string") from None
        return value

    @field_validator("public_url")
    @classmethod
    def _absolute_http(cls, value: str) -> str:
        problem = "must be an absolute http(s) URL with a host, e.g. https://clinic.example.org"
        try:
            parts = urlsplit(value.strip())
            parts.port  # noqa: B018 - reading it checks it
        except ValueError:
            raise ValueError(problem) from None
        if parts.scheme.lower() not in {"http", "https"} or not parts.hostname:
            raise ValueError(problem)
        return value

    @field_validator("outbox_stale_seconds")
    @classmethod
    def _longer_than_a_send(cls, value: float, info: ValidationInfo) -> float:
        # A row still SENDING after this was claimed by a process that died; a live send can last the timeout.
        timeout = info.data.get("outbox_send_timeout")
        if timeout is not None and value <= timeout:
            raise ValueError(
                f"must exceed CLINICBOT_OUTBOX_SEND_TIMEOUT ({timeout:g} s), or live sends are retried"
            )
        return value

    @property
    def effective_database_url(self) -> str:
        """Return the configured URL, or the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'clinicbot.db').resolve()}"

    @property
    def model_cache_dir(self) -> Path:
        """Return where trained classifier files are cached."""
        return self.data_dir / "models"


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "settings"
    env = f"CLINICBOT_{where.upper()}" if where.islower() else where
    # A validator's own sentence reads better without pydantic's "Value error, " in front of it.
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    return f"setting {env}: {message}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process settings, validated once."""
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None


def child_environment(**extra: str) -> dict[str, str]:
    """Return the environment for a child process of ours: this process's, with `extra` added.

    The child reads its settings from the same variables (and the same .env file) as this process, so
    both run with the same settings; `extra` carries what a library reads at import (not a setting).
    """
    return {**os.environ, **extra}
