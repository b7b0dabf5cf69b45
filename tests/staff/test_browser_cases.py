"""Complaints and corrections in real headless Chromium against a real `clinicbot serve` process."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.conversations.models import Message
from bot.db import session_scope
from bot.demo import DEMO_ADMIN_EMAIL, DEMO_ADMIN_PASSWORD
from tests.channels.webchat.test_browser import CHROMIUM, CHROMIUM_ARGS, _unavailable
from tests.e2e.server import ServerProcess, free_port

TIMEOUT_MS = 15_000
COMPLAINT = "I want to make a complaint, the receptionist was rude"


@pytest.fixture
def server(demo_db: str, model_dir: Path) -> Iterator[ServerProcess]:
    """A real `clinicbot serve` on loopback with its workers, web chat only."""
    port = free_port()
    env = {
        "CLINICBOT_DATABASE_URL": demo_db,
        "CLINICBOT_DATA_DIR": str(model_dir),
        "CLINICBOT_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "CLINICBOT_OUTBOX_PACING": "false",
        "TWILIO_ACCOUNT_SID": "",
        "TELEGRAM_BOT_TOKEN": "",
        "TELEGRAM_STAFF_CHAT_ID": "",
    }
    process = ServerProcess(env=env, port=port)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def browser() -> Iterator:  # type: ignore[type-arg]
    if not CHROMIUM.exists():
        _unavailable(f"Chromium not found at {CHROMIUM}; install the Debian chromium package")
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


def _fits(page) -> bool:  # type: ignore[no-untyped-def]
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_complaint_resolved_and_wrong_answer_corrected_in_the_patients_chat(
    server: ServerProcess, browser
) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    foreign: list[str] = []
    patient_context = browser.new_context(viewport={"width": 375, "height": 800}, locale="en-US")
    staff_context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US")
    try:
        chat = patient_context.new_page()
        staff = staff_context.new_page()
        for page in (chat, staff):
            page.on("request", lambda r: None if r.url.startswith(server.url) else foreign.append(r.url))

        # The patient complains in the web chat and is told when they will hear back.
        chat.goto(f"{server.url}/chat")
        chat.get_by_label("Message", exact=True).fill(COMPLAINT)
        chat.get_by_role("button", name="Send", exact=True).click()
        expect(chat.locator("#log")).to_contain_text("passed it to our practice manager", timeout=TIMEOUT_MS)

        # Staff sign in and find the case on the complaints page.
        staff.goto(f"{server.url}/staff/login?next=/staff/complaints")
        staff.get_by_label("Email").fill(DEMO_ADMIN_EMAIL)
        staff.get_by_label("Password").fill(DEMO_ADMIN_PASSWORD)
        staff.get_by_role("button", name="Sign in").click()
        expect(staff.get_by_role("heading", name="Complaints", exact=True)).to_be_visible()
        staff.get_by_role("link", name="Complaint #1", exact=True).click()
        expect(staff.get_by_role("heading", name="Actions taken", exact=True)).to_be_visible()

        # Record an action by keyboard, then resolve with the prefilled message, edited.
        staff.get_by_label("Action taken", exact=True).focus()
        staff.keyboard.type("Spoke with the receptionist about courtesy")
        staff.get_by_role("button", name="Record action").click()
        expect(staff.locator("ol.case-actions li")).to_have_count(1)
        message = staff.get_by_label("Message to the patient")
        expect(message).to_have_value(
            "Thank you for telling us about your experience. Here is what we have done: Spoke with the receptionist "
            "about courtesy. If anything is still not right, reply to this message. Dana Reyes, Riverside Family Clinic"
        )
        edited = message.input_value().replace("If anything", "We are sorry it happened. If anything")
        message.fill(edited)
        staff.set_viewport_size({"width": 375, "height": 800})
        assert _fits(staff), "the case page scrolls sideways at phone width"
        staff.get_by_role("button", name="Resolve", exact=True).click()
        expect(staff.get_by_role("heading", name="Resolved", exact=True)).to_be_visible()
        staff.set_viewport_size({"width": 1280, "height": 800})

        # The patient's chat shows exactly the message staff sent.
        expect(chat.locator("#log")).to_contain_text(
            "We are sorry it happened. If anything", timeout=TIMEOUT_MS
        )
        expect(chat.locator("#log .msg-staff .bubble").last).to_have_text(edited, timeout=TIMEOUT_MS)

        # A bot answer was wrong: staff mark it and send a correction; the patient sees it.
        with session_scope() as session:
            wrong_id = session.scalars(
                select(Message.id).where(Message.author_kind == "bot").order_by(Message.id.desc())
            ).first()
        assert wrong_id is not None
        staff.goto(f"{server.url}/staff/messages/{wrong_id}/correction")
        staff.get_by_label("What was wrong (internal)").fill("Named the wrong team")
        staff.get_by_role("textbox", name="Correction", exact=True).fill(
            "The clinic manager, not the practice manager, will reply."
        )
        staff.get_by_role("button", name="Preview", exact=True).click()
        expect(staff.locator("#correction-preview")).to_contain_text(
            "A correction from Riverside Family Clinic"
        )
        staff.get_by_role("button", name="Send correction").click()
        expect(chat.locator("#log")).to_contain_text(
            "an earlier message we sent you was wrong, and we are sorry. The clinic manager, not the practice "
            "manager, will reply.",
            timeout=TIMEOUT_MS,
        )
        assert _fits(chat)
        assert foreign == [], "every asset is served locally"
    finally:
        staff_context.close()
        patient_context.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_request_answered_from_the_requests_page_reaches_the_patients_chat(
    server: ServerProcess, browser
) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    from bot.conversations import flows
    from bot.conversations.models import Conversation, RequestKind

    patient_context = browser.new_context(viewport={"width": 375, "height": 800}, locale="en-US")
    staff_context = browser.new_context(viewport={"width": 375, "height": 800}, locale="en-US")
    try:
        chat = patient_context.new_page()
        chat.goto(f"{server.url}/chat")
        chat.get_by_label("Message", exact=True).fill("what time do you open")
        chat.get_by_role("button", name="Send", exact=True).click()
        expect(chat.locator("#log .msg-bot")).to_have_count(2, timeout=TIMEOUT_MS)  # the greeting, the answer
        with session_scope() as session:
            conversation_id = session.scalars(select(Conversation.id).order_by(Conversation.id.desc())).first()
            request_id = flows.do_record_request(
                session=session, conversation_id=conversation_id, kind=RequestKind.APPOINTMENT, action="book",
                details={"appointment": "check-up", "preferred": "mornings"},
            ).request_id  # fmt: skip

        # Staff, on a phone, find the request, fill the draft's day and time, and send it.
        staff = staff_context.new_page()
        staff.goto(f"{server.url}/staff/login?next=/staff/requests")
        staff.get_by_label("Email").fill(DEMO_ADMIN_EMAIL)
        staff.get_by_label("Password").fill(DEMO_ADMIN_PASSWORD)
        staff.get_by_role("button", name="Sign in").click()
        expect(staff.get_by_role("heading", name="Refill and appointment requests")).to_be_visible()
        staff.get_by_role("link", name=f"Appointment (book) #{request_id}", exact=True).click()
        done = staff.get_by_role("textbox", name="Message to the patient").first
        expect(done).to_have_value(re.compile(r"^Your appointment is booked for \(day and time\)\."))
        assert _fits(staff), "the request page scrolls sideways at phone width"
        staff.get_by_role("button", name="Send and close: done").click()
        expect(staff.locator("#request-error")).to_contain_text("Replace (day and time)")
        filled = done.input_value().replace("(day and time)", "Tuesday, Dec 1 at 9:30 am")
        staff.get_by_role("textbox", name="Message to the patient").first.fill(filled)
        staff.get_by_role("button", name="Send and close: done").click()
        expect(staff.locator("#requests-notice")).to_contain_text("on its way to the patient")
        expect(staff.get_by_text("No open requests.")).to_be_visible()

        # The patient's chat shows it, live.
        expect(chat.locator("#log .msg-staff .bubble").last).to_have_text(filled, timeout=TIMEOUT_MS)
    finally:
        staff_context.close()
        patient_context.close()
