"""The inbound benchmark's CPU budget: the arithmetic behind its latency floor."""

from __future__ import annotations

import math
import os

from bench.bench_inbound import BackendResult, LoadResult, bare_p99_row, budget_row, database_cpu, proc_cpu


def result(*, server: float, client: float, fake: float, database: float = math.nan) -> BackendResult:
    load = LoadResult([], [], [], 0.0, 1.0, cpu_seconds=client)
    return BackendResult(backend="postgres", load=load, e2e_ms=[], replied=0, processed=0, first_start=0.0,
                         last_queued=0.0, outbox_rows=0, undelivered=0, delivery_wait=0.0, machine_load="",
                         server_cpu=server, fake_cpu=fake, database_cpu=database)  # fmt: skip


def test_the_budget_adds_every_process_and_gives_littles_law_floor() -> None:
    cores = len(os.sched_getaffinity(0))
    # 1,000 messages: 3 + 1 + 0.5 + 0.5 = 5 CPU seconds, so 5 ms a message.
    name, value = budget_row("PostgreSQL", result(server=3.0, database=1.0, client=0.5, fake=0.5),
                             requests=1000, concurrency=16)  # fmt: skip
    ceiling = cores / 0.005
    assert name.startswith("PostgreSQL: CPU budget")
    assert value.startswith("5.00 ms a message (server 3.00, PostgreSQL 1.00, load generator 0.50, fake Twilio 0.50)")
    assert f"at most {ceiling:,.0f} msg/s" in value
    assert f"at least {16 / ceiling * 1000:,.1f} ms" in value


def test_sqlite_has_no_database_process_in_the_budget() -> None:
    _, value = budget_row("SQLite", result(server=3.0, client=0.5, fake=0.5), requests=1000, concurrency=16)
    assert "PostgreSQL" not in value
    assert value.startswith("4.00 ms a message")
    assert math.isnan(database_cpu("sqlite"))


def test_a_process_can_be_counted_without_its_children() -> None:
    own = proc_cpu(os.getpid(), children=False)
    assert 0 < own <= proc_cpu(os.getpid())


def test_the_bare_endpoints_own_p99_says_whether_the_target_is_within_reach() -> None:
    name, under = bare_p99_row(31.3)
    _, over = bare_p99_row(64.5)
    assert name == "bare FastAPI: its own p99 against the ≤ 50 ms target"
    assert under == "31.3 ms, under it: the target is within this machine's reach"
    assert over.startswith("64.5 ms, over it: ")
    assert "even a handler that does nothing misses the p99 target" in over
