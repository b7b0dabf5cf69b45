"""Shared by the benchmarks: the PostgreSQL database they use, and fresh migrated databases."""

from __future__ import annotations

import os
from pathlib import Path

POSTGRES_URL = os.environ.get("CLINICBOT_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/bench")


def ensure_database(url: str, *, admin_database: str = "postgres") -> str | None:
    """Create the PostgreSQL database a URL names when it is missing; return why it cannot be used, or None.

    It is created through a connection to `admin_database` on the same server.
    """
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    from bot.db import make_engine

    target = make_url(url)
    admin = make_engine(target.set(database=admin_database).render_as_string(hide_password=False))
    try:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            found = connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": target.database}
            ).first()
            if found is None:
                connection.execute(text(f'CREATE DATABASE "{target.database}"'))
    except OperationalError as error:
        return f"PostgreSQL not reachable at {target.render_as_string()} ({error.orig.__class__.__name__})"
    finally:
        admin.dispose()
    return None


def prepare_database(
    backend: str, workdir: Path, *, name: str, seed_demo: bool, postgres_url: str = POSTGRES_URL
) -> str:
    """Create a migrated database (optionally with the demo clinic) for a backend; return its URL."""
    from sqlalchemy import text

    from bot.db import make_engine, session_scope
    from bot.db.migrate import upgrade_to_head
    from bot.demo import do_seed_demo

    url = f"sqlite:///{workdir / name}" if backend == "sqlite" else postgres_url
    engine = make_engine(url)
    try:
        if backend == "postgres":
            with engine.begin() as connection:
                connection.execute(text("DROP SCHEMA public CASCADE"))
                connection.execute(text("CREATE SCHEMA public"))
        upgrade_to_head(engine)
        if seed_demo:
            with session_scope(engine) as session:
                do_seed_demo(session=session)
    finally:
        engine.dispose()
    return url


def drop_database(url: str) -> None:
    """Drop the PostgreSQL database a URL names, closing its connections first; quiet when it is gone."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    from bot.db import make_engine

    target = make_url(url)
    admin = make_engine(target.set(database="postgres").render_as_string(hide_password=False))
    try:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    except OperationalError:
        pass
    finally:
        admin.dispose()
