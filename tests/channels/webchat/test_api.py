"""The web chat API on real databases: messages, the event stream, limits and the same-origin check."""

from __future__ import annotations

from sqlalchemy import func, select

from bot.channels import outbox
from bot.channels.models import OutboxMessage, OutboxStatus
from bot.conversations.models import Direction, Message
from bot.conversations.service import open_conversation, store_inbound
from bot.db import session_scope, utcnow
from bot.patients.models import ChannelIdentity
from bot.patients.service import get_or_create_identity
from bot.web.routers.webchat import COOKIE_NAME, MAX_EMERGENCY_TEXT_CHARS, address_for
from tests.channels.webchat.conftest import ORIGIN, Visitor


def test_page_is_accessible_and_sets_a_private_session_cookie(make_app) -> None:
    harness = make_app()
    response = harness.client.get("/chat")
    assert response.status_code == 200
    html = response.text
    assert 'role="log"' in html and 'aria-live="polite"' in html
    assert '<label for="message"' in html and ">Message</label>" in html
    assert ">Send</button>" in html and "Verify it&#39;s me" in html
    assert "Riverside Family Clinic" in html and "Call 911 now" in html
    assert "https://" not in html.split("<body>")[0], "no external assets in the head"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=")
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path"} <= flags and "secure" not in flags
    assert "samesite=lax" in cookie.lower() and "max-age" not in cookie.lower()
    assert len(harness.client.cookies[COOKIE_NAME]) == 32
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
    assert harness.client.get("/static/chat/chat.js").status_code == 200
    assert harness.client.get("/static/chat/chat.css").status_code == 200


def test_cookie_is_secure_when_the_public_url_is_https(make_app) -> None:
    harness = make_app(CLINICBOT_PUBLIC_URL="https://chat.riverside.example")
    cookie = harness.client.get("/chat").headers["set-cookie"]
    assert "secure" in cookie.lower()


LANGUAGE_CASES = [("?lang=es", "", "Enviar"), ("", "es-US,es;q=0.9,en;q=0.5", "Enviar"), ("", "fr,en;q=0.8", "Send"),
                  ("?lang=en", "es", "Send"), ("", "en;q=0.4,es;q=0.6", "Enviar"), ("", "", "Send")]  # fmt: skip


def test_page_speaks_english_or_spanish(make_app) -> None:
    harness = make_app()
    for query, accept_language, expected in LANGUAGE_CASES:
        response = harness.client.get(f"/chat{query}", headers={"Accept-Language": accept_language})
        assert f">{expected}</button>" in response.text, (query, accept_language)
        assert f'<html lang="{"es" if expected == "Enviar" else "en"}">' in response.text


def test_anonymous_question_gets_a_reply_on_the_event_stream(visitor: Visitor) -> None:
    response = visitor.say("what are your hours", client_message_id="first")
    assert (response.status_code, response.json()) == (202, {"status": "accepted"})
    assert visitor.events() == [("1-0", {"kind": "visitor", "key": visitor.events()[0][1]["key"],
                                         "text": "what are your hours", "client_message_id": "first"})]  # fmt: skip
    visitor.app.settle()
    events = visitor.events()
    assert [data["kind"] for _, data in events] == ["visitor", "reply"]
    reply = events[1][1]
    assert "8 am" in reply["text"] and reply["author"] == "bot"
    # The session id itself is never stored: the identity address is its hash.
    with session_scope() as session:
        identity = session.scalars(select(ChannelIdentity).where(ChannelIdentity.channel == "webchat")).one()
    assert identity.address == address_for(visitor.client.cookies[COOKIE_NAME])
    assert identity.patient_id is None


def test_reconnecting_with_last_event_id_misses_nothing_and_repeats_nothing(visitor: Visitor) -> None:
    visitor.say("hello")
    visitor.app.settle()
    first = visitor.events()
    last_id = first[-1][0]
    visitor.say("where are you located")
    visitor.say("what are your hours")
    visitor.app.settle()
    rest = visitor.events(last_event_id=last_id)
    everything = visitor.events()
    assert first + rest == everything
    assert len({data["key"] for _, data in everything}) == len(everything)
    assert [data["kind"] for _, data in rest] == ["visitor", "visitor", "reply", "reply"]
    assert visitor.events(last_event_id=everything[-1][0]) == []
    # A malformed Last-Event-ID replays from the start rather than failing.
    assert visitor.events(last_event_id="garbage") == everything


