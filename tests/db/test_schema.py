"""The migrations build exactly the schema the models describe, and the audit trail stays append-only."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from bot.db import get_engine, session_scope
from bot.models import Base
from bot.staff import audit


def test_models_match_the_migrated_schema(database_url: str) -> None:
    with get_engine().connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_audit_trail_refuses_update_and_delete_at_head(database_url: str) -> None:
    with session_scope() as session:
        event = audit.record(
            session=session, actor_kind="staff", actor_id=1, action="patient.viewed", patient_id=7
        )
        session.flush()
        event_id = event.id
    for statement in (
        "UPDATE audit_event SET action = 'x' WHERE id = :id",
        "DELETE FROM audit_event WHERE id = :id",
    ):
        with pytest.raises(DBAPIError, match="append-only"), get_engine().begin() as connection:
            connection.execute(text(statement), {"id": event_id})
    with session_scope() as session:
        row = session.execute(
            text("SELECT action, patient_id, outcome FROM audit_event WHERE id = :id"), {"id": event_id}
        ).one()
    assert tuple(row) == ("patient.viewed", 7, "ok")


def test_attachments_move_between_the_old_text_form_and_their_column(database_url: str) -> None:
    # Before 0009 attachments were "[media] <link>" lines in the body; 0009 moves them to message.media.
    from alembic import command

    from bot.channels.inbound import InboundText, do_accept_inbound
    from bot.conversations.models import Message
    from bot.db.migrate import alembic_config, upgrade_to_head

    with session_scope() as session:
        accepted = do_accept_inbound(session=session, inbound=InboundText(
            channel="sms", address="+16175550188", text="is this rash normal", provider_message_id="MM1",
            media_urls=("https://api.twilio.com/m/ME1", "https://api.twilio.com/m/ME2")))  # fmt: skip
    engine = get_engine()
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0008")
    with engine.connect() as connection:
        body = connection.execute(text("SELECT body FROM message WHERE id = :id"), {"id": accepted.message_id}).scalar()
    assert body == "is this rash normal\n[media] https://api.twilio.com/m/ME1\n[media] https://api.twilio.com/m/ME2"
    upgrade_to_head(engine)
    with session_scope() as session:
        message = session.get(Message, accepted.message_id)
        assert (message.body, message.media) == (
            "is this rash normal", ["https://api.twilio.com/m/ME1", "https://api.twilio.com/m/ME2"])  # fmt: skip
