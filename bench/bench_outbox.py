"""Benchmark: outbox delivery rate to a fake Twilio on loopback, on SQLite and PostgreSQL.

M texts (default 2,000) to ~200 SMS identities are queued with `bot.channels.outbox.enqueue`, then
`OutboxSender(channels={"sms": TwilioSmsChannel.from_settings(...)}, pacing=False)` delivers them through
the real twilio client to a FakeTwilio in its own process (HTTP/1.1 keep-alive, listen backlog 128; up to
`TwilioSmsChannel.parallel_sends` texts to different numbers in flight at once). The clock runs from the first claim to the last
text recorded `sent`. When one sender thread is below the target, four sender threads (each its own
OutboxSender and channel, as four processes would have; claims use FOR UPDATE SKIP LOCKED) are also
measured on PostgreSQL.

Also measured, as the ceiling of the HTTP leg alone: the same twilio client creating messages in the
same fake with no database at all.

    .venv/bin/python bench/bench_outbox.py [--texts 2000] [--backends sqlite,postgres] [--threads 4] [--force-threads]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402

from bench.common import POSTGRES_URL, ensure_database, prepare_database  # noqa: E402

CLINIC_NUMBER = "+16175550199"
TARGET_PER_SECOND = 500.0
IDENTITIES = 200
DELIVERY_TIME_LIMIT = 180.0  # seconds; one delivery phase never runs longer
ENQUEUE_BATCH = 200  # texts per transaction while queueing (set-up, not timed against the target)
# Typical replies (one SMS segment or a little more; each is one Twilio API call). A reference number
# makes every body unique, so the fake's log proves each text went out exactly once.
BODIES = (
    "Riverside Family Clinic is open Monday to Friday, 8 am to 6 pm. Today we are open until 6 pm.",
    "We have your refill request. The care team will answer by 4 pm tomorrow. Reply STOP to opt out.",
    "Your lab order is still being processed. We will text you when there is news.",
    "Hola, la Clínica Familiar Riverside abre de lunes a viernes, de 8 a 18 h.",
    "You can pay your bill in the patient portal under Billing, or call us at (617) 555-0100.",
)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    )


@contextmanager
def process_database(url: str) -> Iterator[None]:
    """Point this process's settings and engine at `url`, and restore the previous ones afterwards."""
    from bot.config import get_settings
    from bot.db import _factory, get_engine

    previous = os.environ.get("CLINICBOT_DATABASE_URL")
    os.environ["CLINICBOT_DATABASE_URL"] = url
    for cached in (get_settings, get_engine, _factory):
        cached.cache_clear()
    try:
        yield
    finally:
        get_engine().dispose()
        if previous is None:
            os.environ.pop("CLINICBOT_DATABASE_URL", None)
        else:
            os.environ["CLINICBOT_DATABASE_URL"] = previous
        for cached in (get_settings, get_engine, _factory):
            cached.cache_clear()


def queue_texts(*, texts: int, tag: str) -> float:
    """Create the identities and queue the texts with outbox.enqueue; return the seconds it took."""
    from bot.channels.outbox import enqueue
    from bot.db import session_scope
    from bot.patients.models import Channel
    from bot.patients.service import get_or_create_identity

    with session_scope() as session:
        identities = [
            get_or_create_identity(session=session, channel=Channel.SMS, address=f"+1617555{2000 + n:04d}")
            for n in range(IDENTITIES)
        ]
        ids = [identity.id for identity in identities]
    started = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("queueing texts", total=texts)
        for first in range(0, texts, ENQUEUE_BATCH):
            with session_scope() as session:
                from bot.patients.models import ChannelIdentity

                by_id = {i.id: i for i in session.query(ChannelIdentity).filter(ChannelIdentity.id.in_(ids))}
                for index in range(first, min(first + ENQUEUE_BATCH, texts)):
                    row = enqueue(
                        session=session,
                        key=f"bench:{tag}:{index}",
                        identity=by_id[ids[index % len(ids)]],
                        body=f"{BODIES[index % len(BODIES)]} Ref {index:05d}.",
                    )
                    assert row is not None
            progress.update(task, completed=min(first + ENQUEUE_BATCH, texts))
    return time.perf_counter() - started


