"""Database engine, sessions and the declarative base."""

from __future__ import annotations

import contextvars
import fcntl
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ARRAY,
    JSON,
    URL,
    DateTime,
    Engine,
    Integer,
    MetaData,
    Table,
    any_,
    bindparam,
    create_engine,
    event,
    exc,
    insert,
    make_url,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Store aware datetimes as UTC and always hand back aware UTC values."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use datetime.now(tz=UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        # SQLite has no time zone type and returns naive values that were stored as UTC.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base with a stable constraint naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


# Query parameters of a database URL that may hold a secret (libpq takes `?password=` as well as `user:pw@`).
_SECRET_QUERY_WORDS = ("password", "secret", "token", "key")


def shown_url(url: str | URL) -> str:
    """Return a database URL fit to print: the password hidden, in the user part and in the query."""
    parsed = make_url(url) if isinstance(url, str) else url
    query = {
        name: ("***" if any(word in name.lower() for word in _SECRET_QUERY_WORDS) else value)
        for name, value in parsed.query.items()
    }
    return parsed.set(query=query).render_as_string(hide_password=True)


def utcnow() -> datetime:
    """Return the current time, aware, in UTC."""
    return datetime.now(tz=UTC)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the single writer; busy_timeout queues writers instead of failing.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def insert_or_ignore(*, session: Session, model: type[Base], values: dict[str, Any], conflict: list[str]) -> Any:
    """Insert one row unless its unique key exists; return the new ORM object, or None for a duplicate.

    One `INSERT … ON CONFLICT DO NOTHING RETURNING` instead of a read, a savepoint and a write: a
    concurrent duplicate (another transaction or process) is skipped, never an error that aborts ours.
    """
    statement = insert(model).values(**values).returning(model)
    # SQLite and PostgreSQL spell it alike. The dialects' own on_conflict_do_nothing() builds statements
    # SQLAlchemy 2.0 never caches (each one compiled afresh, ~0.7 ms); a text clause keeps the cache.
    statement._post_values_clause = text(f"ON CONFLICT ({', '.join(conflict)}) DO NOTHING")
    return session.scalars(statement).first()


_INSERTS: dict[tuple[str, tuple[str, ...], bool], Any] = {}


def _insert_or_ignore(table: Table, conflict: list[str], *, returning_id: bool) -> Any:
    """Return `INSERT … ON CONFLICT (conflict) DO NOTHING` for a table, built once (so compiled once)."""
    key = (table.name, tuple(conflict), returning_id)
    statement = _INSERTS.get(key)
    if statement is None:
        statement = insert(table).returning(table.c.id) if returning_id else insert(table)
        statement._post_values_clause = text(f"ON CONFLICT ({', '.join(conflict)}) DO NOTHING")
        _INSERTS[key] = statement
    return statement


def insert_or_ignore_id(*, session: Session, table: Table, values: dict[str, Any], conflict: list[str]) -> int | None:
    """Insert one row unless its unique key exists; return the new row's id, or None for a duplicate.

    The lean form of `insert_or_ignore` for hot paths that need only the id: one Core statement,
    built once per table and key (so compiled once), and no ORM object loaded from the result.
    Pending ORM changes are flushed first, as an ORM statement's autoflush would.
    """
    session.flush()
    return session.execute(_insert_or_ignore(table, conflict, returning_id=True), values).scalar()


def insert_or_ignore_many(*, session: Session, table: Table, rows: list[dict[str, Any]], conflict: list[str]) -> None:
    """Insert rows in one executemany, skipping those whose unique key exists (pending ORM changes flush first)."""
    session.flush()
    session.execute(_insert_or_ignore(table, conflict, returning_id=False), rows)