def test_a_reply_is_held_back_until_every_earlier_one_is_delivered(visitor: Visitor) -> None:
    visitor.say("hi")
    visitor.app.settle()
    last_id = visitor.events()[-1][0]
    with session_scope() as session:
        identity = get_or_create_identity(
            session=session, channel="webchat", address=address_for(visitor.client.cookies[COOKIE_NAME])
        )
        first = outbox.enqueue(session=session, key="test:first", identity=identity, body="first")
        second = outbox.enqueue(session=session, key="test:second", identity=identity, body="second")
        assert first is not None and second is not None
        later = session.get(OutboxMessage, second)
        later.status, later.sent_at = OutboxStatus.SENT, utcnow()
    # The later row went out first (as an emergency would); the stream must not skip past the earlier one.
    assert visitor.replies(last_event_id=last_id) == []
    visitor.app.settle()
    assert visitor.replies(last_event_id=last_id) == ["first", "second"]


def test_cancelled_reply_is_passed_over(visitor: Visitor) -> None:
    with session_scope() as session:
        identity = get_or_create_identity(
            session=session, channel="webchat", address=address_for(visitor.client.cookies[COOKIE_NAME])
        )
        dropped = outbox.enqueue(session=session, key="test:dropped", identity=identity, body="dropped")
        outbox.enqueue(session=session, key="test:kept", identity=identity, body="kept")
        assert dropped is not None
        session.get(OutboxMessage, dropped).status = OutboxStatus.CANCELLED
    visitor.app.settle()
    assert visitor.replies() == ["kept"]


def test_double_submit_is_stored_once(visitor: Visitor) -> None:
    assert visitor.say("what are your hours", client_message_id="same-id").json() == {"status": "accepted"}
    assert visitor.say("what are your hours", client_message_id="same-id").json() == {"status": "duplicate"}
    visitor.app.settle()
    with session_scope() as session:
        inbound = session.scalar(select(func.count()).where(Message.direction == Direction.IN))
        outbound = session.scalar(select(func.count()).where(Message.direction == Direction.OUT))
    assert (inbound, outbound) == (1, 1)
    assert [data["kind"] for _, data in visitor.events()] == ["visitor", "reply"]


def test_the_same_client_id_from_two_sessions_is_two_messages(make_app) -> None:
    harness = make_app()
    for _ in range(2):
        harness.client.cookies.clear()
        harness.client.get("/chat")
        assert Visitor(harness).say("hello", client_message_id="abc").json() == {"status": "accepted"}


def test_a_message_stored_under_the_earlier_dedupe_id_is_still_a_duplicate(visitor: Visitor) -> None:
    # Stored before the dedupe id was the identity's: the session's address hash prefix and the client id.
    address = address_for(visitor.client.cookies[COOKIE_NAME])
    with session_scope() as session:
        identity = get_or_create_identity(session=session, channel="webchat", address=address)
        store_inbound(session=session, conversation=open_conversation(session=session, identity=identity),
                      text="hello", provider_message_id=f"{address[:32]}:old-id")  # fmt: skip
    assert visitor.say("hello", client_message_id="old-id").json() == {"status": "duplicate"}
    assert visitor.say("hello", client_message_id="new-id").json() == {"status": "accepted"}
    with session_scope() as session:
        assert session.scalars(select(Message.provider_message_id).order_by(Message.id)).all() == [
            f"{address[:32]}:old-id", f"i{identity.id}:new-id"
        ]
    visitor.app.settle()


INVALID_MESSAGES = [
    ({"client_message_id": "a"}, "text"),
    ({"text": "", "client_message_id": "a"}, "text"),
    ({"text": "   ", "client_message_id": "a"}, "text"),
    ({"text": "\u0007\u200b\u202e \x00", "client_message_id": "a"}, "text"),  # nothing left once stored
    ({"text": "x" * 2001, "client_message_id": "a"}, "text"),
    ({"text": 42, "client_message_id": "a"}, "text"),
    ({"text": "hello"}, "client_message_id"),
    ({"text": "hello", "client_message_id": "a" * 65}, "client_message_id"),
    ({"text": "hello", "client_message_id": "a:b"}, "client_message_id"),
]


def test_invalid_message_is_refused_naming_the_field(visitor: Visitor) -> None:
    for body, field in INVALID_MESSAGES:
        response = visitor.client.post("/chat/api/messages", json=body, headers=ORIGIN)
        assert response.status_code == 422, body
        assert response.json()["field"] == field, body
        assert response.json()["detail"].startswith(f"{field}: "), body
    assert visitor.client.post("/chat/api/messages", json={"text": "x" * 2001, "client_message_id": "a"},
                               headers=ORIGIN).json()["detail"] == "text: must be at most 2,000 characters"  # fmt: skip
    assert visitor.client.post("/chat/api/messages", json={"text": "hi"},
                               headers=ORIGIN).json()["detail"] == "client_message_id: is required"  # fmt: skip
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 0


def test_longest_allowed_message_is_accepted(visitor: Visitor) -> None:
    assert visitor.say("x" * 2000).status_code == 202


