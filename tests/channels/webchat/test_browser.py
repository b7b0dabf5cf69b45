"""The chat page in a real browser: a real server with its workers, driven by headless Chromium."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import IN_CI, reset_caches

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]  # fmt: skip
REPLY_TIMEOUT_MS = 10_000


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the browser test must run)")
    pytest.skip(reason)


@dataclass
class LiveServer:
    """A uvicorn server on a loopback port, serving the demo clinic from its own SQLite file."""

    url: str
    screenshots: Path


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[LiveServer]:
    import uvicorn

    from bot.db import get_engine, session_scope
    from bot.db.migrate import upgrade_to_head
    from bot.demo import do_seed_demo

    root = tmp_path_factory.mktemp("browser")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLINICBOT_DATABASE_URL", f"sqlite:///{root / 'clinicbot.db'}")
        patch.setenv("CLINICBOT_DATA_DIR", str(model_dir))
        patch.setenv("CLINICBOT_PUBLIC_URL", "http://127.0.0.1")
        reset_caches()
        upgrade_to_head(get_engine())
        with session_scope() as session:
            do_seed_demo(session=session)

        from bot.web.app import create_app

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(create_app(), log_level="warning", access_log=False, timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("the web server did not start")
            time.sleep(0.05)
        try:
            yield LiveServer(url=f"http://127.0.0.1:{port}", screenshots=root)
        finally:
            server.should_exit = True
            thread.join(timeout=15)
            sock.close()
            get_engine().dispose()
            reset_caches()


@pytest.fixture(scope="module")
def browser(live_server: LiveServer) -> Iterator:  # type: ignore[type-arg]
    if not CHROMIUM.exists():
        _unavailable(f"Chromium not found at {CHROMIUM}; install the Debian chromium package")
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as playwright:
        try:
            instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        except Error as error:
            _unavailable(f"Chromium at {CHROMIUM} could not start: {error.message.splitlines()[0]}")
        try:
            yield instance
        finally:
            instance.close()


@dataclass
class Watch:
    """What a page did that it should not: requests off this server, console errors."""

    base: str
    foreign: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def attach(self, page) -> None:  # type: ignore[no-untyped-def]
        page.on("request", lambda r: None if r.url.startswith(self.base) else self.foreign.append(r.url))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))


def _open(browser, live_server: LiveServer, *, width: int, height: int):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": width, "height": height}, locale="en-US")
    page = context.new_page()
    watch = Watch(live_server.url)
    watch.attach(page)
    page.goto(f"{live_server.url}/chat")
    return context, page, watch


def _bot_messages(page):  # type: ignore[no-untyped-def]
    return page.locator("#log .msg-bot")


def _latest_code() -> str:
    from sqlalchemy import select

    from bot.channels.models import OutboxMessage
    from bot.db import session_scope

    with session_scope() as session:
        body = session.scalars(
            select(OutboxMessage.body).where(OutboxMessage.key.like("otp:%")).order_by(OutboxMessage.id.desc())
        ).first()
    assert body is not None, "no code was queued"
    match = re.search(r"\b(\d{6})\b", body)
    assert match is not None
    return match[1]


def _tab_to(page, element_id: str, *, backwards: bool = False, limit: int = 20) -> None:  # type: ignore[no-untyped-def]
    for _ in range(limit):
        if page.evaluate("document.activeElement && document.activeElement.id") == element_id:
            return
        page.keyboard.press("Shift+Tab" if backwards else "Tab")
    raise AssertionError(f"could not reach #{element_id} with the keyboard")


def test_keyboard_only_conversation_with_verification(browser, live_server: LiveServer) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    context, page, watch = _open(browser, live_server, width=1280, height=800)
    try:
        message = page.get_by_label("Message", exact=True)
        expect(message).to_be_focused()
        expect(page.get_by_role("log")).to_have_attribute("aria-live", "polite")

        # A question, typed and sent with Enter: the reply streams in and focus stays in the box.
        page.keyboard.type("what are your hours")
        page.keyboard.press("Enter")
        expect(message).to_have_value("")
        expect(_bot_messages(page)).to_have_count(2, timeout=REPLY_TIMEOUT_MS)
        expect(_bot_messages(page).last).to_contain_text("8 am")
        expect(message).to_be_focused()
        expect(page.locator("#log .msg-you")).to_have_count(1)
        expect(page.locator("#log .msg-you .msg-note")).to_have_count(0)

        # Something unclear: suggestions arrive as buttons; one is reached and pressed by keyboard.
        page.keyboard.type("asdf qwerty zxcv")
        page.keyboard.press("Enter")
        suggestions = page.locator("#log .suggestion")
        expect(suggestions.first).to_be_visible(timeout=REPLY_TIMEOUT_MS)
        count = suggestions.count()
        assert 2 <= count <= 3
        for _ in range(count):
            page.keyboard.press("Shift+Tab")
        expect(suggestions.first).to_be_focused()
        expect(suggestions.first).to_have_text("opening hours")
        page.keyboard.press("Enter")
        expect(page.locator("#log .msg-you .bubble").last).to_have_text("opening hours")
        expect(message).to_be_focused()
        expect(_bot_messages(page)).to_have_count(4, timeout=REPLY_TIMEOUT_MS)
        expect(_bot_messages(page).last).to_contain_text("8 am")
        expect(suggestions.first).to_be_disabled()

        # Before verification no personal information.
        page.keyboard.type("is my lab result back?")
        page.keyboard.press("Enter")
        expect(_bot_messages(page)).to_have_count(5, timeout=REPLY_TIMEOUT_MS)
        expect(_bot_messages(page).last).not_to_contain_text("taking longer")

        # Verify it's me, by keyboard: the dialog takes focus and gives it back.
        _tab_to(page, "verify-open", backwards=True)
        page.keyboard.press("Enter")
        expect(page.get_by_role("dialog")).to_be_visible()
        expect(page.get_by_label("Phone number on file")).to_be_focused()
        page.keyboard.type("(617) 555-0142")
        page.keyboard.press("Tab")
        expect(page.get_by_label("Date of birth")).to_be_focused()
        page.keyboard.type("11021957")
        expect(page.get_by_label("Date of birth")).to_have_value("1957-11-02")
        page.keyboard.press("Enter")
        code_field = page.get_by_label("6-digit code")
        expect(code_field).to_be_focused(timeout=REPLY_TIMEOUT_MS)
        expect(page.get_by_role("status").filter(has_text="6-digit code")).to_be_visible()
        page.keyboard.type(_latest_code())
        page.keyboard.press("Enter")
        expect(page.get_by_role("dialog")).to_be_hidden(timeout=REPLY_TIMEOUT_MS)
        expect(page.locator("#identity-verified")).to_contain_text("Verified: Jim")
        expect(message).to_be_focused()
        expect(_bot_messages(page).last).to_contain_text("You're verified", timeout=REPLY_TIMEOUT_MS)

        page.keyboard.type("is my lab result back?")
        page.keyboard.press("Enter")
        expect(page.locator("#log")).to_contain_text("taking longer than expected", timeout=REPLY_TIMEOUT_MS)

        # A reload replays the whole conversation from the server, once.
        page.reload()
        expect(page.locator("#log .msg-you")).to_have_count(5, timeout=REPLY_TIMEOUT_MS)
        expect(page.locator("#log")).to_contain_text("taking longer than expected")
        expect(page.locator("#identity-verified")).to_be_visible()
        page.screenshot(path=str(live_server.screenshots / "chat-desktop.png"), full_page=True)
        assert watch.foreign == [] and watch.errors == []
    finally:
        context.close()


def test_phone_width_shows_the_box_and_send_button(browser, live_server: LiveServer) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    context, page, watch = _open(browser, live_server, width=375, height=812)
    try:
        message = page.get_by_label("Message", exact=True)
        send = page.get_by_role("button", name="Send", exact=True)
        for control in (message, send, page.get_by_role("button", name="Verify it's me")):
            expect(control).to_be_visible()
            box = control.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
            assert box["y"] >= 0 and box["y"] + box["height"] <= 812
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        message.fill("where are you located")
        send.click()
        expect(_bot_messages(page)).to_have_count(2, timeout=REPLY_TIMEOUT_MS)
        expect(_bot_messages(page).last).to_contain_text("Riverside Ave")
        expect(message).to_be_focused()
        page.screenshot(path=str(live_server.screenshots / "chat-375.png"))
        page.get_by_role("button", name="Verify it's me").click()
        page.screenshot(path=str(live_server.screenshots / "chat-375-verify.png"))
        assert watch.foreign == [] and watch.errors == []
    finally:
        context.close()


def test_spanish_page(browser, live_server: LiveServer) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 800, "height": 900}, locale="es-US")
    page = context.new_page()
    try:
        page.goto(f"{live_server.url}/chat")
        expect(page.get_by_role("button", name="Enviar", exact=True)).to_be_visible()
        page.get_by_label("Mensaje", exact=True).fill("¿a qué hora abren mañana?")
        page.keyboard.press("Enter")
        expect(_bot_messages(page)).to_have_count(2, timeout=REPLY_TIMEOUT_MS)
        expect(_bot_messages(page).last.locator(".who")).to_have_text("Asistente")
        assert page.get_by_label("Mensaje", exact=True).input_value() == ""
        page.screenshot(path=str(live_server.screenshots / "chat-es.png"))
    finally:
        context.close()
