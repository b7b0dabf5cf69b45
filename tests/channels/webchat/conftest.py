"""Helpers for web chat tests: a visitor with a session, posting messages and reading the event stream."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from bot.channels.models import OutboxMessage
from bot.db import session_scope
from tests.channels.conftest import AppHarness

ORIGIN = {"Origin": "http://testserver"}
JIM = "+16175550142"
JIM_DOB = "1957-11-02"
MARIA = "+16175550101"
MARIA_DOB = "1984-03-14"


@dataclass
class Visitor:
    """One browser: the app harness plus this client's cookie jar."""

    app: AppHarness

    @property
    def client(self):  # type: ignore[no-untyped-def]
        return self.app.client

    def say(self, text: str, *, client_message_id: str | None = None) -> httpx.Response:
        """Post a message as the page does."""
        body = {"text": text, "client_message_id": client_message_id or uuid.uuid4().hex}
        return self.client.post("/chat/api/messages", json=body, headers=ORIGIN)

    def events(self, *, last_event_id: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Read the stream once: (event id, payload) pairs."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        response = self.client.get("/chat/api/events", params={"once": "1"}, headers=headers)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return parse_sse(response.text)

    def replies(self, **kwargs: Any) -> list[str]:
        """Return the reply texts currently in the stream."""
        return [data["text"] for _, data in self.events(**kwargs) if data["kind"] == "reply"]

    def ask(self, text: str) -> list[str]:
        """Send a message, let the workers run, and return the replies that arrived for it."""
        before = self.events()
        cursor = before[-1][0] if before else None
        assert self.say(text).status_code == 202
        self.app.settle()
        return [data["text"] for _, data in self.events(last_event_id=cursor) if data["kind"] == "reply"]

    def start_verification(self, phone: str, dob: str, **extra: Any) -> httpx.Response:
        return self.client.post(
            "/chat/api/verify/start", json={"phone": phone, "date_of_birth": dob, **extra}, headers=ORIGIN
        )

    def enter_code(self, code: str, **extra: Any) -> httpx.Response:
        return self.client.post("/chat/api/verify/code", json={"code": code, **extra}, headers=ORIGIN)


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Parse an event-stream body into (id, data) pairs, skipping comments and retry lines."""
    events = []
    for block in text.split("\n\n"):
        event_id, data = "", None
        for line in block.splitlines():
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
        if data is not None:
            events.append((event_id, data))
    return events


def sent_codes() -> list[tuple[str, str, str]]:
    """Return (key, channel, code) for every one-time code text queued, oldest first."""
    with session_scope() as session:
        rows = session.scalars(select(OutboxMessage).where(OutboxMessage.key.like("otp:%")).order_by(OutboxMessage.id))
        found = []
        for row in rows:
            match = re.search(r"\b(\d{6})\b", row.body or "")
            assert match, "a code text without a code"
            found.append((row.key, row.channel, match[1]))
        return found


@pytest.fixture
def visitor(make_app) -> Visitor:  # type: ignore[no-untyped-def]
    """A visitor who has opened the chat page (and so has a session cookie)."""
    harness = make_app()
    assert harness.client.get("/chat").status_code == 200
    return Visitor(harness)
