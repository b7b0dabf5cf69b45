"""Benchmark: the emergency safety layer's latency per message, and on a 10,000-character message."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import yaml

CASES = Path(__file__).resolve().parent.parent / "tests" / "nlu" / "safety_cases.yml"


def run(*, repeat: int = 20) -> list[tuple[str, str]]:
    """Time check() over the safety case corpus; return (metric, value) rows."""
    from bot.nlu.safety import check

    cases = yaml.safe_load(CASES.read_text(encoding="utf-8"))
    texts = [c["text"] for c in cases["emergency"]] + list(cases["not_emergency"])
    timings = []
    for _ in range(repeat):
        for text in texts:
            started = time.perf_counter_ns()
            check(text)
            timings.append((time.perf_counter_ns() - started) / 1e6)
    timings.sort()
    long_text = ("please refill my meds and send the bill " * 300)[:10_000]
    long_runs = []
    for _ in range(5):
        started = time.perf_counter_ns()
        check(long_text)
        long_runs.append((time.perf_counter_ns() - started) / 1e6)
    return [
        ("safety: messages timed", f"{len(timings)} ({len(texts)} cases x {repeat})"),
        ("safety: p50 per message", f"{statistics.median(timings):.3f} ms"),
        ("safety: p99 per message", f"{timings[int(len(timings) * 0.99) - 1]:.3f} ms"),
        ("safety: 10,000-character message", f"{min(long_runs):.1f} ms"),
    ]


if __name__ == "__main__":
    print("| metric | value |\n| --- | --- |")
    for metric, value in run():
        print(f"| {metric} | {value} |")
    sys.exit(0)
