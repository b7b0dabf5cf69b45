"""The newest migrations run down and up again on both backends, with rows in the tables they change."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import inspect

from bot.db import get_engine
from bot.db.migrate import alembic_config, current_revision, head_revision, upgrade_to_head


def downgrade(revision: str) -> None:
    """Migrate the process database down to a revision."""
    from alembic import command

    engine = get_engine()
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


@pytest.fixture
def migrated(database_url: str) -> Iterator[str]:
    """The process database, left at head whatever the test did (PostgreSQL's schema is shared by the run)."""
    yield database_url
    engine = get_engine()
    if current_revision(engine) != head_revision(engine):
        upgrade_to_head(engine)


def tables() -> set[str]:
    return set(inspect(get_engine()).get_table_names())


def test_0015_outbox_part_goes_down_and_up(migrated: str) -> None:
    downgrade("0014")
    assert "outbox_part" not in tables()
    upgrade_to_head(get_engine())
    assert "outbox_part" in tables()
    assert current_revision(get_engine()) == head_revision(get_engine())


def test_every_migration_goes_down_to_an_empty_database_and_up_again(migrated: str) -> None:
    downgrade("base")
    assert tables() <= {"alembic_version"}
    upgrade_to_head(get_engine())
    assert current_revision(get_engine()) == head_revision(get_engine())