def among(session: Session, column: Any, values: Sequence[Any], *, element: Any = Integer) -> Any:
    """Return `column IN values`; on PostgreSQL as `= ANY(array)`, one parameter instead of thousands."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(element)))
    return column.in_(values)


def make_engine(url: str) -> Engine:
    """Create an engine with the settings each backend needs."""
    # hide_parameters: an error's text never carries the statement's values (message bodies, names).
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:" and not path.startswith("file:"):
            folder = Path(path).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                from bot.config import SettingsError

                raise SettingsError(
                    f"cannot create {folder}, the SQLite database's folder ({error.strerror}); "
                    "check CLINICBOT_DATA_DIR, or CLINICBOT_DATABASE_URL if it is set"
                ) from None
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 10}, hide_parameters=True
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, pool_size=10, max_overflow=20, hide_parameters=True)
    _ping_after_idle(engine)
    return engine


# A pooled PostgreSQL connection used again within this many seconds is trusted without a ping.
PING_AFTER_IDLE_SECONDS = 1.0
_IDLE_SINCE = "clinicbot_idle_since"


def _ping_after_idle(engine: Engine) -> None:
    """Ping a pooled connection that sat idle before using it, as pool_pre_ping does, but not one just used.

    pool_pre_ping pinged on every checkout: under load that was half of all transactions on the
    database (every webhook group, routing batch and send round begins with a checkout). A connection
    back in use within PING_AFTER_IDLE_SECONDS needs none; if its server went away in that moment, its
    first statement fails as a disconnect, which invalidates the pool, and the caller retries as after
    any failed transaction. A new connection has no `idle since` (record.info is cleared when a
    connection is invalidated), so it is not pinged either.
    """
    dialect = engine.dialect

    def mark_idle(dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    def ping_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as error:
            # As pool_pre_ping: a lost connection means the server restarted, so the pool's others are lost
            # too; any other failure replaces this connection alone. Either way the checkout gets a new one.
            if dialect.is_disconnect(error, dbapi_connection, None):
                raise exc.InvalidatePoolError() from error
            raise exc.DisconnectionError() from error

    event.listen(engine, "checkin", mark_idle)
    event.listen(engine, "checkout", ping_if_idle)


@lru_cache(maxsize=8)
def get_engine(url: str | None = None) -> Engine:
    """Return the shared engine for a URL (default: the configured database)."""
    from bot.config import get_settings

    return make_engine(url or get_settings().effective_database_url)


@lru_cache(maxsize=8)
def _factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


# The file beside a SQLite database whose flock is the writer's turn across processes (see _WriterLock).
WRITER_LOCK_SUFFIX = "-lock"


class _WriterLock:
    """SQLite's single writer; writers that answer a provider go before background work.

    A webhook is acknowledged only after its message is stored, and the provider is waiting: a
    background transaction (routing a message, recording a send) lets waiting acknowledgements go
    first, but never waits for them longer than `max_yield` seconds, so background work cannot starve.
    Across processes (`serve --processors N`) an flock on a file beside the database serialises whole
    transactions too: the kernel wakes the next holder at once, where SQLite's busy handler sleeps in
    growing steps, and a worker's reads cannot interleave with another process's writes.
    """

    def __init__(self, *, max_yield: float = 0.05) -> None:
        self._lock = threading.RLock()
        self._state = threading.Condition()
        self._urgent = 0
        self._depth = 0
        self._files: dict[str, int] = {}
        self.max_yield = max_yield

    def _file(self, path: str) -> int:
        fd = self._files.get(path)
        if fd is None:
            fd = self._files[path] = os.open(path + WRITER_LOCK_SUFFIX, os.O_RDWR | os.O_CREAT, 0o600)
        return fd

    @contextmanager
    def hold(self, *, urgent: bool, path: str | None = None) -> Iterator[None]:
        if urgent:
            with self._state:
                self._urgent += 1
            try:
                self._lock.acquire()
            finally:
                with self._state:
                    self._urgent -= 1
                    self._state.notify_all()
        else:
            with self._state:
                self._state.wait_for(lambda: self._urgent == 0, timeout=self.max_yield)
            self._lock.acquire()
        fd = None
        try:
            # Only the outermost hold takes the file lock: an inner release must not drop it.
            if self._depth == 0 and path:
                fd = self._file(path)
                fcntl.flock(fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()


_SQLITE_LOCK = _WriterLock()
_ambient: contextvars.ContextVar[Session | None] = contextvars.ContextVar("clinicbot_session", default=None)



@contextmanager
def read_scope(engine: Engine | None = None) -> Iterator[Session]:
    """Yield a session for reads only: it never takes SQLite's writer lock, and is rolled back at the end.

    WAL lets readers run beside the writer on a consistent snapshot, so a read that may be long (a
    metrics scrape counting a clinic's whole history) must not queue for the writer's turn, and hold
    every acknowledgement behind it, as `session_scope` would. Nothing written here is kept.
    """
    session = _factory(engine or get_engine())()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


@contextmanager
def session_scope(engine: Engine | None = None, *, urgent: bool = False) -> Iterator[Session]:
    """Yield a session that commits on success and rolls back on error.

    Inside an outer scope (for example an action run in-process by the engine) the outer
    session is reused, so one inbound message is handled in one transaction. `urgent` marks a
    transaction someone is waiting on (storing a webhook before acknowledging it): on SQLite it
    goes before background transactions of this process.
    """
    outer = _ambient.get()
    if outer is not None and engine is None:
        yield outer
        return
    bound = engine or get_engine()
    # SQLite has one writer: queueing this process's transactions on a lock beats SQLite's busy
    # handler, which sleeps in growing steps and turned a burst of webhooks into a one-second tail.
    if bound.dialect.name == "sqlite":
        database = bound.url.database
        path = database if database and database != ":memory:" and not database.startswith("file:") else None
        lock = _SQLITE_LOCK.hold(urgent=urgent, path=path)
    else:
        lock = nullcontext()
    with lock:
        session = _factory(bound)()
        token = _ambient.set(session)
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            _ambient.reset(token)
            session.close()
