"""TwilioSmsChannel against the fake, outcome by outcome, through the real twilio client."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bot.channels.base import Delivery, OutgoingText, SendResult
from bot.channels.registry import build_channels
from bot.channels.twilio_sms import TwilioSmsChannel, _form, parse_retry_after
from bot.config import get_settings
from bot.db import utcnow
from tests.channels.twilio.conftest import CLINIC_NUMBER, JIM, PUBLIC_URL
from tests.conftest import reset_caches
from tests.e2e.server import free_port
from tests.fakes.fake_twilio import FakeTwilio, Fault

SERVICE_SID = "MG" + "cd34" * 8


def channel_for(fake: FakeTwilio, **overrides: object) -> TwilioSmsChannel:
    options: dict[str, object] = {
        "account_sid": fake.account_sid,
        "auth_token": fake.auth_token,
        "from_number": CLINIC_NUMBER,
        "api_base_url": fake.base_url,
        "status_callback": PUBLIC_URL + "/webhooks/twilio/status",
        "timeout": 0.5,
    }
    return TwilioSmsChannel(**(options | overrides))  # type: ignore[arg-type]


def text(body: str = "See you soon.", *, outbox_id: int = 1) -> OutgoingText:
    return OutgoingText(
        outbox_id=outbox_id, key=f"test:{outbox_id}", channel="sms", address=JIM, text=body, first_attempt_at=utcnow()
    )


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault.server_error(status=503), SendResult(Delivery.RETRY, error_code="503")),
        (Fault.rate_limited(retry_after=7), SendResult(Delivery.RETRY, error_code="20429", retry_after=7.0)),
        (Fault.error(21610), SendResult(Delivery.FAILED, error_code="21610", recipient_state="opted_out")),
        (Fault.error(21211), SendResult(Delivery.FAILED, error_code="21211", recipient_state="invalid_number")),
        (Fault.error(21614), SendResult(Delivery.FAILED, error_code="21614", recipient_state="invalid_number")),
        (Fault.error(21606), SendResult(Delivery.FAILED, error_code="21606")),
        (Fault.slow(seconds=2), SendResult(Delivery.UNKNOWN, error_code="timeout")),
        (Fault.disconnect(record=True), SendResult(Delivery.UNKNOWN)),
    ],
    ids=["5xx", "429", "21610", "21211", "21614", "other-4xx", "read-timeout", "dropped-after-sending"],
)
def test_provider_outcomes_map_to_results(fake_twilio: FakeTwilio, fault: Fault, expected: SendResult) -> None:
    fake_twilio.fail_next(fault)
    assert channel_for(fake_twilio).send(text()) == expected


def test_a_refused_connection_is_retried(fake_twilio: FakeTwilio) -> None:
    channel = channel_for(fake_twilio, api_base_url=f"http://127.0.0.1:{free_port()}")
    assert channel.send(text()) == SendResult(Delivery.RETRY, error_code="unreachable")


def test_wrong_credentials_fail(fake_twilio: FakeTwilio) -> None:
    assert channel_for(fake_twilio, auth_token="wrong").send(text()) == SendResult(Delivery.FAILED, error_code="20003")


def test_a_sent_text_carries_the_sid_and_the_status_callback(fake_twilio: FakeTwilio) -> None:
    result = channel_for(fake_twilio).send(text())
    (message,) = fake_twilio.messages
    assert result == SendResult(Delivery.SENT, provider_message_id=message.sid)
    assert (message.to, message.from_, message.body, message.status_callback) == (
        JIM, CLINIC_NUMBER, "See you soon.", PUBLIC_URL + "/webhooks/twilio/status",
    )  # fmt: skip


def test_a_messaging_service_sends_and_reconciles(database_url: str, fake_twilio: FakeTwilio) -> None:
    channel = channel_for(fake_twilio, from_number="", messaging_service_sid=SERVICE_SID)
    fake_twilio.fail_next(Fault.slow(seconds=2))
    first = channel.send(text())
    found = channel.reconcile(text())
    (message,) = fake_twilio.messages
    assert (message.from_, message.messaging_service_sid) == (None, SERVICE_SID)
    assert (first.outcome, found) == (Delivery.UNKNOWN, SendResult(Delivery.SENT, provider_message_id=message.sid))


def test_reconcile_without_an_answer_stays_unknown(database_url: str, fake_twilio: FakeTwilio) -> None:
    fake_twilio.fail_next(Fault.server_error(), on="list")
    failing = channel_for(fake_twilio).reconcile(text())
    unreachable = channel_for(fake_twilio, api_base_url=f"http://127.0.0.1:{free_port()}").reconcile(text())
    assert (failing, unreachable) == (None, None)


def test_reconcile_with_no_trace_asks_to_send_again(database_url: str, fake_twilio: FakeTwilio) -> None:
    channel = channel_for(fake_twilio)
    channel.send(text("A different text."))
    assert channel.reconcile(text()) == SendResult(Delivery.RETRY)


def test_reconcile_ignores_texts_from_before_the_first_attempt(database_url: str, fake_twilio: FakeTwilio) -> None:
    channel = channel_for(fake_twilio)
    channel.send(text())
    later = OutgoingText(outbox_id=2, key="test:2", channel="sms", address=JIM, text="See you soon.",
                         first_attempt_at=utcnow() + timedelta(minutes=5))  # fmt: skip
    assert channel.reconcile(later) == SendResult(Delivery.RETRY)


def test_retry_after_accepts_seconds_and_dates() -> None:
    now = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    assert [
        parse_retry_after("30", now=now),
        parse_retry_after("Tue, 24 Nov 2026 15:01:30 GMT", now=now),
        parse_retry_after("Tue, 24 Nov 2026 14:00:00 GMT", now=now),
        parse_retry_after("soon", now=now),
        parse_retry_after("inf", now=now),
        parse_retry_after(None, now=now),
    ] == [30.0, 90.0, 0.0, None, None, None]


def test_the_registry_builds_the_channel_from_settings(
    fake_twilio: FakeTwilio, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "TWILIO_ACCOUNT_SID": fake_twilio.account_sid,
        "TWILIO_AUTH_TOKEN": fake_twilio.auth_token,
        "TWILIO_FROM_NUMBER": CLINIC_NUMBER,
        "TWILIO_API_BASE_URL": fake_twilio.base_url,
        "CLINICBOT_PUBLIC_URL": PUBLIC_URL + "/",
        "CLINICBOT_OUTBOX_SEND_TIMEOUT": "2.5",
        "CLINICBOT_SMS_RATE_PER_SECOND": "4",
    }.items():
        monkeypatch.setenv(name, value)
    reset_caches()
    try:
        channel = build_channels(get_settings())["sms"]
    finally:
        reset_caches()
    assert isinstance(channel, TwilioSmsChannel)
    assert (channel.client.api.base_url, channel.http.timeout, channel.max_per_second, channel.min_interval_per_address) == (
        fake_twilio.base_url, 2.5, 4.0, 0.0,
    )  # fmt: skip
    assert channel.status_callback == PUBLIC_URL + "/webhooks/twilio/status"
    assert channel.send(text()).outcome is Delivery.SENT


class _Proxy:
    """A loopback HTTP proxy stand-in: it records each request line and answers 503."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                proxy.lines.append(self.requestline)
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_texts_go_through_the_proxy_the_environment_names(
    fake_twilio: FakeTwilio, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = _Proxy()
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        result = channel_for(fake_twilio, api_base_url="http://api.twilio.invalid").send(text())
        # A host NO_PROXY names is reached directly.
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        direct = channel_for(fake_twilio).send(text())
    finally:
        proxy.close()
    assert result == SendResult(Delivery.RETRY, error_code="503")
    assert proxy.lines == [f"POST http://api.twilio.invalid/2010-04-01/Accounts/{fake_twilio.account_sid}/Messages.json HTTP/1.1"]
    assert direct.outcome is Delivery.SENT and len(fake_twilio.messages) == 1


def test_the_ca_bundle_comes_from_the_environment(
    fake_twilio: FakeTwilio, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bundle = tmp_path / "clinic-ca.pem"
    bundle.write_text("")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    channel = channel_for(fake_twilio, api_base_url="https://api.twilio.invalid")
    manager = channel.http._manager("https", "https://api.twilio.invalid", "https://api.twilio.invalid/")
    assert (manager.connection_pool_kw["ca_certs"], manager.connection_pool_kw["cert_reqs"]) == (str(bundle), "CERT_REQUIRED")


def test_form_fields_are_encoded_as_twilio_expects() -> None:
    fields = {"To": "+16175550142", "MediaUrl": ["https://a.example/1", "https://a.example/2"], "Skipped": None,
              "Body": "¿Qué tal? 50% & more"}  # fmt: skip
    assert _form(fields) == (
        "To=%2B16175550142&MediaUrl=https%3A%2F%2Fa.example%2F1&MediaUrl=https%3A%2F%2Fa.example%2F2"
        "&Body=%C2%BFQu%C3%A9+tal%3F+50%25+%26+more"
    )
