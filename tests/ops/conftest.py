"""Fixtures for the operations tests: the channel harness, the fake providers, and helpers."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from bot.db import session_scope
from tests.channels.conftest import make_app  # noqa: F401 - fixture
from tests.channels.telegram.conftest import fake_telegram  # noqa: F401 - fixture
from tests.channels.twilio.conftest import fake_twilio  # noqa: F401 - fixture


def count(model: Any, *where: Any) -> int:
    """Return how many rows of a model match."""
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def stamp(revision: str) -> None:
    """Set the database's recorded migration revision (without running migrations)."""
    from alembic import command

    from bot.db import get_engine
    from bot.db.migrate import alembic_config

    engine = get_engine()
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.stamp(config, revision)
