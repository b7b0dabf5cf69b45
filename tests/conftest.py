"""Shared fixtures: real SQLite and real PostgreSQL databases, migrated with Alembic."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

POSTGRES_URL = os.environ.get("CLINICBOT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
# The local Redis; each test counts under keys of its own, which expire within a minute.
REDIS_URL = os.environ.get("CLINICBOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def reset_caches() -> None:
    """Forget cached settings, engines and runtimes so a test's environment takes effect."""
    from bot.config import get_settings
    from bot.db import _factory, get_engine
    from bot.runtime import get_runtime

    for cached in (get_settings, get_engine, _factory, get_runtime):
        cached.cache_clear()


@pytest.fixture(scope="session", autouse=True)
def _demo_password_hashed_once() -> Iterator[None]:
    """Seed every test's demo clinic with one argon2id hash of the demo password, made once per run.

    argon2id is slow on purpose (about 0.15 s a hash here); hashing the same demo password again for
    each of the hundreds of tests that seed the demo clinic cost minutes. Sign-in still verifies it.
    """
    import bot.demo
    from bot.staff.passwords import hash_password

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bot.demo, "hash_password", lru_cache(maxsize=4)(hash_password))
        yield


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir shared by the whole run, so the classifier is trained once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test copies."""
    from bot.db import make_engine
    from bot.db.migrate import upgrade_to_head

    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade_to_head(engine)
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


def _worker_postgres_url() -> str:
    """Return this test process's PostgreSQL database: the configured one, or one of its own per xdist worker.

    `make test` runs the suite in parallel processes (pytest-xdist); each empties and migrates its
    database, so two workers never share one. A worker's database (`test_gw0`, ...) is created on first use.
    """
    from sqlalchemy.engine import make_url

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return POSTGRES_URL
    base = make_url(POSTGRES_URL)
    return base.set(database=f"{base.database}_{worker}").render_as_string(hide_password=False)


def _postgres_engine() -> Engine:
    from sqlalchemy.engine import make_url

    from bench.common import ensure_database
    from bot.db import make_engine

    url = _worker_postgres_url()
    reason = None
    if url != POSTGRES_URL:
        # Created through the configured database, the only one a CI machine promises.
        reason = ensure_database(url, admin_database=make_url(POSTGRES_URL).database)
    engine = make_engine(url)
    if reason is None:
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except OperationalError as error:
            reason = f"PostgreSQL not reachable at {POSTGRES_URL}: {error.orig.__class__.__name__}"
    if reason is not None:
        engine.dispose()
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: PostgreSQL tests must run)")
        pytest.skip(reason)
    return engine


@pytest.fixture
def redis_url(monkeypatch: pytest.MonkeyPatch) -> str:
    """The test Redis; locally a missing one skips, under CI=true it fails (as PostgreSQL does).

    The test's rate limits are counted under a key prefix of its own: counts left by an earlier test,
    or by a test run beside this one, never reach it.
    """
    import secrets

    import redis

    try:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1) as client:
            client.ping()
    except redis.RedisError as error:
        reason = f"Redis not reachable at {REDIS_URL}: {type(error).__name__}"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: Redis tests must run)")
        pytest.skip(reason)
    monkeypatch.setattr("bot.web.ratelimit.KEY_PREFIX", f"clinicbot-test-{secrets.token_hex(8)}")
    return REDIS_URL


@pytest.fixture(scope="session")
def postgres_migrated() -> str:
    """Recreate the test schema once and migrate it to head."""
    from bot.db.migrate import upgrade_to_head

    engine = _postgres_engine()
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    upgrade_to_head(engine)
    url = engine.url.render_as_string(hide_password=False)
    engine.dispose()
    return url


def _truncate_postgres(url: str) -> None:
    """Empty every table and restart every sequence, as a fresh migration leaves them.

    DELETE with triggers off (session_replication_role = replica: the audit trail's append-only triggers
    and the foreign keys' checks stay quiet), then every sequence back to 1: about 25 ms on this
    suite's small tables, where one TRUNCATE of the 29 tables took 300-450 ms (new files for each table
    and index), and the PostgreSQL tests run it a thousand times. A role that may not set it (not a
    superuser) gets the TRUNCATE.
    """
    from sqlalchemy.exc import ProgrammingError

    from bot.db import make_engine
    from bot.models import Base

    engine = make_engine(url)
    tables = [t.name for t in Base.metadata.sorted_tables]
    try:
        with engine.begin() as connection:
            connection.execute(text("SET LOCAL session_replication_role = replica"))
            for table in reversed(tables):
                connection.execute(text(f'DELETE FROM "{table}"'))
            connection.execute(text(
                "SELECT setval(c.oid, 1, false) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind = 'S' AND n.nspname = current_schema()"
            ))  # fmt: skip
    except ProgrammingError:  # InsufficientPrivilege: not a superuser
        with engine.begin() as connection:
            # TRUNCATE does not fire the audit trail's row-level append-only triggers.
            connection.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    sqlite_template: Path,
    model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[str]:
    """A clean, migrated database on each backend, configured as the process database."""
    if request.param == "sqlite":
        path = tmp_path / "clinicbot.db"
        shutil.copy(sqlite_template, path)
        url = f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_migrated")
        _truncate_postgres(url)
    monkeypatch.setenv("CLINICBOT_DATABASE_URL", url)
    monkeypatch.setenv("CLINICBOT_DATA_DIR", str(model_dir))
    reset_caches()
    yield url
    from bot.db import get_engine

    get_engine().dispose()
    reset_caches()


@pytest.fixture
def demo_db(database_url: str) -> str:
    """A database holding the demo clinic."""
    from bot.db import session_scope
    from bot.demo import do_seed_demo

    with session_scope() as session:
        do_seed_demo(session=session)
    return database_url


@pytest.fixture
def runtime(demo_db: str):  # type: ignore[no-untyped-def]
    """The wired engine on the demo clinic."""
    from bot.runtime import get_runtime

    return get_runtime()
