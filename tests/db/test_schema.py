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
