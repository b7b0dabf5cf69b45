"""Alembic environment: runs migrations on the connection handed over by bot.db.migrate."""

from alembic import context

import bot.models  # noqa: F401  (fills the metadata)
from bot.db import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    """Run migrations on the given connection, or one made from the URL."""
    connection = config.attributes.get("connection")
    if connection is None:
        from bot.db import make_engine

        engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
        with engine.begin() as conn:
            _run(conn)
        return
    _run(connection)


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `clinicbot init`")
run_migrations_online()
