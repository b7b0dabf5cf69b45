"""Takeover end to end in real headless Chromium against a real `clinicbot serve` process and the fake Twilio.

A patient's SMS escalates and appears live in the queue; staff claim it and the bot goes silent; the staff
reply reaches the fake Twilio; staff hand the chat back and the bot answers again. Also: phone width.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import select

from tests.channels.twilio.conftest import sign
from tests.channels.webchat.test_browser import CHROMIUM, CHROMIUM_ARGS, Watch, _unavailable
from tests.conftest import reset_caches
from tests.e2e.server import ServerProcess, free_port
from tests.fakes.fake_twilio import FakeTwilio
from tests.staff.conftest import DEMO_STAFF_EMAIL, TEST_PASSWORD, give_test_password

CLINIC_NUMBER = "+16175550199"
JIM = "+16175550142"
AISHA = "+16175550177"
TIMEOUT_MS = 15_000
_sids = itertools.count(1)


@dataclass
class World:
    """The server, the fake Twilio it sends through, and where screenshots go."""

    server: ServerProcess
    fake: FakeTwilio
    screenshots: Path

    def text_in(self, body: str, *, sender: str = JIM) -> None:
        """Post a signed inbound SMS webhook to the server, as Twilio would."""
        url = f"{self.server.url}/webhooks/twilio/sms"
        sid = f"SMbrowser{next(_sids):024d}"
        pairs = [("MessageSid", sid), ("AccountSid", self.fake.account_sid), ("From", sender),
                 ("To", CLINIC_NUMBER), ("Body", body), ("NumMedia", "0")]  # fmt: skip
        headers = {"X-Twilio-Signature": sign(token=self.fake.auth_token, url=url, pairs=pairs),
                   "Content-Type": "application/x-www-form-urlencoded"}  # fmt: skip
        response = httpx.post(url, content=urlencode(pairs), headers=headers, timeout=10)
        assert response.status_code == 200

    def texts(self) -> list[str]:
        return [message.body for message in self.fake.messages_to(JIM)]


def wait_for(predicate, *, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[World]:
    from bot.db import get_engine, session_scope
    from bot.db.migrate import upgrade_to_head
    from bot.demo import do_seed_demo
    from bot.runtime import get_runtime

    if not CHROMIUM.exists():
        _unavailable(f"Chromium not found at {CHROMIUM}; install the Debian chromium package")
    root = tmp_path_factory.mktemp("takeover")
    database = f"sqlite:///{root / 'clinicbot.db'}"
    port = free_port()
    with pytest.MonkeyPatch.context() as patch, FakeTwilio() as fake:
        env = {
            "CLINICBOT_DATABASE_URL": database,
            "CLINICBOT_DATA_DIR": str(model_dir),
            "CLINICBOT_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "TWILIO_ACCOUNT_SID": fake.account_sid,
            "TWILIO_AUTH_TOKEN": fake.auth_token,
            "TWILIO_FROM_NUMBER": CLINIC_NUMBER,
            "TWILIO_MESSAGING_SERVICE_SID": "",
            "TWILIO_API_BASE_URL": fake.base_url,
            "TELEGRAM_BOT_TOKEN": "",
            "CLINICBOT_OUTBOX_PACING": "false",
        }
        for name, value in env.items():
            patch.setenv(name, value)
        reset_caches()
        upgrade_to_head(get_engine())
        with session_scope() as session:
            do_seed_demo(session=session)
        get_runtime()  # train the classifier here, so the server starts quickly from the cache
        server = ServerProcess(env=env, port=port)
        server.start()
        try:
            yield World(server=server, fake=fake, screenshots=root)
        finally:
            server.stop()
            get_engine().dispose()
            reset_caches()


@pytest.fixture(scope="module")
def browser(world: World) -> Iterator:  # type: ignore[type-arg]
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as playwright:
        try:
            instance = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
            )
        except Error as error:
            _unavailable(f"Chromium at {CHROMIUM} could not start: {error.message.splitlines()[0]}")
        try:
            yield instance
        finally:
            instance.close()


def signed_in_page(browser, world: World, *, width: int, height: int):  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": width, "height": height}, locale="en-US")
    page = context.new_page()
    watch = Watch(world.server.url)
    watch.attach(page)
    page.goto(f"{world.server.url}/staff")
    # SMS is on: the published demo password is refused, so the account has a real one (tests.staff.conftest).
    give_test_password(DEMO_STAFF_EMAIL)
    page.get_by_label("Email").fill(DEMO_STAFF_EMAIL)
    page.get_by_label("Password").fill(TEST_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Inbox", exact=True)).to_be_visible()
    return context, page, watch


def processed(body: str) -> tuple[int, str | None] | None:
    """Return (message id, route) once the server processed the inbound text, else None."""
    from bot.conversations.models import Message
    from bot.db import session_scope

    with session_scope() as session:
        message = session.scalars(
            select(Message).where(Message.body == body, Message.direction == "in")
        ).first()
        if message is None or message.processed_at is None:
            return None
        return message.id, message.route


def test_takeover_end_to_end(browser, world: World) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    from bot.channels.models import OutboxMessage
    from bot.db import session_scope

    context, page, watch = signed_in_page(browser, world, width=1280, height=800)
    try:
        queue = page.locator("#queue-rows")
        expect(queue).to_contain_text("Nothing waiting for staff.")
        # 1. The patient asks for a person by SMS: the chat appears in the open queue without a reload.
        world.text_in("I want to talk to a person")
        jim = page.get_by_role("link", name="Jim", exact=True)
        expect(jim).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.locator("#queue-announce")).to_have_text("1 new conversation in the queue")
        wait_for(lambda: len(world.texts()) == 1)  # the bot told the patient a person will reply
        page.screenshot(path=str(world.screenshots / "inbox-1280.png"), full_page=True)

        # 2. Claim: the patient is told who is replying, and the bot stays silent afterwards.
        jim.click()
        expect(page.get_by_role("heading", level=1)).to_contain_text("Jim")
        page.get_by_role("button", name="Claim", exact=True).click()
        expect(page.get_by_role("status")).to_contain_text("You claimed this chat.")
        expect(page.get_by_role("button", name="Claim", exact=True)).to_have_count(0)
        wait_for(lambda: len(world.texts()) == 2)
        assert world.texts()[-1] == "Sam Lee from Riverside Family Clinic is now replying to you here."

        world.text_in("are you still there?")
        expect(page.locator("#transcript")).to_contain_text("are you still there?", timeout=TIMEOUT_MS)
        wait_for(lambda: processed("are you still there?") is not None)
        message_id, route = processed("are you still there?")  # type: ignore[misc]
        with session_scope() as session:
            replies = session.scalars(
                select(OutboxMessage.id).where(OutboxMessage.key.like(f"reply:{message_id}:%"))
            ).all()
        assert (route, replies, len(world.texts())) == ("silent", [], 2)

        # 3. The staff reply reaches the fake Twilio, and its delivery state shows in the transcript.
        page.get_by_label("Reply", exact=True).fill("Yes, Sam here. Your refill is on its way.")
        page.get_by_role("button", name="Send", exact=True).click()
        expect(page.get_by_role("status")).to_contain_text("Your reply is queued")
        wait_for(lambda: len(world.texts()) == 3)
        assert world.texts()[-1] == "Yes, Sam here. Your refill is on its way."
        staff_line = page.locator("#transcript li.staff").filter(has_text="Your refill is on its way.")
        expect(staff_line.locator(".delivery")).to_have_text("sent", timeout=TIMEOUT_MS)
        page.screenshot(path=str(world.screenshots / "conversation-1280.png"), full_page=True)

        # 4. Hand back: the patient is told, and the bot answers the next question again.
        page.get_by_role("button", name="Hand back to bot").click()
        expect(page.get_by_role("status")).to_contain_text("handed back to the bot")
        wait_for(lambda: len(world.texts()) == 4)
        assert world.texts()[-1].startswith("Thanks for talking with us.")
        world.text_in("what are your hours")
        wait_for(lambda: len(world.texts()) == 5)
        assert "8 am" in world.texts()[-1]
        expect(page.locator("#transcript")).to_contain_text("what are your hours", timeout=TIMEOUT_MS)
        assert watch.foreign == [] and watch.errors == []
    finally:
        context.close()


def test_conversation_page_fits_a_phone(browser, world: World) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    world.text_in("I want to talk to a person", sender=AISHA)
    context, page, watch = signed_in_page(browser, world, width=375, height=812)
    try:
        aisha = page.get_by_role("link", name="Aisha", exact=True)
        expect(aisha).to_be_visible(timeout=TIMEOUT_MS)
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        aisha.click()
        expect(page.get_by_label("Reply", exact=True)).to_be_visible()
        for name in ("Send", "Add note", "Close"):
            control = page.get_by_role("button", name=name, exact=True)
            control.scroll_into_view_if_needed()
            box = control.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375, name
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        page.screenshot(path=str(world.screenshots / "conversation-375.png"), full_page=True)
        assert watch.foreign == [] and watch.errors == []
    finally:
        context.close()