class FakeTwilioProcess:
    """The fake Twilio API in its own process, so it does not share the sender's interpreter lock."""

    def __init__(self) -> None:
        import subprocess

        self.account_sid, self.auth_token = "AC" + secrets.token_hex(16), secrets.token_hex(16)
        self.process = subprocess.Popen(  # noqa: S603 - our own test double
            [sys.executable, "-m", "tests.fakes.fake_twilio", self.account_sid, self.auth_token],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        self.base_url = self.process.stdout.readline().strip()
        if not self.base_url:
            raise RuntimeError("the fake Twilio process did not start")

    def stats(self) -> dict[str, int]:
        """Return how many messages the fake accepted, and how many distinct bodies."""
        import json
        import urllib.request

        with urllib.request.urlopen(f"{self.base_url}/_fake/stats", timeout=10) as response:  # noqa: S310
            return json.loads(response.read())

    def cpu_seconds(self) -> float:
        """Return the CPU seconds the fake's process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> FakeTwilioProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except Exception:
            self.process.kill()
            self.process.wait()


def make_channel(fake: object) -> object:
    """Build the SMS channel exactly as the app does, from settings pointing at the fake."""
    from bot.channels.twilio_sms import TwilioSmsChannel
    from bot.config import Settings

    settings = Settings(
        _env_file=None,
        TWILIO_ACCOUNT_SID=fake.account_sid,  # type: ignore[attr-defined]
        TWILIO_AUTH_TOKEN=fake.auth_token,  # type: ignore[attr-defined]
        TWILIO_FROM_NUMBER=CLINIC_NUMBER,
        TWILIO_MESSAGING_SERVICE_SID="",
        TWILIO_API_BASE_URL=fake.base_url,  # type: ignore[attr-defined]
        public_url="http://127.0.0.1:8000",
        outbox_pacing=False,
    )
    return TwilioSmsChannel.from_settings(settings)


@dataclass
class Delivery:
    backend: str
    threads: int
    texts: int
    sent: int
    other: dict[str, int]
    seconds: float
    fake_messages: int
    distinct_bodies: int
    queue_seconds: float
    load: str
    statements: int  # SQL statements the sender(s) ran (a pre-ping on checkout is not counted)
    sender_cpu: float  # CPU seconds of this process while sending: sender and its send threads
    fake_cpu: float  # CPU seconds of the fake Twilio's process meanwhile
    transactions: int  # pool checkouts: one per session_scope

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else float("nan")


def status_counts() -> dict[str, int]:
    from sqlalchemy import func, select

    from bot.channels.models import OutboxMessage
    from bot.db import session_scope

    with session_scope() as session:
        return dict(
            session.execute(select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status)).all()
        )


def deliver(*, backend: str, texts: int, threads: int) -> Delivery:
    """Queue `texts` on a fresh database and time the sender(s) until every one is sent."""
    from bot.channels.models import OutboxStatus
    from bot.channels.outbox import OutboxSender

    workdir = Path(tempfile.mkdtemp(prefix=f"clinicbot-bench-outbox-{backend}-"))
    try:
        url = prepare_database(backend, workdir, name="outbox.db", seed_demo=False)
        with process_database(url), FakeTwilioProcess() as fake:
            queue_seconds = queue_texts(texts=texts, tag=secrets.token_hex(3))
            senders = [
                OutboxSender(channels={"sms": make_channel(fake)}, pacing=False) for _ in range(threads)
            ]
            deadline = time.monotonic() + DELIVERY_TIME_LIMIT
            finished_at = [0.0] * threads
            cpu_used = [0.0] * threads
            errors: list[BaseException] = []

            def loop(number: int) -> None:
                sender = senders[number]
                cpu_started = time.thread_time()
                try:
                    idle = 0
                    while time.monotonic() < deadline:
                        if sender.run_once() == 0:
                            # Another thread may still hold claimed rows; two empty claims in a row end it.
                            idle += 1
                            if idle >= 2:
                                break
                            time.sleep(0.01)
                        else:
                            idle = 0
                            finished_at[number] = time.perf_counter()
                except BaseException as error:  # a benchmark thread must report, not vanish
                    errors.append(error)
                finally:
                    cpu_used[number] = time.thread_time() - cpu_started

            from sqlalchemy import event

            from bot.db import get_engine

            counts_sql = {"statements": 0, "checkouts": 0}

            def on_execute(*_: object) -> None:
                counts_sql["statements"] += 1

            def on_checkout(*_: object) -> None:
                counts_sql["checkouts"] += 1

            engine = get_engine()
            event.listen(engine, "before_cursor_execute", on_execute)
            event.listen(engine.pool, "checkout", on_checkout)
            load = _load_now()
            workers = [threading.Thread(target=loop, args=(n,), name=f"sender-{n}") for n in range(threads)]
            with _progress() as progress:
                task = progress.add_task(f"{backend}: sending ({threads} thread{'s' if threads > 1 else ''})",
                                         total=texts)  # fmt: skip
                started = time.perf_counter()
                process_cpu, fake_cpu = time.process_time(), fake.cpu_seconds()
                for worker in workers:
                    worker.start()
                while any(worker.is_alive() for worker in workers):
                    time.sleep(0.25)
                    progress.update(task, completed=fake.stats()["messages"])
                process_cpu = time.process_time() - process_cpu
                fake_cpu = fake.cpu_seconds() - fake_cpu
            event.remove(engine, "before_cursor_execute", on_execute)
            event.remove(engine.pool, "checkout", on_checkout)
            if errors:
                raise errors[0]
            seconds = max(finished_at) - started
            counts = status_counts()
            received = fake.stats()
            return Delivery(
                backend=backend,
                threads=threads,
                texts=texts,
                sent=counts.get(OutboxStatus.SENT, 0),
                other={status: count for status, count in counts.items() if status != OutboxStatus.SENT},
                seconds=seconds,
                fake_messages=received["messages"],
                distinct_bodies=received["distinct_bodies"],
                queue_seconds=queue_seconds,
                load=load,
                statements=counts_sql["statements"],
                transactions=counts_sql["checkouts"],
                sender_cpu=process_cpu,
                fake_cpu=fake_cpu,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def http_ceiling(*, count: int = 500) -> tuple[float, float]:
    """Return creates/s of the twilio client against the fake with no database (the HTTP leg's ceiling)
    and the client thread's CPU seconds per create."""
    from bot.channels.base import OutgoingText

    with FakeTwilioProcess() as fake:
        channel = make_channel(fake)
        text = OutgoingText(outbox_id=0, key="k", channel="sms", address="+16175552000", text=BODIES[0],
                            buttons=(), attempt=1, first_attempt_at=None, reconcile=False)  # fmt: skip
        channel.send(text)  # warm the client
        started, cpu_started = time.perf_counter(), time.thread_time()
        for _ in range(count):
            channel.send(text)
        return count / (time.perf_counter() - started), (time.thread_time() - cpu_started) / count


def _load_now() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} / {five:.2f}"


def run(
    *, texts: int = 2000, backends: tuple[str, ...] = ("sqlite", "postgres"), threads: int = 4,
    force_threads: bool = False,
) -> list[tuple[str, str]]:  # fmt: skip
    """Measure delivery with one sender thread per backend (and several on PostgreSQL if below target)."""
    skipped = ensure_database(POSTGRES_URL) if "postgres" in backends else None
    if skipped:
        backends = tuple(b for b in backends if b != "postgres")
    results = [deliver(backend=backend, texts=texts, threads=1) for backend in backends]
    if (
        "postgres" in backends
        and threads > 1
        and (force_threads or any(r.rate < TARGET_PER_SECOND for r in results))
    ):
        results.append(deliver(backend="postgres", texts=texts, threads=threads))
    ceiling, http_cpu = http_ceiling()
    names = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    rows: list[tuple[str, str]] = [
        ("set-up", f"{texts} texts queued with outbox.enqueue to {IDENTITIES} SMS identities "
                   f"({ENQUEUE_BATCH} per transaction); pacing off; fake Twilio in its own process "
                   "(HTTP/1.1 keep-alive, listen backlog 128)"),
    ]  # fmt: skip
    for r in results:
        label = f"{names[r.backend]}, {r.threads} sender thread{'s' if r.threads > 1 else ''}"
        target = "met" if r.rate >= TARGET_PER_SECOND else "NOT met"
        problems = (
            "" if not r.other else "; not sent: " + ", ".join(f"{k} {v}" for k, v in sorted(r.other.items()))
        )
        rows += [
            (f"{label}: delivery rate (target ≥ {TARGET_PER_SECOND:.0f} texts/s)",
             f"{r.rate:,.0f} texts/s ({target}; {r.sent}/{r.texts} sent in {r.seconds:.2f} s; load avg {r.load})"),
            (f"{label}: fake Twilio received",
             f"{r.fake_messages} messages, {r.distinct_bodies} distinct{problems}"),
            (f"{label}: database work per text",
             f"{r.statements / r.texts:.1f} SQL statements in {r.transactions / r.texts:.1f} sessions "
             "(claims amortised over batches of 50)"),
            (f"{label}: time per text",
             f"{1000 / r.rate:.2f} ms wall; sender process CPU {r.sender_cpu / r.texts * 1000:.2f} ms per text "
             f"(sender and its send threads; the twilio client alone ≈{http_cpu * 1000:.2f} ms); "
             f"fake Twilio process {r.fake_cpu / r.texts * 1000:.2f} ms per text"),
        ]  # fmt: skip
    if skipped:
        rows.append(("PostgreSQL", f"skipped: {skipped}"))
    rows.append(
        ("HTTP leg alone: twilio client → fake, no database, one thread",
         f"{ceiling:,.0f} creates/s; client CPU {http_cpu * 1000:.2f} ms per create (measured after the runs)")
    )  # fmt: skip
    rows.append(("queueing (set-up, for reference)",
                 "; ".join(f"{names[r.backend]} {r.texts / r.queue_seconds:,.0f} texts/s" for r in results
                           if r.threads == 1)))  # fmt: skip
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--threads", type=int, default=4, help="sender threads for the PostgreSQL run")
    parser.add_argument(
        "--force-threads", action="store_true", help="run the multi-thread case even if on target"
    )
    args = parser.parse_args()
    backends = tuple(name.strip() for name in args.backends.split(",") if name.strip())
    unknown = set(backends) - {"sqlite", "postgres"}
    if unknown or args.texts < 1 or args.threads < 1:
        parser.error(
            f"unknown backend(s): {', '.join(sorted(unknown))}" if unknown else "counts must be positive"
        )
    rows = run(texts=args.texts, backends=backends, threads=args.threads, force_threads=args.force_threads)
    print("| metric | value |\n| --- | --- |")
    for metric, value in rows:
        print(f"| {metric} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