def test_body_that_is_not_json_is_refused(visitor: Visitor) -> None:
    response = visitor.client.post(
        "/chat/api/messages", content=b"text=hi", headers={**ORIGIN, "Content-Type": "application/x-www-form-urlencoded"}
    )
    assert (response.status_code, response.json()["field"]) == (422, "body")


def test_a_body_nested_too_deep_to_parse_is_refused_not_a_server_error(visitor: Visitor) -> None:
    bodies = [b"[" * 16_000, b'{"text": "hi", "client_message_id": "a", "x": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"]
    answers = [visitor.client.post("/chat/api/messages", content=body, headers={**ORIGIN, "Content-Type": "application/json"})
               for body in bodies]  # fmt: skip
    coded = visitor.client.post("/chat/api/verify/code", content=b"{" + b'"a":{' * 3_000, headers=ORIGIN)

    assert [(a.status_code, a.json()) for a in (*answers, coded)] == [
        (422, {"detail": "body: must be a JSON object, not nested this deep", "field": "body"})
    ] * 3
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 0


FOREIGN_ORIGINS = [{}, {"Origin": "https://evil.example"}, {"Origin": "null"},
                   {"Referer": "https://evil.example/chat"}, {"Origin": "http://testserver.evil.example"},
                   {"Origin": "http://testserver:8080"}, {"Origin": "file://testserver"}]  # fmt: skip


def test_cross_origin_post_is_refused(visitor: Visitor) -> None:
    body = {"text": "what are your hours", "client_message_id": "x"}
    for headers in FOREIGN_ORIGINS:
        response = visitor.client.post("/chat/api/messages", json=body, headers=headers)
        assert response.status_code == 403, headers
        assert "Origin" in response.json()["detail"]
        for path, payload in (("/chat/api/verify/start", {"phone": "+16175550142", "date_of_birth": "1957-11-02"}),
                              ("/chat/api/verify/code", {"code": "123456"}), ("/chat/api/session/end", {})):  # fmt: skip
            assert visitor.client.post(path, json=payload, headers=headers).status_code == 403, (path, headers)
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 0


def test_same_origin_by_host_referer_or_public_url_is_accepted(make_app) -> None:
    harness = make_app(CLINICBOT_PUBLIC_URL="https://chat.riverside.example")
    harness.client.get("/chat")
    visitor = Visitor(harness)
    body = {"text": "hi", "client_message_id": "x"}
    for index, headers in enumerate(
        ({"Origin": "https://chat.riverside.example"}, {"Origin": "http://testserver"},
         {"Referer": "http://testserver/chat?lang=es"})  # fmt: skip
    ):
        response = visitor.client.post("/chat/api/messages", json={**body, "client_message_id": f"x{index}"},
                                       headers=headers)  # fmt: skip
        assert response.status_code == 202, headers


def test_messages_are_rate_limited_per_session(make_app) -> None:
    harness = make_app(CLINICBOT_WEBCHAT_RATE_PER_MINUTE="3")
    harness.client.get("/chat")
    visitor = Visitor(harness)
    assert [visitor.say("hi").status_code for _ in range(3)] == [202, 202, 202]
    refused = visitor.say("hi")
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Another session is not affected.
    harness.client.cookies.clear()
    harness.client.get("/chat")
    assert visitor.say("hi").status_code == 202


def emergency_handling() -> tuple[list[tuple[int, str]], list[int], list[str]]:
    """Return (length, route) of every stored inbound text, the emergency replies' priorities and the alerts."""
    from bot.staff.models import StaffAlert

    with session_scope() as session:
        inbound = session.execute(
            select(func.length(Message.body), Message.route).where(Message.direction == Direction.IN).order_by(Message.id)
        ).all()
        priorities = session.scalars(
            select(OutboxMessage.priority).where(OutboxMessage.bypass_opt_out.is_(True)).order_by(OutboxMessage.id)
        ).all()
        alerts = session.scalars(select(StaffAlert.kind).order_by(StaffAlert.id)).all()
    return [(row[0], row[1]) for row in inbound], list(priorities), list(alerts)


def test_an_emergency_past_the_rate_limit_is_stored_and_answered(make_app) -> None:
    harness = make_app(CLINICBOT_WEBCHAT_RATE_PER_MINUTE="3")
    harness.client.get("/chat")
    visitor = Visitor(harness)
    assert [visitor.say(f"hello {n}").status_code for n in range(4)] == [202, 202, 202, 429]
    # Past the limit an emergency still gets through, and only an emergency.
    assert visitor.say("I can't breathe, my throat is closing").status_code == 202
    assert visitor.say("hello again").status_code == 429
    assert visitor.say("my chest hurts and i can't breathe").status_code == 202
    harness.settle()
    inbound, priorities, alerts = emergency_handling()
    assert [route for _, route in inbound] == ["answer", "answer", "answer", "emergency", "emergency"]
    assert (priorities, alerts) == ([100, 100], ["emergency", "emergency"])
    assert sum("911" in reply for reply in visitor.replies()) == 2


def test_emergencies_past_the_rate_limit_are_bounded_too(make_app, monkeypatch) -> None:
    monkeypatch.setattr("bot.web.routers.webchat.EMERGENCY_RATE_PER_MINUTE", 2)
    harness = make_app(CLINICBOT_WEBCHAT_RATE_PER_MINUTE="1")
    harness.client.get("/chat")
    visitor = Visitor(harness)
    statuses = [visitor.say("I can't breathe").status_code for _ in range(4)]
    assert statuses == [202, 202, 202, 429]  # one within the limit, two past it, then refused
    refused = visitor.say("I can't breathe")
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 60
    harness.settle()


def test_an_emergency_longer_than_a_message_may_be_is_stored_whole_and_answered(visitor: Visitor) -> None:
    text = "I need help. " * 160 + "my chest hurts and I can't breathe"
    assert 2_000 < len(text) <= MAX_EMERGENCY_TEXT_CHARS
    assert visitor.say(text).status_code == 202
    # Not an emergency: refused as before. An emergency past the hard cap: refused too.
    for body in ("I need help. " * 160 + "with my bill", "x" * MAX_EMERGENCY_TEXT_CHARS + " I can't breathe"):
        refused = visitor.client.post("/chat/api/messages", json={"text": body, "client_message_id": "a"}, headers=ORIGIN)
        assert refused.status_code == 422
        assert refused.json() == {"detail": "text: must be at most 2,000 characters", "field": "text"}
    visitor.app.settle()
    inbound, priorities, alerts = emergency_handling()
    assert (inbound, priorities, alerts) == ([(len(text), "emergency")], [100], ["emergency"])
    assert any("911" in reply for reply in visitor.replies())


def test_new_sessions_are_rate_limited_per_ip(make_app) -> None:
    harness = make_app(CLINICBOT_WEBCHAT_RATE_PER_MINUTE="2")
    statuses = []
    for _ in range(3):
        harness.client.cookies.clear()
        statuses.append(harness.client.get("/chat").status_code)
    assert statuses == [200, 200, 429]
    busy = harness.client.get("/chat?lang=es")
    assert busy.status_code == 429 and "Espere un momento" in busy.text and int(busy.headers["Retry-After"]) >= 1
    harness.client.cookies.clear()
    refused = Visitor(harness).say("hi")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1


def test_message_without_a_cookie_starts_a_session(make_app) -> None:
    harness = make_app()
    response = Visitor(harness).say("what are your hours")
    assert response.status_code == 202
    assert COOKIE_NAME in response.cookies
    harness.settle()
    assert any("8 am" in text for text in Visitor(harness).replies())


def test_forged_cookie_value_is_replaced(make_app) -> None:
    harness = make_app()
    harness.client.cookies.set(COOKIE_NAME, "not-a-session", path="/chat")
    response = harness.client.get("/chat")
    assert COOKIE_NAME in response.cookies and response.cookies[COOKIE_NAME] != "not-a-session"


def test_suggestions_arrive_as_buttons(visitor: Visitor) -> None:
    visitor.say("asdf qwerty zxcv")
    visitor.app.settle()
    reply = [data for _, data in visitor.events() if data["kind"] == "reply"][0]
    assert 2 <= len(reply["buttons"]) <= 3
    assert all(set(button) == {"title"} and button["title"] for button in reply["buttons"])
    # Clicking one sends its title as a message.
    assert visitor.say(reply["buttons"][0]["title"]).status_code == 202
    visitor.app.settle()
    assert len([d for _, d in visitor.events() if d["kind"] == "reply"]) >= 2


def test_outbox_rows_of_other_sessions_are_never_streamed(make_app) -> None:
    harness = make_app()
    harness.client.get("/chat")
    Visitor(harness).say("what are your hours")
    harness.settle()
    harness.client.cookies.clear()
    harness.client.get("/chat")
    assert Visitor(harness).events() == []
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(OutboxMessage)) == 1


def test_an_open_chat_polls_beside_a_long_write_without_waiting_for_it(demo_db: str) -> None:
    # Every open chat reads its new events twice a second; queued for SQLite's single writer, a room of
    # visitors would stand in line with the acknowledgements. The read must not wait for a write.
    from bot.web.routers.webchat import Cursor, poll_events
    from tests.db.writes import run_beside_open_write

    finished_while_writing, polled = run_beside_open_write(lambda: poll_events("visitor-x", Cursor(0, 0), None))
    assert finished_while_writing and polled == [([], Cursor(0, 0), None)]
