"""Storing inbound messages: exactly once, even under concurrent duplicates."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from bot.conversations.models import Message
from bot.conversations.service import clean_text, open_conversation, store_inbound, unprocessed_inbound
from bot.db import session_scope
from bot.patients.models import Channel, ChannelIdentity
from bot.patients.service import get_or_create_identity


def _store(provider_id: str) -> bool:
    with session_scope() as session:
        identity = get_or_create_identity(session=session, channel=Channel.SMS, address="+16175550123")
        conversation = open_conversation(session=session, identity=identity)
        return store_inbound(
            session=session, conversation=conversation, text="hello", provider_message_id=provider_id
        ) is not None


def test_concurrent_duplicates_store_one_message(database_url: str) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        stored = list(pool.map(_store, ["SM-dup"] * 24))
    with session_scope() as session:
        messages = session.scalar(select(func.count()).select_from(Message))
        identities = session.scalar(select(func.count()).select_from(ChannelIdentity))
    assert (stored.count(True), messages, identities) == (1, 1, 1)


def test_stored_but_unprocessed_messages_are_found_after_a_restart(database_url: str) -> None:
    assert _store("SM-1") and _store("SM-2")
    with session_scope() as session:
        pending = unprocessed_inbound(session=session)
        assert [m.provider_message_id for m in pending] == ["SM-1", "SM-2"]


def test_identity_matching_a_patient_phone_is_verified(demo_db: str) -> None:
    with session_scope() as session:
        known = get_or_create_identity(session=session, channel=Channel.SMS, address="+16175550142")
        stranger = get_or_create_identity(session=session, channel=Channel.SMS, address="+16175550999")
        web = get_or_create_identity(session=session, channel=Channel.WEBCHAT, address="+16175550142")
        assert (known.is_verified, known.verification_method) == (True, "phone_on_file")
        assert (stranger.is_verified, web.is_verified) == (False, False)


def test_clean_text_makes_any_input_storable() -> None:
    assert clean_text(b"caf\xc3\xa9 \xff") == "café \ufffd"
    assert clean_text("a\x00b\udcffc") == "ab?c"
    assert clean_text("line\nbreak\ttab") == "line\nbreak\ttab"
    assert len(clean_text("x" * 50_000)) == 20_000
