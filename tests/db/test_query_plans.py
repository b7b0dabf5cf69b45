"""The queue queries use their partial indexes in the plans the databases really run.

The processor's and the sender's claims run on every routed batch. SQLite plans a statement once with
its parameters unbound, and PostgreSQL switches a prepared statement (psycopg prepares repeated ones)
to a generic plan: neither can match `direction = ?` to an index's `direction = 'in'`, and the claim
then read the whole message table, history included, every time. These tests look at exactly those
plans: SQLite's, and PostgreSQL's generic one.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import text

from bot.channels.inbound import _pending_query
from bot.channels.outbox import _claim_query
from bot.db import get_engine


def _plan(statement: Any) -> str:
    """Return the plan the database makes for a statement with every parameter left unbound."""
    engine = get_engine()
    sql = str(statement.compile(dialect=engine.dialect))
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            sql = re.sub(r"\(__\[POSTCOMPILE_\w+\]\)", "(?)", sql)
            rows = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, tuple([None] * sql.count("?")))
            return "\n".join(str(row[-1]) for row in rows)
        count = 0

        def placeholder(match: re.Match[str]) -> str:
            nonlocal count
            count += 1
            return f"(${count})" if match.group(0).startswith("(") else f"${count}"

        sql = re.sub(r"%\(\w+\)s|\(__\[POSTCOMPILE_\w+\]\)", placeholder, sql)
        connection.execute(text("SET plan_cache_mode = force_generic_plan"))
        connection.exec_driver_sql(f"PREPARE claim_plan AS {sql}")
        rows = connection.exec_driver_sql(f"EXPLAIN EXECUTE claim_plan({', '.join(['NULL'] * count)})")
        return "\n".join(str(row[0]) for row in rows)


def test_the_inbound_claim_reads_only_unprocessed_texts(database_url: str) -> None:
    plan = _plan(_pending_query(postgres=get_engine().dialect.name == "postgresql", only=False))
    assert "ix_message_unprocessed" in plan, plan
    assert not re.search(r"Seq Scan on message\b|SCAN message$", plan, re.MULTILINE), plan
    if get_engine().dialect.name == "postgresql":
        # The check for an earlier waiting text of the same conversation reads only that conversation's
        # waiting texts. (As an anti-join it read the whole index for every candidate: quadratic in the backlog.)
        assert "Index Cond: ((conversation_id = message.conversation_id)" in plan, plan
        assert "ix_message_unprocessed_conversation" in plan, plan


def test_the_outbox_claim_checks_texts_in_flight_through_their_index(database_url: str) -> None:
    plan = _plan(_claim_query(postgres=get_engine().dialect.name == "postgresql"))
    assert "ix_outbox_in_flight" in plan, plan
    assert not re.search(r"Seq Scan on outbox\b|SCAN outbox$", plan, re.MULTILINE), plan
    # The texts in flight are looked up by each candidate's recipient, not read whole for every candidate.
    if get_engine().dialect.name == "postgresql":
        assert "Index Cond: ((identity_id = outbox.identity_id)" in plan, plan
    else:
        assert re.search(r"SEARCH \w+ USING (COVERING )?INDEX ix_outbox_in_flight \(identity_id=\?", plan), plan
