"""Benchmark: one promise sweep over 100,000 open promises, 10,000 of them due, on SQLite and PostgreSQL.

The demo clinic is seeded, then 10,000 patients with verified SMS numbers and 100,000 open promises
(10,000 due at noon on a working Tuesday, the rest due in December) are bulk-inserted. A fresh child
process then runs one pass of every sweep (`do_run_sweeps`) as if at 16:30 that Tuesday, and reports
the pass's wall time and the process's peak resident memory (VmHWM from /proc, which includes the
interpreter and every import). Targets: ≤ 5 s and ≤ 300 MB.

    .venv/bin/python bench/bench_scheduler.py [--promises 100000] [--due 10000] [--backends sqlite,postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from datetime import time as clock
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402

from bench.common import POSTGRES_URL, ensure_database, prepare_database  # noqa: E402

TARGET_SECONDS = 5.0
TARGET_MB = 300.0
PATIENTS = 10_000
SEED_BATCH = 5_000
SWEEP_DAY = date(2026, 11, 17)  # a Tuesday, no holiday
SWEEP_AT = clock(16, 30)


def seed(url: str, *, promises: int, due: int) -> None:
    """Bulk-insert the patients, their SMS identities and the promises."""
    from sqlalchemy import insert

    from bot.clinic_settings import load_clinic
    from bot.db import make_engine, session_scope
    from bot.patients.models import ChannelIdentity, Patient
    from bot.promises.models import Promise

    engine = make_engine(url)
    with session_scope(engine) as session:
        calendar = load_clinic(session=session).calendar
    due_at = calendar.at_local(SWEEP_DAY, clock(12, 0))
    later = calendar.at_local(date(2026, 12, 15), clock(12, 0))
    verified = datetime(2026, 1, 1, tzinfo=UTC)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        transient=True)  # fmt: skip
    with progress:
        task = progress.add_task("seeding patients", total=PATIENTS)
        for first in range(0, PATIENTS, SEED_BATCH):
            numbers = range(first, min(first + SEED_BATCH, PATIENTS))
            with session_scope(engine) as session:
                session.execute(insert(Patient), [
                    {"id": 1000 + n, "name": f"Patient {n}", "phone": f"+1617{n:07d}", "language": "es" if n % 4 == 0 else "en",
                     "external_id": f"BENCH-{n}"} for n in numbers
                ])  # fmt: skip
                session.execute(insert(ChannelIdentity), [
                    {"channel": "sms", "address": f"+1617{n:07d}", "patient_id": 1000 + n, "verified_at": verified,
                     "verification_method": "phone_on_file"} for n in numbers
                ])  # fmt: skip
            progress.update(task, completed=numbers.stop)
        task = progress.add_task("seeding promises", total=promises)
        for first in range(0, promises, SEED_BATCH):
            numbers = range(first, min(first + SEED_BATCH, promises))
            with session_scope(engine) as session:
                session.execute(insert(Promise), [
                    {"patient_id": 1000 + n % PATIENTS, "kind": "request_answer", "subject_type": "patient_request",
                     "subject_id": n + 1, "reason_key": "request_refill", "due_at": due_at if n < due else later,
                     "status": "open"} for n in numbers
                ])  # fmt: skip
            progress.update(task, completed=numbers.stop)
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE")
    engine.dispose()


def peak_rss_mb() -> float:
    """Return this process's peak resident memory in MB.

    /proc/self/status VmHWM belongs to this program alone; getrusage's ru_maxrss on Linux also keeps the
    parent's peak from before exec (under `make bench` that is the whole benchmark runner).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(url: str) -> None:
    """Run one pass in this fresh process and print its figures as JSON."""
    os.environ["CLINICBOT_DATABASE_URL"] = url
    from bot.clinic_settings import load_clinic
    from bot.config import get_settings
    from bot.db import session_scope
    from bot.promises.sweeps import do_run_sweeps
    from scheduler.jobs import update_domain

    settings = get_settings()
    domain = update_domain(settings)
    with session_scope() as session:
        calendar = load_clinic(session=session).calendar
    now = calendar.at_local(SWEEP_DAY, SWEEP_AT)
    before = peak_rss_mb()
    started = time.perf_counter()
    counts = do_run_sweeps(domain=domain, now=now, escalation_working_days=settings.late_escalation_working_days,
                           batch_size=settings.scheduler_batch_size)  # fmt: skip
    seconds = time.perf_counter() - started
    peak = peak_rss_mb()
    started = time.perf_counter()
    again = do_run_sweeps(domain=domain, now=now, escalation_working_days=settings.late_escalation_working_days,
                          batch_size=settings.scheduler_batch_size)  # fmt: skip
    repeat_seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "updates": counts.updates, "call_list": counts.call_list,
                      "peak_mb": peak, "before_mb": before, "repeat_seconds": repeat_seconds,
                      "repeat_updates": again.updates, "batch": settings.scheduler_batch_size}))  # fmt: skip


def measure(backend: str, *, promises: int, due: int) -> dict[str, float]:
    """Seed a fresh database and time one sweep in a child process."""
    workdir = Path(tempfile.mkdtemp(prefix=f"clinicbot-bench-sched-{backend}-"))
    try:
        url = prepare_database(backend, workdir, name="sched.db", seed_demo=True)
        seed(url, promises=promises, due=due)
        result = subprocess.run(
            [sys.executable, __file__, "--child", url], capture_output=True, text=True, cwd=ROOT, check=True
        )
        return json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(
    *, promises: int = 100_000, due: int = 10_000, backends: tuple[str, ...] = ("sqlite", "postgres")
) -> list[tuple[str, str]]:
    """Measure one sweep per backend; return markdown rows."""
    skipped = ensure_database(POSTGRES_URL) if "postgres" in backends else None
    if skipped:
        backends = tuple(b for b in backends if b != "postgres")
    names = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    rows: list[tuple[str, str]] = [
        ("set-up", f"{promises:,} open promises ({due:,} due at noon, the rest next month) for {PATIENTS:,} patients "
                   "with verified SMS numbers; one pass of every sweep at 16:30 on a working Tuesday, in a fresh process"),
    ]  # fmt: skip
    for backend in backends:
        r = measure(backend, promises=promises, due=due)
        ok_time = "met" if r["seconds"] <= TARGET_SECONDS else "NOT met"
        ok_mem = "met" if r["peak_mb"] <= TARGET_MB else "NOT met"
        rows += [
            (f"{names[backend]}: sweep wall time (target ≤ {TARGET_SECONDS:.0f} s)",
             f"{r['seconds']:.2f} s ({ok_time}; {r['updates']:,} updates queued with their outbox texts, "
             f"batches of {r['batch']})"),
            (f"{names[backend]}: peak RSS (target ≤ {TARGET_MB:.0f} MB)",
             f"{r['peak_mb']:.0f} MB ({ok_mem}; {r['before_mb']:.0f} MB before the sweep: interpreter, imports, domain)"),
            (f"{names[backend]}: second sweep right after", f"{r['repeat_seconds']:.2f} s, {r['repeat_updates']} updates"),
        ]  # fmt: skip
    if skipped:
        rows.append(("PostgreSQL", f"skipped: {skipped}"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--promises", type=int, default=100_000)
    parser.add_argument("--due", type=int, default=10_000)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    rows = run(promises=args.promises, due=args.due, backends=tuple(args.backends.split(",")))
    print("| metric | value |\n| --- | --- |")
    for metric, value in rows:
        print(f"| {metric} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
