"""Long polling for development: the same intake as the webhook, deduplicated, stopped with the app."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from bot.conversations.models import Direction, Message
from bot.db import session_scope
from tests.channels.telegram.conftest import CHAT, telegram_env
from tests.conftest import reset_caches
from tests.fakes import fake_telegram as fake_module
from tests.fakes.fake_telegram import FakeTelegram, text_update


def stored() -> list[str | None]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(Message.provider_message_id).where(Message.direction == Direction.IN).order_by(Message.id)
            )
        )


@pytest.fixture
def polling_env(demo_db: str, fake_telegram: FakeTelegram, monkeypatch: pytest.MonkeyPatch) -> FakeTelegram:
    for name, value in telegram_env(fake_telegram).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CLINICBOT_OUTBOX_PACING", "false")
    reset_caches()
    return fake_telegram


def test_polling_stores_each_update_once_even_when_fetched_again(polling_env: FakeTelegram) -> None:
    from bot.channels.telegram import TelegramPoller
    from bot.config import get_settings
    from bot.runtime import get_runtime

    fake = polling_env
    fake.push_update(text_update(1, CHAT, "hello"))
    fake.push_update(text_update(2, CHAT, "what are your opening hours?"))
    domain = get_runtime().domain
    first = TelegramPoller.from_settings(get_settings(), domain=domain)
    try:
        fetched = [first.poll_once()]
    finally:
        first.close()
    # A restart before the next poll confirmed them: Telegram sends both again.
    second = TelegramPoller.from_settings(get_settings(), domain=domain)
    try:
        fetched += [second.poll_once(), second.poll_once()]
    finally:
        second.close()

    assert fetched == [2, 2, 0]
    assert stored() == ["update:1", "update:2"]
    assert [call.get("offset") for call in fake.calls("getUpdates")] == [None, None, 3]


def _polling_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "clinicbot-telegram-polling" and t.is_alive()]


def test_serve_with_polling_feeds_the_workers_and_stops_with_the_app(
    polling_env: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.web.app import create_app

    fake = polling_env
    # Long polls that would hold for 30 s: stopping must cancel the open one, not wait it out.
    monkeypatch.setattr(fake_module, "MAX_POLL_WAIT", 30.0)
    fake.push_update(text_update(1, CHAT, "what are your opening hours?"))
    with TestClient(create_app(start_workers=False, telegram_polling=True)) as client:
        workers = client.app.state.workers
        deadline = time.monotonic() + 10
        while stored() != ["update:1"] and time.monotonic() < deadline:
            time.sleep(0.05)
        # The first update is confirmed by the next, open, long poll.
        assert fake.wait_for_calls("getUpdates", 2)
        workers.processor.drain()
        workers.sender.drain()
        assert _polling_threads()
        started = time.monotonic()
    stopped_in = time.monotonic() - started
    workers.channels["telegram"].close()

    assert stored() == ["update:1"]
    assert [m.chat_id for m in fake.sent] == [CHAT]
    assert len(fake.calls("deleteWebhook")) == 1
    assert (_polling_threads(), stopped_in < 5) == ([], True)
