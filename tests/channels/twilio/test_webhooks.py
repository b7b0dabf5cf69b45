"""Twilio webhooks: signatures (behind a proxy too), malformed requests, duplicates, replies, status callbacks."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from bot.channels import outbox
from bot.channels.models import OutboxPart, OutboxStatus
from bot.conversations.models import Conversation, Direction, Handoff, Message
from bot.db import session_scope
from bot.patients.service import get_or_create_identity
from tests.channels.twilio.conftest import (
    CLINIC_NUMBER,
    JIM,
    PUBLIC_URL,
    STRANGER,
    SmsApp,
    new_sid,
    outbox_rows,
    sign,
    twilio_env,
)
from tests.fakes.fake_twilio import FakeTwilio

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def inbound_count() -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(Message).where(Message.direction == Direction.IN)) or 0


def test_a_text_in_gets_exactly_one_reply(sms_app: SmsApp) -> None:
    response = sms_app.text_in("what time do you open today?")
    sms_app.settle()
    sent = sms_app.fake.messages
    (row,) = outbox_rows()
    assert (response.status_code, response.text, response.headers["content-type"].split(";")[0]) == (
        200, EMPTY_TWIML, "text/xml",
    )  # fmt: skip
    assert [(m.to, m.from_, m.status_callback) for m in sent] == [
        (JIM, CLINIC_NUMBER, PUBLIC_URL + "/webhooks/twilio/status")
    ]
    assert "Riverside Family Clinic is open" in sent[0].body
    assert (row.status, row.provider_message_id, row.body) == (OutboxStatus.SENT, sent[0].sid, sent[0].body)


def test_signatures_are_checked_and_refusals_store_nothing(sms_app: SmsApp) -> None:
    pairs = [("MessageSid", new_sid()), ("From", JIM), ("To", CLINIC_NUMBER), ("Body", "hello")]
    url = PUBLIC_URL + "/webhooks/twilio/sms"
    missing = sms_app.post("/webhooks/twilio/sms", pairs, signature="")
    wrong_token = sms_app.post("/webhooks/twilio/sms", pairs, token="not-the-token")
    tampered = sms_app.post(
        "/webhooks/twilio/sms",
        [*pairs[:3], ("Body", "tampered")],
        signature=sign(token=sms_app.fake.auth_token, url=url, pairs=pairs),
    )
    statuses = [missing.status_code, wrong_token.status_code, tampered.status_code]
    sms_app.settle()
    assert (statuses, inbound_count(), sms_app.fake.messages) == ([403, 403, 403], 0, [])
    valid = sms_app.post("/webhooks/twilio/sms", pairs)
    assert (valid.status_code, inbound_count()) == (200, 1)


def test_the_signature_covers_the_public_url_behind_a_tls_proxy(sms_app: SmsApp) -> None:
    pairs = [("MessageSid", new_sid()), ("From", JIM), ("To", CLINIC_NUMBER), ("Body", "hello")]
    # Twilio called https://bot.riverside.example; the app itself is reached over http inside.
    inside = sms_app.post("/webhooks/twilio/sms", pairs, signed_url="http://testserver/webhooks/twilio/sms")
    public = sms_app.post("/webhooks/twilio/sms", pairs)
    with_query = sms_app.post(
        "/webhooks/twilio/sms", [("MessageSid", new_sid()), *pairs[1:]], query="clinic=riverside&x=1"
    )
    query_unsigned = sms_app.post(
        "/webhooks/twilio/sms",
        [("MessageSid", new_sid()), *pairs[1:]],
        query="clinic=riverside",
        signed_url=PUBLIC_URL + "/webhooks/twilio/sms",
    )
    assert [inside.status_code, public.status_code, with_query.status_code, query_unsigned.status_code] == [
        403, 200, 200, 403,
    ]  # fmt: skip
    assert inbound_count() == 2


def test_repeated_form_keys_are_all_signed(sms_app: SmsApp) -> None:
    base = [("MessageSid", new_sid()), ("From", JIM), ("To", CLINIC_NUMBER), ("Body", "hello")]
    pairs = [*base, ("AddOns", "b-second"), ("AddOns", "a-first")]
    url = PUBLIC_URL + "/webhooks/twilio/sms"
    only_one = sms_app.post(
        "/webhooks/twilio/sms", pairs, signature=sign(token=sms_app.fake.auth_token, url=url, pairs=pairs[:-1])
    )
    all_values = sms_app.post("/webhooks/twilio/sms", pairs)
    assert (only_one.status_code, all_values.status_code, inbound_count()) == (403, 200, 1)


def test_without_an_auth_token_the_endpoints_are_off(make_app, fake_twilio: FakeTwilio) -> None:  # type: ignore[no-untyped-def]
    app = SmsApp(harness=make_app(**twilio_env(fake_twilio, TWILIO_AUTH_TOKEN="")), fake=fake_twilio)
    # Signed with the token Twilio would use: still refused, because nothing can verify it.
    inbound = app.text_in("hello")
    status = app.status(new_sid(), "delivered")
    assert (inbound.status_code, status.status_code, inbound_count()) == (404, 404, 0)
    assert "sms" not in app.harness.workers.channels


def test_malformed_webhooks_answer_400_naming_the_field(sms_app: SmsApp) -> None:
    good = {"MessageSid": new_sid(), "From": JIM, "To": CLINIC_NUMBER, "Body": "hello", "NumMedia": "0"}
    cases = {
        "MessageSid": {k: v for k, v in good.items() if k != "MessageSid"},
        "From": {k: v for k, v in good.items() if k != "From"},
        "Body": {k: v for k, v in good.items() if k != "Body"},
        "From:": good | {"From": "12"},
        "NumMedia:": good | {"NumMedia": "lots"},
        "MediaUrl0": good | {"NumMedia": "1"},
    }
    answers = {}
    for field, form in cases.items():
        response = sms_app.post("/webhooks/twilio/sms", list(form.items()))
        answers[field] = (response.status_code, field.rstrip(":") in response.json()["detail"], "Traceback" in response.text)
    assert answers == {field: (400, True, False) for field in cases}
    bad_status = sms_app.post("/webhooks/twilio/status", [("MessageSid", new_sid())])
    assert (bad_status.status_code, bad_status.json()["detail"]) == (400, "missing form field MessageStatus")
    assert inbound_count() == 0


def test_a_message_sid_that_is_empty_or_could_not_be_stored_is_a_400_naming_it(sms_app: SmsApp) -> None:
    sids = ["", " ", "SM\x00" + "ab" * 16, "SM" + "a" * 127, "SM 12", "SMé12"]
    answers = [sms_app.text_in(f"message {i}", extra=(("MessageSid", sid),)) for i, sid in enumerate(sids)]
    statuses = [sms_app.status(sid, "delivered") for sid in sids]
    sms_app.settle()

    detail = "form field MessageSid: must be 1 to 128 printable ASCII characters"
    assert [(a.status_code, a.json()["detail"]) for a in (*answers, *statuses)] == [(400, detail)] * 12
    assert (inbound_count(), sms_app.fake.messages) == (0, [])
    longest = "SM" + "a" * 126
    assert [sms_app.text_in("hello", extra=(("MessageSid", longest),)).status_code for _ in range(2)] == [200, 200]
    assert inbound_count() == 1


def test_a_field_we_read_sent_twice_is_a_400_naming_it_and_the_signature_still_covers_both(sms_app: SmsApp) -> None:
    good = [("MessageSid", new_sid()), ("From", JIM), ("To", CLINIC_NUMBER), ("Body", "hello"), ("NumMedia", "0")]
    repeats = {"MessageSid": new_sid(), "From": STRANGER, "Body": "goodbye", "NumMedia": "0"}
    answers = {name: sms_app.post("/webhooks/twilio/sms", [*good, (name, value)]) for name, value in repeats.items()}
    unsigned_repeat = sms_app.post("/webhooks/twilio/sms", [*good, ("Body", "goodbye")],
                                   signature=sign(token=sms_app.fake.auth_token, url=PUBLIC_URL + "/webhooks/twilio/sms",
                                                  pairs=good))  # fmt: skip
    status = [("MessageSid", new_sid()), ("MessageStatus", "delivered"), ("MessageStatus", "failed")]
    repeated_status = sms_app.post("/webhooks/twilio/status", status)

    assert {name: (a.status_code, a.json()["detail"]) for name, a in answers.items()} == {
        name: (400, f"form field {name}: sent 2 times") for name in repeats
    }
    assert (unsigned_repeat.status_code, repeated_status.json()["detail"]) == (403, "form field MessageStatus: sent 2 times")
    assert inbound_count() == 0


def test_a_webhook_larger_than_twilio_ever_sends_is_a_413_and_nothing_is_stored(sms_app: SmsApp) -> None:
    huge = sms_app.text_in("x" * 5_000_000)
    unsigned = sms_app.post("/webhooks/twilio/sms", [("Body", "x" * 70_000)], signature="")
    # Under the form's cap but longer than a stored text: it would be kept cut short.
    long_body = sms_app.text_in("y" * 20_001)
    status = sms_app.post("/webhooks/twilio/status", [("MessageSid", new_sid()), ("MessageStatus", "sent"),
                                                      ("Extra", "z" * 70_000)])  # fmt: skip
    sms_app.settle()

    assert [(r.status_code, r.json()["detail"]) for r in (huge, unsigned, long_body, status)] == [
        (413, "a Twilio webhook is at most 65,536 bytes"),
        (413, "a Twilio webhook is at most 65,536 bytes"),
        (413, "form field Body: at most 20,000 characters"),
        (413, "a Twilio webhook is at most 65,536 bytes"),
    ]
    assert (inbound_count(), sms_app.fake.messages) == (0, [])


def test_the_longest_text_twilio_sends_is_stored_whole(sms_app: SmsApp) -> None:
    # 1,600 characters, each four bytes of UTF-8 and twelve percent-encoded: about 19 KB of form.
    text = "\U0001f637" * 1_600
    assert sms_app.text_in(text).status_code == 200
    with session_scope() as session:
        assert session.scalars(select(Message.body).where(Message.direction == Direction.IN)).one() == text


def test_a_webhook_that_is_not_a_url_encoded_form_gets_a_clear_4xx(sms_app: SmsApp) -> None:
    pairs = [("MessageSid", new_sid()), ("From", JIM), ("To", CLINIC_NUMBER), ("Body", "hello")]
    signature = sign(token=sms_app.fake.auth_token, url=PUBLIC_URL + "/webhooks/twilio/sms", pairs=pairs)
    as_json = sms_app.client.post("/webhooks/twilio/sms", json=dict(pairs), headers={"X-Twilio-Signature": signature})
    as_upload = sms_app.client.post("/webhooks/twilio/sms", data=dict(pairs), files={"MediaUrl0": ("a.jpg", b"\xff")},
                                    headers={"X-Twilio-Signature": signature})  # fmt: skip
    not_utf8 = sms_app.client.post(
        "/webhooks/twilio/sms", content=b"Body=%FF%FE&From=" + JIM.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8", "X-Twilio-Signature": signature},
    )  # fmt: skip
    answers = [(r.status_code, r.json()["detail"]) for r in (as_json, as_upload, not_utf8)]
    assert answers == [
        (415, "a Twilio webhook is application/x-www-form-urlencoded"),
        (415, "a Twilio webhook is application/x-www-form-urlencoded"),
        (400, "the form is not valid UTF-8"),
    ]
    assert inbound_count() == 0


def test_a_duplicate_webhook_is_stored_once_and_answered_once(sms_app: SmsApp) -> None:
    sid = new_sid()
    first = sms_app.text_in("where are you located?", sid=sid)
    again = sms_app.text_in("where are you located?", sid=sid)
    sms_app.settle()
    assert (first.status_code, again.status_code, inbound_count(), len(sms_app.fake.messages)) == (200, 200, 1, 1)


def test_the_sender_number_is_normalised(sms_app: SmsApp) -> None:
    sms_app.text_in("hi", sender="(617) 555-0123")
    sms_app.settle()
    assert [m.to for m in sms_app.fake.messages] == [STRANGER]


def test_status_callbacks_only_move_forward_and_keep_error_codes(sms_app: SmsApp) -> None:
    sms_app.text_in("what are your hours?")
    sms_app.text_in("where are you located?")
    sms_app.settle()
    first, second = (m.sid for m in sms_app.fake.messages)
    answers = [
        sms_app.status(first, "delivered").status_code,
        sms_app.status(first, "sent").status_code,  # late: must not undo "delivered"
        sms_app.status(second, "undelivered", error_code="30003").status_code,
        sms_app.status(second, "sent").status_code,
        sms_app.status(new_sid(), "delivered").status_code,  # not ours: acknowledged, ignored
    ]
    rows = {row.provider_message_id: (row.status, row.error_code) for row in outbox_rows()}
    assert answers == [204] * 5
    assert rows == {first: (OutboxStatus.DELIVERED, None), second: (OutboxStatus.UNDELIVERED, "30003")}


# Long enough for three messages of at most three segments each.
THREE_PART_TEXT = " ".join(
    f"Step {n}: bring your insurance card, a photo ID and the list of medicines you take every day."
    for n in range(1, 12)
)


def split_text_sent(sms_app: SmsApp) -> list[str]:
    """Queue a long text, send it, and return its parts' Twilio ids, in order."""
    with session_scope() as session:
        identity = get_or_create_identity(session=session, channel="sms", address=JIM)
        outbox.enqueue(session=session, key="test:split", identity=identity, body=THREE_PART_TEXT)
    sms_app.settle()
    return [m.sid for m in sms_app.fake.messages]


