"""Fixtures for the Telegram channel: a fake Bot API on loopback and the real app wired to it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tests.channels.conftest import AppHarness
from tests.fakes.fake_telegram import FakeTelegram

SECRET = "test-secret_token-123"
CHAT = 5001


@pytest.fixture
def fake_telegram() -> Iterator[FakeTelegram]:
    """A fake Telegram Bot API, stopped after the test."""
    with FakeTelegram() as fake:
        yield fake


def telegram_env(fake: FakeTelegram, **extra: str) -> dict[str, str]:
    """Return the environment that points clinicbot at the fake."""
    return {
        "TELEGRAM_BOT_TOKEN": fake.token,
        "TELEGRAM_WEBHOOK_SECRET": SECRET,
        "TELEGRAM_API_BASE_URL": fake.base_url,
        # A slow answer (the fake's `slow`, 2 s or more) counts as a timeout quickly; an ordinary one on a
        # loaded two-core CI machine does not (0.5 s timed out a getMe under load).
        "CLINICBOT_OUTBOX_SEND_TIMEOUT": "1",
        **extra,
    }


@dataclass
class TelegramApp:
    """The app wired to the fake Telegram, with helpers to post updates and look at rows."""

    harness: AppHarness
    fake: FakeTelegram

    def post(self, update: Any, *, secret: str | None = SECRET) -> httpx.Response:
        """Post an update (a dict, or raw bytes) to the webhook as Telegram would."""
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
        if isinstance(update, bytes):
            return self.harness.client.post("/webhooks/telegram", content=update, headers=headers)
        return self.harness.client.post("/webhooks/telegram", json=update, headers=headers)

    def settle(self) -> None:
        """Process what was stored and deliver what is due."""
        self.harness.settle()


def count(model: Any, *where: Any) -> int:
    """Return how many rows of a model match."""
    from bot.db import session_scope

    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


@pytest.fixture
def telegram_app(make_app, fake_telegram: FakeTelegram) -> Iterator[TelegramApp]:  # type: ignore[no-untyped-def]
    """The app with Telegram on, talking to the fake."""
    harness = make_app(**telegram_env(fake_telegram))
    yield TelegramApp(harness=harness, fake=fake_telegram)
    harness.workers.channels["telegram"].close()
