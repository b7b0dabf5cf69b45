"""Benchmark: the whole analyser (safety layer + classifier) on the held-out set: accuracy and latency."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*, repeat: int = 20) -> list[tuple[str, str]]:
    """Evaluate routes and intents on held-out data and time analyse(); return (metric, value) rows."""
    from bot.nlu.data import load_heldout
    from bot.nlu.evaluation import evaluate_pipeline
    from bot.nlu.pipeline import get_nlu

    nlu = get_nlu(dialogues_dir=ROOT / "dialogues", cache_dir=ROOT / "var" / "models", clarify_threshold=0.45)
    examples = load_heldout(root=ROOT / "dialogues")
    report = evaluate_pipeline(nlu=nlu, examples=examples)
    timings = []
    for _ in range(repeat):
        for example in examples:
            started = time.perf_counter_ns()
            nlu.analyse(example.text)
            timings.append((time.perf_counter_ns() - started) / 1e6)
    timings.sort()
    pct = lambda v: f"{v * 100:.1f}%"  # noqa: E731
    return [
        ("held-out examples", f"{report.total} (en {report.by_lang['en']['total']}, es {report.by_lang['es']['total']})"),
        ("route accuracy (all / en / es)", " / ".join(
            [pct(report.route_accuracy), pct(report.lang_accuracy("en", "route")), pct(report.lang_accuracy("es", "route"))])),
        ("intent accuracy (all / en / es)", " / ".join(
            [pct(report.intent_accuracy), pct(report.lang_accuracy("en", "intent")), pct(report.lang_accuracy("es", "intent"))])),
        ("emergency recall", f"{pct(report.emergency_recall)} ({report.emergencies_caught}/{report.emergencies})"),
        ("false alarms", f"{report.false_alarms}/{report.non_emergencies} ({pct(report.false_alarm_rate)})"),
        ("analyse() p50 per message", f"{statistics.median(timings):.3f} ms"),
        ("analyse() p99 per message", f"{timings[int(len(timings) * 0.99) - 1]:.3f} ms"),
    ]  # fmt: skip


if __name__ == "__main__":
    print("| metric | value |\n| --- | --- |")
    for metric, value in run():
        print(f"| {metric} | {value} |")
    sys.exit(0)