def test_status_callbacks_for_the_later_parts_of_a_long_text_count(
    sms_app: SmsApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    first, second, third = split_text_sent(sms_app)
    seen = []
    for sid, status in [(third, "delivered"), (first, "delivered"), (second, "sent"), (third, "sent"),
                        (second, "delivered"), (second, "sent")]:  # fmt: skip
        answer = sms_app.status(sid, status)
        (row,) = outbox_rows()
        seen.append((answer.status_code, row.status))
    assert seen == [
        (204, OutboxStatus.SENT),  # part 3 first: recorded, the text is not delivered yet
        (204, OutboxStatus.SENT),  # part 1, the row's own id: not yet either
        (204, OutboxStatus.SENT),
        (204, OutboxStatus.SENT),  # late for part 3: it stays delivered
        (204, OutboxStatus.DELIVERED),  # every part delivered
        (204, OutboxStatus.DELIVERED),  # late: never undoes it
    ]
    assert f"twilio status delivered for {third} (applied)" in caplog.text
    # A message that is not ours (or not yet) is still acknowledged and logged, and changes no text: a status
    # that could move a text whose send is not recorded yet is kept for it, another is ignored.
    stranger = new_sid()
    assert sms_app.status(stranger, "undelivered", error_code="30003").status_code == 204
    assert sms_app.status(stranger, "sent").status_code == 204
    assert f"twilio status undelivered for unknown message {stranger} kept until its text is recorded" in caplog.text
    assert f"twilio status for unknown message {stranger} ignored" in caplog.text
    assert [(row.status, row.error_code) for row in outbox_rows()] == [(OutboxStatus.DELIVERED, None)]


def test_a_later_part_undelivered_after_the_first_delivered_makes_the_text_so(sms_app: SmsApp) -> None:
    first, second, third = split_text_sent(sms_app)
    answers = [
        sms_app.status(first, "delivered").status_code,
        sms_app.status(second, "undelivered", error_code="30003").status_code,
        sms_app.status(third, "delivered").status_code,
    ]
    (row,) = outbox_rows()
    assert answers == [204] * 3
    assert (row.status, row.error_code) == (OutboxStatus.UNDELIVERED, "30003")


def texts_sent(sms_app: SmsApp, count: int) -> list[str]:
    """Queue short texts to one patient, send them, and return their Twilio ids, in order."""
    with session_scope() as session:
        identity = get_or_create_identity(session=session, channel="sms", address=JIM)
        for number in range(count):
            outbox.enqueue(session=session, key=f"test:short:{number}", identity=identity, body=f"Note {number}.")
    sms_app.settle()
    return [m.sid for m in sms_app.fake.messages]


def test_a_failure_is_final_and_a_delivery_is_never_undone_by_a_late_failure(sms_app: SmsApp) -> None:
    failed, undelivered, read = texts_sent(sms_app, 3)
    answers = [
        sms_app.status(failed, "failed", error_code="30007").status_code,
        sms_app.status(failed, "read").status_code,  # late and contradictory: the text did not arrive
        sms_app.status(failed, "delivered").status_code,
        sms_app.status(undelivered, "undelivered", error_code="30003").status_code,
        sms_app.status(undelivered, "read").status_code,
        sms_app.status(read, "read").status_code,
        sms_app.status(read, "failed").status_code,  # late: the patient has read it
        sms_app.status(read, "delivered").status_code,  # late: read is further on than delivered
    ]
    rows = {row.provider_message_id: (row.status, row.error_code) for row in outbox_rows()}
    assert answers == [204] * 8
    assert rows == {
        failed: (OutboxStatus.FAILED, "30007"),
        undelivered: (OutboxStatus.UNDELIVERED, "30003"),
        read: (OutboxStatus.READ, None),
    }


def test_an_error_code_is_kept_only_with_the_status_it_came_with(sms_app: SmsApp) -> None:
    delivered, late_sent, undelivered, repeated = texts_sent(sms_app, 4)
    answers = [
        sms_app.status(delivered, "delivered").status_code,
        sms_app.status(delivered, "undelivered", error_code="30003").status_code,  # late: not this text's code
        sms_app.status(late_sent, "delivered").status_code,
        sms_app.status(late_sent, "sent", error_code="30008").status_code,
        sms_app.status(undelivered, "undelivered", error_code="30003").status_code,
        sms_app.status(undelivered, "sent").status_code,  # no code: the one on record stays
        sms_app.status(undelivered, "failed", error_code="30008").status_code,  # the undelivered stands, and its code
        sms_app.status(repeated, "undelivered").status_code,
        sms_app.status(repeated, "undelivered", error_code="30005").status_code,  # Twilio's retry, with the code
        sms_app.status(repeated, "undelivered").status_code,
    ]
    rows = {row.provider_message_id: (row.status, row.error_code) for row in outbox_rows()}
    assert answers == [204] * 10
    assert rows == {
        delivered: (OutboxStatus.DELIVERED, None),
        late_sent: (OutboxStatus.DELIVERED, None),
        undelivered: (OutboxStatus.UNDELIVERED, "30003"),
        repeated: (OutboxStatus.UNDELIVERED, "30005"),
    }


def parts_of_the_text() -> list[tuple[str, str | None]]:
    with session_scope() as session:
        return [tuple(p) for p in session.execute(select(OutboxPart.status, OutboxPart.error_code).order_by(OutboxPart.part))]  # type: ignore[misc]


def test_a_parts_error_code_is_kept_only_with_the_status_it_came_with(sms_app: SmsApp) -> None:
    first, second, third = split_text_sent(sms_app)
    for sid, status, code in [(second, "undelivered", None), (second, "undelivered", "30003"),
                              (third, "delivered", None), (third, "undelivered", "30005"), (second, "sent", None)]:  # fmt: skip
        assert sms_app.status(sid, status, error_code=code).status_code == 204
    (row,) = outbox_rows()
    assert (row.status, row.error_code) == (OutboxStatus.UNDELIVERED, "30003")
    assert parts_of_the_text() == [("sent", None), ("undelivered", "30003"), ("delivered", None)]


def test_a_status_twilio_does_not_document_is_a_400_naming_message_status(sms_app: SmsApp) -> None:
    sms_app.text_in("what are your hours?")
    sms_app.settle()
    (sid,) = (m.sid for m in sms_app.fake.messages)
    bogus = [sms_app.status(sid, status) for status in ("bogus", "Delivered", "cancelled", "pending", " sent")]
    error_codes = [sms_app.status(sid, "undelivered", error_code=code) for code in ("3" * 33, "300\x0003")]

    assert [(r.status_code, r.json()["detail"]) for r in (*bogus, *error_codes)] == [
        *[(400, "form field MessageStatus: not a status Twilio documents")] * 5,
        *[(400, "form field ErrorCode: must be 1 to 32 printable ASCII characters")] * 2,
    ]
    assert [(row.status, row.error_code) for row in outbox_rows()] == [(OutboxStatus.SENT, None)]


def test_every_status_twilio_documents_is_acknowledged(sms_app: SmsApp) -> None:
    sms_app.text_in("what are your hours?")
    sms_app.settle()
    (sid,) = (m.sid for m in sms_app.fake.messages)
    statuses = ["queued", "sending", "sent", "delivered", "undelivered", "failed", "read", "accepted", "scheduled",
                "canceled", "receiving", "received", "partially_delivered"]  # fmt: skip
    answers = [sms_app.status(sid, status).status_code for status in statuses]

    assert answers == [204] * len(statuses)
    assert [row.status for row in outbox_rows()] == [OutboxStatus.READ]


def test_a_picture_goes_to_staff_with_its_link(sms_app: SmsApp) -> None:
    url = f"https://api.twilio.com/2010-04-01/Accounts/{sms_app.fake.account_sid}/Messages/MM1/Media/ME1"
    sms_app.text_in("", extra=(("NumMedia", "1"), ("MediaUrl0", url), ("MediaContentType0", "image/jpeg")))
    sms_app.settle()
    with session_scope() as session:
        stored = session.execute(select(Message.body, Message.media).where(Message.direction == Direction.IN)).one()
        handoff = session.scalars(select(Handoff)).one()
        conversation = session.get(Conversation, handoff.conversation_id)
        state = conversation.state
    (reply,) = sms_app.fake.messages
    assert (tuple(stored), handoff.reason, handoff.team, state) == (("", [url]), "human", "front_desk", "waiting")
    assert reply.body.startswith("OK, I've passed your message to our front desk team.")


def test_staff_open_a_patients_picture_through_the_server_and_the_view_is_audited(sms_app: SmsApp) -> None:
    from bot.staff.models import AuditEvent
    from tests.staff.conftest import sign_in

    picture = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    page_url = sms_app.fake.add_media(b"<script>alert(1)</script>", "text/html")
    picture_url = sms_app.fake.add_media(picture, "image/png")
    sms_app.text_in("is this normal?", extra=(("NumMedia", "2"), ("MediaUrl0", picture_url), ("MediaContentType0", "image/png"),
                                              ("MediaUrl1", page_url), ("MediaContentType1", "text/html")))  # fmt: skip
    sms_app.settle()
    with session_scope() as session:
        message = session.scalars(select(Message).where(Message.direction == Direction.IN)).one()
    # The public URL is https (behind a TLS proxy): the staff session cookie is Secure.
    client = TestClient(sms_app.client.app, base_url="https://testserver")
    assert client.get(f"/staff/messages/{message.id}/media/0", follow_redirects=False).status_code in (303, 401)
    sign_in(client)
    page = client.get(f"/staff/conversations/{message.conversation_id}").text
    assert f'href="/staff/messages/{message.id}/media/0"' in page and "Open attachment 2" in page
    assert picture_url not in page  # staff open files through the server, not the provider's link

    shown = client.get(f"/staff/messages/{message.id}/media/0")
    assert (shown.status_code, shown.content, shown.headers["content-type"]) == (200, picture, "image/png")
    assert shown.headers["cache-control"] == "no-store" and "sandbox" in shown.headers["content-security-policy"]
    # Twilio's file store is another host: the account's credentials never go there.
    assert sms_app.fake.media_store_saw_credentials is False
    # A kind a browser could run is downloaded, never shown.
    downloaded = client.get(f"/staff/messages/{message.id}/media/1")
    assert (downloaded.headers["content-type"], downloaded.headers["content-disposition"].split(";")[0]) == (
        "application/octet-stream", "attachment")  # fmt: skip
    assert client.get(f"/staff/messages/{message.id}/media/2").status_code == 404
    with session_scope() as session:
        views = session.execute(select(AuditEvent.subject_id, AuditEvent.outcome)
                                .where(AuditEvent.action == "patient.attachment_viewed").order_by(AuditEvent.id)).all()  # fmt: skip
    assert [tuple(v) for v in views] == [(str(message.id), "ok"), (str(message.id), "ok"), (str(message.id), "not_found")]


def test_a_photo_with_a_medical_question_goes_to_clinicians_and_front_desk_cannot_open_it(sms_app: SmsApp) -> None:
    from bot.staff.models import AuditEvent
    from tests.staff.conftest import DEMO_CLINICIAN_EMAIL, DEMO_STAFF_EMAIL, sign_in

    url = sms_app.fake.add_media(b"\xff\xd8\xff rash", "image/jpeg")
    sms_app.text_in("is this rash on my arm something to worry about?", extra=(("NumMedia", "1"), ("MediaUrl0", url)))
    sms_app.settle()
    with session_scope() as session:
        message = session.scalars(select(Message).where(Message.direction == Direction.IN)).one()
        handoff = session.scalars(select(Handoff)).one()
    assert (handoff.reason, handoff.team) == ("medical", "nurse")
    front_desk = TestClient(sms_app.client.app, base_url="https://testserver")
    sign_in(front_desk, email=DEMO_STAFF_EMAIL)
    assert front_desk.get(f"/staff/messages/{message.id}/media/0").status_code == 403
    clinician = TestClient(sms_app.client.app, base_url="https://testserver")
    sign_in(clinician, email=DEMO_CLINICIAN_EMAIL)
    assert clinician.get(f"/staff/messages/{message.id}/media/0").content == b"\xff\xd8\xff rash"
    with session_scope() as session:
        outcomes = session.scalars(select(AuditEvent.outcome).where(AuditEvent.action == "patient.attachment_viewed")
                                   .order_by(AuditEvent.id)).all()  # fmt: skip
    assert outcomes == ["denied", "ok"]


def test_an_attachment_twilio_no_longer_has_is_a_clear_error_for_staff(sms_app: SmsApp) -> None:
    from tests.staff.conftest import sign_in

    url = sms_app.fake.add_media(b"x", "image/jpeg").replace("/Media/ME", "/Media/MX")
    sms_app.text_in("", extra=(("NumMedia", "1"), ("MediaUrl0", url)))
    sms_app.settle()
    with session_scope() as session:
        message_id = session.scalars(select(Message.id).where(Message.direction == Direction.IN)).one()
    client = TestClient(sms_app.client.app, base_url="https://testserver")
    sign_in(client)
    answer = client.get(f"/staff/messages/{message_id}/media/0")
    assert answer.status_code == 502 and "Twilio answered 404" in answer.text


def test_an_attachment_on_a_channel_this_server_has_off_says_so(sms_app: SmsApp) -> None:
    from bot.channels.inbound import InboundText, do_accept_inbound
    from tests.staff.conftest import sign_in

    # A Telegram photo stored while Telegram was on; this server now runs with SMS only.
    with session_scope() as session:
        accepted = do_accept_inbound(session=session, inbound=InboundText(
            channel="telegram", address="4242", text="", provider_message_id="update:1",
            media_urls=("telegram:photo:AgAD",)))  # fmt: skip
    client = TestClient(sms_app.client.app, base_url="https://testserver")
    sign_in(client)
    answer = client.get(f"/staff/messages/{accepted.message_id}/media/0")
    assert answer.status_code == 503 and "Telegram channel is off on this server" in answer.text


def test_typed_text_that_looks_like_an_attachment_is_only_text(sms_app: SmsApp) -> None:
    # Attachments come from Twilio's signed MediaUrl fields, never from what a patient types.
    sms_app.text_in("what are your hours\n[media] https://example.com/x.jpg")
    sms_app.settle()
    with session_scope() as session:
        stored = session.execute(select(Message.body, Message.media, Message.route).where(Message.direction == Direction.IN)).one()
        handoffs = session.scalars(select(Handoff)).all()
    assert (tuple(stored), handoffs) == (("what are your hours\n[media] https://example.com/x.jpg", None, "answer"), [])
