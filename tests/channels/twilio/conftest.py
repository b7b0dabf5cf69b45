"""Fixtures for the SMS channel: a fake Twilio on loopback and the app wired to it, with signed webhooks."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import select, update
from twilio.request_validator import RequestValidator

from bot.channels.models import OutboxMessage, OutboxStatus
from bot.db import session_scope, utcnow
from tests.channels.conftest import AppHarness
from tests.fakes.fake_twilio import FakeTwilio

PUBLIC_URL = "https://bot.riverside.example"
CLINIC_NUMBER = "+16175550199"
JIM = "+16175550142"  # a demo patient: verified by the number on file
STRANGER = "+16175550123"
# A slow answer (Fault.slow, 2 s) counts as a timeout quickly; an ordinary one on a loaded CI machine does not.
SEND_TIMEOUT = "1"

_sids = itertools.count(1)


class SignedParams(dict[str, list[str]]):
    """Form fields with repeated keys, in the shape twilio's validator reads (getlist)."""

    def getlist(self, name: str) -> list[str]:
        return self[name]


def pairs_to_params(pairs: Iterable[tuple[str, str]]) -> SignedParams:
    params = SignedParams()
    for name, value in pairs:
        params.setdefault(name, []).append(value)
    return params


def sign(*, token: str, url: str, pairs: Iterable[tuple[str, str]]) -> str:
    """Sign a webhook the way Twilio does."""
    return RequestValidator(token).compute_signature(url, pairs_to_params(pairs))


def new_sid(prefix: str = "SM") -> str:
    return f"{prefix}{next(_sids):032x}"


@dataclass
class SmsApp:
    """The app under test, the fake Twilio it sends through, and helpers to post signed webhooks."""

    harness: AppHarness
    fake: FakeTwilio

    @property
    def client(self):  # type: ignore[no-untyped-def]
        return self.harness.client

    def settle(self) -> None:
        self.harness.settle()

    def post(
        self,
        path: str,
        pairs: list[tuple[str, str]],
        *,
        signed_url: str | None = None,
        signature: str | None = None,
        token: str | None = None,
        query: str = "",
    ) -> httpx.Response:
        """Post a form to the app, signed for the public URL unless told otherwise."""
        target = path + (f"?{query}" if query else "")
        if signature is None:
            signature = sign(token=token or self.fake.auth_token, url=signed_url or PUBLIC_URL + target, pairs=pairs)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if signature:
            headers["X-Twilio-Signature"] = signature
        return self.client.post(target, content=urlencode(pairs), headers=headers)

    def text_in(
        self, body: str, *, sender: str = JIM, sid: str | None = None, extra: tuple[tuple[str, str], ...] = ()
    ) -> httpx.Response:
        """Post an inbound SMS webhook as Twilio would; `extra` fields replace or add to the usual ones."""
        sid = sid or new_sid()
        fields = {
            "ToCountry": "US", "SmsMessageSid": sid, "NumMedia": "0", "MessageSid": sid,
            "AccountSid": self.fake.account_sid, "From": sender, "To": CLINIC_NUMBER, "Body": body,
            "NumSegments": "1", "ApiVersion": "2010-04-01",
        }  # fmt: skip
        fields.update(dict(extra))
        return self.post("/webhooks/twilio/sms", list(fields.items()))

    def status(self, sid: str, status: str, *, error_code: str | None = None) -> httpx.Response:
        """Post a delivery status callback as Twilio would."""
        pairs = [("MessageSid", sid), ("SmsSid", sid), ("MessageStatus", status), ("SmsStatus", status),
                 ("AccountSid", self.fake.account_sid), ("From", CLINIC_NUMBER), ("To", JIM), ("ApiVersion", "2010-04-01")]  # fmt: skip
        if error_code:
            pairs.append(("ErrorCode", error_code))
        return self.post("/webhooks/twilio/status", pairs)


def outbox_rows() -> list[OutboxMessage]:
    with session_scope() as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def make_due() -> None:
    """Let every waiting retry come due now, as if its backoff had passed."""
    with session_scope() as session:
        session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.status.in_((OutboxStatus.PENDING, OutboxStatus.UNKNOWN)))
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )


def twilio_env(fake: FakeTwilio, **overrides: str) -> dict[str, str]:
    env = {
        "TWILIO_ACCOUNT_SID": fake.account_sid,
        "TWILIO_AUTH_TOKEN": fake.auth_token,
        "TWILIO_FROM_NUMBER": CLINIC_NUMBER,
        "TWILIO_MESSAGING_SERVICE_SID": "",
        "TWILIO_API_BASE_URL": fake.base_url,
        "CLINICBOT_PUBLIC_URL": PUBLIC_URL,
        "CLINICBOT_OUTBOX_SEND_TIMEOUT": SEND_TIMEOUT,
        "TELEGRAM_BOT_TOKEN": "",
    }
    return env | overrides


@pytest.fixture
def fake_twilio() -> Iterator[FakeTwilio]:
    """A fake Twilio REST API on a random loopback port."""
    with FakeTwilio(account_sid="AC" + "ab12" * 8, auth_token="test-auth-token-1234") as fake:
        yield fake


@pytest.fixture
def sms_app(make_app, fake_twilio: FakeTwilio) -> SmsApp:  # type: ignore[no-untyped-def]
    """The app with SMS on, sending through the fake, behind a TLS-terminating proxy (public URL https)."""
    return SmsApp(harness=make_app(**twilio_env(fake_twilio)), fake=fake_twilio)
