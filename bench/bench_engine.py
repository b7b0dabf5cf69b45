"""Benchmark: one inbound message through the whole engine (store, safety, classify, route, reply) on SQLite."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from rich.progress import track

MESSAGES = [
    "what time do you open",
    "hi",
    "where are you located",
    "can i talk to a real person",
    "how do i pay my bill",
    "necesito ayuda con el portal",
    "any news on my lab results",
    "blorp zzzt",
]


def run(*, rounds: int = 40) -> list[tuple[str, str]]:
    """Send messages through the engine on a fresh SQLite database; return (metric, value) rows."""
    workdir = Path(tempfile.mkdtemp(prefix="clinicbot-bench-"))
    os.environ["CLINICBOT_DATABASE_URL"] = f"sqlite:///{workdir / 'bench.db'}"
    os.environ.setdefault("CLINICBOT_DATA_DIR", str(Path("var").resolve()))
    from bot.config import get_settings
    from bot.db import get_engine, session_scope
    from bot.db.migrate import upgrade_to_head
    from bot.demo import do_seed_demo
    from bot.runtime import get_runtime

    get_settings.cache_clear()
    upgrade_to_head(get_engine())
    with session_scope() as session:
        do_seed_demo(session=session)
    runtime = get_runtime()
    timings: list[float] = []
    for round_ in track(range(rounds), description="engine messages", transient=True):
        for text in MESSAGES:
            # A new sender each round so conversations stay in the bot state.
            address = f"+1617555{round_ % 10000:04d}"
            started = time.perf_counter()
            with session_scope() as session:
                runtime.engine.receive(
                    session=session, channel="terminal", address=address, text=text, provider_message_id=uuid.uuid4().hex
                )
            timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    p50 = statistics.median(timings)
    p99 = timings[int(len(timings) * 0.99) - 1]
    return [
        ("engine: messages handled (SQLite, in-process)", str(len(timings))),
        ("engine: p50 per message (store+classify+route+reply)", f"{p50:.2f} ms"),
        ("engine: p99 per message", f"{p99:.2f} ms"),
        ("engine: throughput, one thread", f"{1000 / statistics.mean(timings):.0f} msg/s"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    print("| metric | value |\n| --- | --- |")
    for metric, value in run(rounds=args.rounds):
        print(f"| {metric} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
