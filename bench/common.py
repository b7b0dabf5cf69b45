"""Shared by the benchmarks: the PostgreSQL database they use, and fresh migrated databases."""

from __future__ import annotations

import os
from pathlib import Path

POSTGRES_URL = os.environ.get("CLINICBOT_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/bench")


def postgres_unreachable() -> str | None:
    """Return why PostgreSQL cannot be used for the benchmark, or None when it answers."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from bot.db import make_engine

    engine = make_engine(POSTGRES_URL)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as error:
        return f"PostgreSQL not reachable at {POSTGRES_URL} ({error.orig.__class__.__name__})"
    finally:
        engine.dispose()
    return None


def prepare_database(backend: str, workdir: Path, *, name: str, seed_demo: bool) -> str:
    """Create a migrated database (optionally with the demo clinic) for a backend; return its URL."""
    from sqlalchemy import text

    from bot.db import make_engine, session_scope
    from bot.db.migrate import upgrade_to_head
    from bot.demo import do_seed_demo

    url = f"sqlite:///{workdir / name}" if backend == "sqlite" else POSTGRES_URL
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
