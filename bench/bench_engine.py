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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench.* when run as a script

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
    batch_cpu = _routing_in_batches(runtime)
    return [
        ("engine: messages handled (SQLite, in-process)", str(len(timings))),
        ("engine: p50 per message (store+classify+route+reply)", f"{p50:.2f} ms"),
        ("engine: p99 per message", f"{p99:.2f} ms"),
        ("engine: throughput, one thread", f"{1000 / statistics.mean(timings):.0f} msg/s"),
        ("routing in batches of 16 (what `serve` workers do), CPU per message: best / median of 5 rounds of 1,000",
         f"{min(batch_cpu):.2f} ms / {statistics.median(batch_cpu):.2f} ms"),
    ]  # fmt: skip


def _routing_in_batches(runtime, *, rounds: int = 5, per_round: int = 1000) -> list[float]:  # type: ignore[no-untyped-def]
    """Store stored-but-unrouted texts (bench_inbound's mix, 200 senders), route them as a worker does; CPU ms each."""
    import random

    from bench.bench_inbound import BODIES
    from bot.channels.inbound import InboundProcessor, InboundText, do_accept_inbound
    from bot.db import session_scope

    rng = random.Random(7)
    texts, weights = [text for text, _ in BODIES], [weight for _, weight in BODIES]
    processor = InboundProcessor(engine=runtime.engine)
    results = []
    for _ in range(rounds):
        with session_scope() as session:
            for _ in range(per_round):
                do_accept_inbound(session=session, inbound=InboundText(
                    channel="sms", address=f"+1617556{rng.randrange(200):04d}", text=rng.choices(texts, weights)[0],
                    provider_message_id=uuid.uuid4().hex))  # fmt: skip
        started, routed = time.process_time(), 0
        while outcomes := processor.process_batch(limit=16):
            routed += len(outcomes)
        results.append((time.process_time() - started) * 1000 / routed)
    return results


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
