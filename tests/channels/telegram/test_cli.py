"""`clinicbot telegram set-webhook` and `clinicbot serve --telegram-polling`, run in-process."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.cli import main
from tests.channels.telegram.conftest import SECRET, telegram_env
from tests.conftest import reset_caches
from tests.fakes.fake_telegram import FakeTelegram, Fault

PUBLIC = "https://clinic.example"


@pytest.fixture
def env(fake_telegram: FakeTelegram, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    for name, value in telegram_env(fake_telegram, CLINICBOT_PUBLIC_URL=PUBLIC + "/").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CLINICBOT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CLINICBOT_DATABASE_URL", f"sqlite:///{tmp_path / 'none.db'}")
    reset_caches()
    yield monkeypatch
    reset_caches()


def run(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    reset_caches()
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_set_webhook_registers_the_public_url_and_the_secret(
    env: pytest.MonkeyPatch, fake_telegram: FakeTelegram, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run("telegram", "set-webhook", capsys=capsys)

    assert result == (0, f"telegram webhook set: {PUBLIC}/webhooks/telegram\n", "")
    assert fake_telegram.webhook == {
        "url": f"{PUBLIC}/webhooks/telegram",
        "secret_token": SECRET,
        "allowed_updates": ["message", "callback_query", "my_chat_member"],
    }


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TELEGRAM_BOT_TOKEN", "", "TELEGRAM_BOT_TOKEN is not set"),
        ("TELEGRAM_WEBHOOK_SECRET", "", "TELEGRAM_WEBHOOK_SECRET is not set; Telegram must send it with every update"),
        ("TELEGRAM_WEBHOOK_SECRET", "has spaces!",
         "TELEGRAM_WEBHOOK_SECRET must be 1-256 characters of A-Z, a-z, 0-9, _ and -"),
        ("CLINICBOT_PUBLIC_URL", "http://clinic.example",
         "CLINICBOT_PUBLIC_URL must be an https:// URL for a Telegram webhook, not 'http://clinic.example'"),
    ],
)  # fmt: skip
def test_set_webhook_says_what_is_missing(
    env: pytest.MonkeyPatch, fake_telegram: FakeTelegram, capsys: pytest.CaptureFixture[str],
    name: str, value: str, message: str,
) -> None:  # fmt: skip
    env.setenv(name, value)

    assert run("telegram", "set-webhook", capsys=capsys) == (2, "", f"clinicbot: error: {message}\n")
    assert fake_telegram.calls() == []


def test_set_webhook_reports_telegrams_refusal(
    env: pytest.MonkeyPatch, fake_telegram: FakeTelegram, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_telegram.fail_next("setWebhook", Fault(400, "Bad Request: bad webhook: Failed to resolve host"))

    status, out, err = run("telegram", "set-webhook", capsys=capsys)
    assert (status, out) == (2, "")
    assert err == "clinicbot: error: Telegram refused the webhook: Bad webhook: failed to resolve host\n"


def test_set_webhook_with_a_wrong_token_never_prints_it(
    env: pytest.MonkeyPatch, fake_telegram: FakeTelegram, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("TELEGRAM_BOT_TOKEN", "999:not-the-token")

    status, out, err = run("telegram", "set-webhook", capsys=capsys)
    assert (status, out) == (2, "")
    assert err == "clinicbot: error: Telegram rejected TELEGRAM_BOT_TOKEN; check it with @BotFather\n"
    assert fake_telegram.webhook is None


def test_set_webhook_when_the_api_is_unreachable(env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env.setenv("TELEGRAM_API_BASE_URL", f"http://127.0.0.1:{port}/bot")

    status, _, err = run("telegram", "set-webhook", capsys=capsys)
    assert (status, err) == (2, f"clinicbot: error: could not reach the Telegram Bot API at 127.0.0.1:{port} (NetworkError)\n")


def test_serve_with_polling_needs_a_token(env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    env.setenv("TELEGRAM_BOT_TOKEN", "")

    assert run("serve", "--telegram-polling", capsys=capsys) == (
        2, "", "clinicbot: error: --telegram-polling needs TELEGRAM_BOT_TOKEN\n"
    )  # fmt: skip
