"""Bad input at scale: random and malformed webhooks, chat messages and lab API calls never get a 5xx,
and a rejected request stores nothing. Fixed example counts, derandomized: the same cases every run."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from bot.channels.models import OutboxMessage
from bot.conversations.models import Conversation, Message
from bot.db import session_scope
from bot.labs.models import LabMessage, LabOrder
from bot.patients.models import ChannelIdentity
from tests.channels.telegram.conftest import SECRET, telegram_env
from tests.channels.twilio.conftest import PUBLIC_URL, sign, twilio_env

EXAMPLES = 150
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
# Each lab API operation is fuzzed with and without a key; fewer cases each keep the whole file near a minute.
API_FUZZ = settings(FUZZ, max_examples=50)
STORED = (Message, ChannelIdentity, Conversation, OutboxMessage, LabOrder, LabMessage)


def snapshot() -> tuple[int, ...]:
    with session_scope() as session:
        return tuple(session.scalar(select(func.count()).select_from(model)) or 0 for model in STORED)


def assert_safe_answer(response: Any, before: tuple[int, ...], *, allowed: set[int]) -> None:
    """No server error; an answer outside `allowed` is a bug; a rejection stores nothing."""
    assert response.status_code < 500, response.text
    assert response.status_code in allowed, (response.status_code, response.text)
    if response.status_code >= 400:
        assert snapshot() == before, f"rejected with {response.status_code} but rows were stored"


# Text that reaches storage: any unicode (NUL included), numbers, phone-shaped strings, long strings.
values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "0", "1", "10", "11", "-1", "1e3", "+16175550142", "+1617555", "6175550142", "\x00",
                     "https://example.org/a.jpg", "x" * 3000]),
)  # fmt: skip
twilio_names = st.one_of(
    st.sampled_from(
        ["MessageSid", "From", "Body", "NumMedia", "MediaUrl0", "MediaUrl1", "To", "AccountSid", "SmsSid"]
    ),
    st.text(max_size=12),
)
twilio_forms = st.lists(st.tuples(twilio_names, values), max_size=10)
# Mostly well-formed texts from real-looking numbers, so that many cases get as far as storage.
phones = st.one_of(
    st.sampled_from(["+16175550142", "+16175550123", "(617) 555-0101", "+447700900123"]), values
)
complete_sms = st.fixed_dictionaries(
    {"MessageSid": st.text(min_size=1, max_size=40), "From": phones, "Body": values},
    optional={"NumMedia": st.sampled_from(["0", "1", "11", "x"]), "MediaUrl0": values},
).map(lambda fields: list(fields.items()))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


def _message_like() -> st.SearchStrategy[dict[str, Any]]:
    chat = st.fixed_dictionaries({"id": st.integers(), "type": st.sampled_from(["private", "group", "x"])})
    message = st.fixed_dictionaries(
        {"message_id": st.integers(), "date": st.integers(), "chat": chat},
        optional={"text": values, "from": json_values, "contact": json_values, "entities": json_values},
    )
    return st.fixed_dictionaries(
        {"update_id": st.integers()}, optional={"message": message, "callback_query": json_values}
    )


telegram_bodies = st.one_of(json_values, _message_like())
chat_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"text": values, "client_message_id": st.one_of(st.uuids().map(lambda u: u.hex), values)}
    ),
)


@pytest.fixture
def sms_client(make_app, fake_twilio):  # type: ignore[no-untyped-def]
    return make_app(**twilio_env(fake_twilio)).client


def test_signed_twilio_webhooks_with_random_fields(sms_client) -> None:  # type: ignore[no-untyped-def]
    @FUZZ
    @given(pairs=st.one_of(twilio_forms, complete_sms))
    def run(pairs: list[tuple[str, str]]) -> None:
        before = snapshot()
        signature = sign(token="test-auth-token-1234", url=PUBLIC_URL + "/webhooks/twilio/sms", pairs=pairs)
        response = sms_client.post(
            "/webhooks/twilio/sms",
            content=urlencode(pairs),
            headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature},
        )
        assert_safe_answer(response, before, allowed={200, 400})

    run()


def test_unsigned_or_badly_signed_twilio_webhooks_store_nothing(sms_client) -> None:  # type: ignore[no-untyped-def]
    @FUZZ
    @given(pairs=st.one_of(twilio_forms, complete_sms), signature=st.one_of(st.none(), st.text(max_size=40)),
           raw=st.one_of(st.none(), st.binary(max_size=200)))  # fmt: skip
    def run(pairs: list[tuple[str, str]], signature: str | None, raw: bytes | None) -> None:
        before = snapshot()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if signature is not None:
            headers["X-Twilio-Signature"] = signature.encode("utf-8")  # type: ignore[assignment]
        body = raw if raw is not None else urlencode(pairs).encode()
        for path in ("/webhooks/twilio/sms", "/webhooks/twilio/status"):
            response = sms_client.post(path, content=body, headers=headers)
            assert_safe_answer(response, before, allowed={400, 403})

    run()


def test_random_telegram_updates_with_the_secret(make_app, fake_telegram) -> None:  # type: ignore[no-untyped-def]
    harness = make_app(**telegram_env(fake_telegram))
    client = harness.client

    @FUZZ
    @given(body=telegram_bodies, raw=st.one_of(st.none(), st.binary(max_size=200)))
    def run(body: Any, raw: bytes | None) -> None:
        before = snapshot()
        content = raw if raw is not None else json.dumps(body).encode()
        response = client.post(
            "/webhooks/telegram", content=content, headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}
        )
        assert_safe_answer(response, before, allowed={200, 400, 413})

    try:
        run()
    finally:
        harness.workers.channels["telegram"].close()


def test_random_web_chat_messages(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app(CLINICBOT_WEBCHAT_RATE_PER_MINUTE="100000").client
    assert client.get("/chat").status_code == 200

    @FUZZ
    @given(body=chat_bodies, raw=st.one_of(st.none(), st.binary(max_size=200)))
    def run(body: Any, raw: bytes | None) -> None:
        before = snapshot()
        content = raw if raw is not None else json.dumps(body).encode()
        response = client.post(
            "/chat/api/messages",
            content=content,
            headers={"Origin": "http://testserver", "Content-Type": "application/json"},
        )
        assert_safe_answer(response, before, allowed={202, 400, 413, 422})

    run()


@pytest.fixture
def lab_api(make_app):  # type: ignore[no-untyped-def]
    """The lab REST API's own OpenAPI schema, loaded from the running app, and a valid API key."""
    from bot.labs.apikeys import do_create_key

    harness = make_app()
    with session_scope() as session:
        _, key = do_create_key(session=session, name="fuzz")
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", harness.client.app)
    return schema, key


