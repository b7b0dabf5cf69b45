"""Run every benchmark and write bench/results.md (`make bench`)."""

from __future__ import annotations

import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_classifier  # noqa: E402
import bench_engine  # noqa: E402
import bench_inbound  # noqa: E402
import bench_memory  # noqa: E402
import bench_outbox  # noqa: E402
import bench_pipeline  # noqa: E402
import bench_safety  # noqa: E402
import bench_scheduler  # noqa: E402


def machine() -> str:
    """Describe the machine the figures came from."""
    cpus = len(__import__("os").sched_getaffinity(0))
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {cpus} cores, Python {platform.python_version()}, {platform.system()} {platform.machine()}"


def main() -> int:
    sections = [
        ("Safety layer", bench_safety.run()),
        ("Classifier", bench_classifier.run()),
        ("Whole analyser: safety layer + classifier (what `clinicbot classify` runs)", bench_pipeline.run()),
        ("Conversation engine", bench_engine.run()),
        ("Inbound SMS end to end: signed webhook → stored → classified → reply queued", bench_inbound.run()),
        ("Outbox delivery rate to a fake Twilio", bench_outbox.run()),
        ("Promise sweep: 100,000 open promises, 10,000 due", bench_scheduler.run()),
        ("Memory: peak RSS of `clinicbot serve` under the inbound load", bench_memory.run()),
    ]
    lines = [
        "# Benchmark results",
        "",
        f"Run {datetime.now(tz=UTC):%Y-%m-%d %H:%M} UTC on {machine()}. Reproduce with `make bench`.",
        "",
    ]
    for title, rows in sections:
        lines += [f"## {title}", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {metric} | {value} |" for metric, value in rows]
        lines.append("")
    out = Path(__file__).resolve().parent / "results.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
