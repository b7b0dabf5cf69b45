"""Run Alembic migrations from code, and tell whether the database is at head."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _scripts_config() -> Config:
    """Build an Alembic config pointing at our migrations (no database)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def alembic_config(engine: Engine) -> Config:
    """Build an Alembic config pointing at our migrations and this engine's URL."""
    config = _scripts_config()
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return config


def upgrade_to_head(engine: Engine) -> None:
    """Migrate the database to the newest revision."""
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def current_revision(engine: Engine) -> str | None:
    """Return the database's revision, or None for an empty database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision(engine: Engine) -> str | None:
    """Return the newest revision in the code (the engine is not consulted: the scripts are the code's)."""
    return _code_head()


@lru_cache(maxsize=1)
def _code_head() -> str | None:
    # The migration scripts are fixed for the life of the process: reading and parsing all twenty of
    # them took 30 ms, paid by every runtime built and every readiness check.
    return ScriptDirectory.from_config(_scripts_config()).get_current_head()


def is_at_head(engine: Engine) -> bool:
    """Return whether the database has every migration applied."""
    return current_revision(engine) == head_revision(engine)


class NotReadyError(RuntimeError):
    """The database is not set up; the message says what to run."""


def require_at_head(engine: Engine) -> None:
    """Raise NotReadyError, saying what to run, unless every migration is applied."""
    if not is_at_head(engine):
        raise NotReadyError("the database is not initialised or not migrated; run `clinicbot init --demo`")