def test_lab_api_against_its_openapi_schema(lab_api) -> None:  # type: ignore[no-untyped-def]
    schema, key = lab_api
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} >= {("POST", "/lab-orders")}
    for operation in operations:
        for auth in ({"Authorization": f"Bearer {key}"}, {}):
            fuzz_operation(operation, auth)


def fuzz_operation(operation: Any, auth: dict[str, str]) -> None:
    """Call one API operation with generated requests (with and without a valid key)."""

    @API_FUZZ
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        before = snapshot()
        response = case.call(headers=auth)
        assert_safe_answer(response, before, allowed={200, 201, 400, 401, 404, 409, 413, 415, 422})

    run()


# HL7 field values: any text (NUL, separators and segment breaks included), impossible times, long ids.
hl7_values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "\x00", "^^^", "~", "\\", "&", "x" * 300, "00010101", "99991231235959-1200",
                     "202611201000+2500", "20261120", "19880212", "(617) 555-0142", "F", "X", "CA", "NW"]),
)  # fmt: skip


@st.composite
def hl7_messages(draw: st.DrawFn) -> str:
    """A lab's ORM or ORU with a few fields replaced, sometimes cut short."""
    from tests.labs.conftest import orm, oru

    base = draw(
        st.sampled_from([orm("FUZZ"), oru("FUZZ"), orm("FUZZ", obr_extra="|" * 20 + "^^^^202611261200")])
    )
    segments = [segment.split("|") for segment in base.strip("\r").split("\r")]
    for _ in range(draw(st.integers(1, 3))):
        fields = segments[draw(st.integers(0, len(segments) - 1))]
        number = draw(st.integers(1, len(fields) + 2))
        fields.extend([""] * (number + 1 - len(fields)))
        fields[number] = draw(hl7_values)
    text = "\r".join("|".join(fields) for fields in segments) + "\r"
    return text[: draw(st.one_of(st.none(), st.integers(0, len(text))))]


def test_malformed_hl7_messages_always_get_an_ack_and_an_ae_stores_no_order(demo_db: str) -> None:
    import itertools

    import hl7

    from bot.labs.hl7v2 import do_receive_hl7

    control_ids = itertools.count(1)

    @FUZZ
    @given(text=hl7_messages())
    def run(text: str) -> None:
        text = text.replace("|FUZZ|", f"|FUZZ-{next(control_ids)}|")  # each case its own MSH-10
        before = snapshot()
        with session_scope() as session:
            result = do_receive_hl7(session=session, text=text)
        ack = hl7.parse(result.ack)
        assert str(ack.segment("MSA")(1)) == result.code in {"AA", "AE", "AR"}
        if result.code != "AA":
            assert snapshot()[STORED.index(LabOrder)] == before[STORED.index(LabOrder)]

    run()


def test_mllp_framer_answers_any_byte_stream_the_same_however_it_is_cut() -> None:
    from bot.labs.mllp import MllpFramer

    pieces = st.one_of(
        st.sampled_from(
            [b"\x0b", b"\x1c", b"\r", b"\x1c\r", b"\n", b"MSH|^~\\&|A|B|C|D|E|F|ORM^O01|X1|P|2.5"]
        ),
        st.binary(max_size=30),
    )

    @FUZZ
    @given(parts=st.lists(pieces, max_size=12), cut=st.integers(1, 40))
    def run(parts: list[bytes], cut: int) -> None:
        stream = b"".join(parts)
        answers = []
        for size in (len(stream) or 1, cut):
            framer, found = MllpFramer(limit=64), []
            for at in range(0, len(stream), size):
                found += framer.feed(stream[at : at + size])
                assert len(framer.buffer) <= 64 + size and len(framer.junk) <= 4096  # bounded memory
            found += framer.flush(closed=True)
            answers.append([item if isinstance(item, bytes) else item.reason for item in found])
        assert answers[0] == answers[1]

    run()
