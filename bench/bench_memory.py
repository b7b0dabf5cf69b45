"""Benchmark: peak resident memory of a real `clinicbot serve` process under the inbound load, SQLite and PostgreSQL.

The server is the one bench_inbound measures (signed Twilio webhooks in, replies out to a fake Twilio on
loopback) and the load is bench_inbound's own generator (16 threads, requests signed in advance). Two
rounds of N webhooks each run back to back; RSS is sampled every 50 ms (psutil when installed, else
/proc/<pid>/status), and the kernel's high-water mark (VmHWM) gives the true peak. The RSS after each
round, once every reply is sent, shows whether memory keeps growing with traffic.

    .venv/bin/python bench/bench_memory.py [--requests 1500] [--backends sqlite,postgres]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_inbound import (  # noqa: E402
    INBOUND_PATH,
    fire,
    outbox_counts,
    plan,
    sender_pool,
    server_env,
    wait_for_delivery,
)
from bench.common import ensure_database, prepare_database  # noqa: E402

POSTGRES_URL = os.environ.get(
    "CLINICBOT_MEM_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/bench_mem"
)
CONCURRENCY = 16
ROUNDS = 2
DELIVERY_LIMIT = 120.0  # seconds for a round's replies to be sent


def _proc_status_kib(pid: int, field_name: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def rss_bytes(pid: int) -> int | None:
    """Return a process's resident set size now."""
    try:
        import psutil  # type: ignore[import-not-found]

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        kib = _proc_status_kib(pid, "VmRSS")
        return None if kib is None else kib * 1024
    except Exception:  # noqa: BLE001 - psutil.NoSuchProcess and friends: the process is gone
        return None


def high_water_bytes(pid: int) -> int | None:
    """Return the kernel's peak RSS of a process (Linux), or None elsewhere."""
    kib = _proc_status_kib(pid, "VmHWM")
    return None if kib is None else kib * 1024


@dataclass
class Sampler:
    """Sample a process's RSS in a background thread; keep the maximum."""

    pid: int
    interval: float = 0.05
    peak: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            value = rss_bytes(self.pid)
            if value is not None:
                self.peak = max(self.peak, value)
                self.samples += 1


@dataclass
class MemoryResult:
    backend: str
    started: int  # RSS once healthy, before any request
    after_rounds: list[int]
    sampled_peak: int
    high_water: int | None
    acknowledged: int
    sent: int
    undelivered: int


def mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.1f} MiB"


def measure(backend: str, *, requests: int) -> MemoryResult:
    """Start a real server on one backend, drive it with ROUNDS × requests webhooks, and read its memory."""
    from tests.e2e.server import ServerProcess
    from tests.fakes.fake_twilio import FakeTwilio

    workdir = Path(tempfile.mkdtemp(prefix=f"clinicbot-bench-memory-{backend}-"))
    fake = FakeTwilio(account_sid="AC" + secrets.token_hex(16), auth_token=secrets.token_hex(16)).start()
    server = None
    outbox = None
    try:
        db_url = prepare_database(
            backend, workdir, name="memory.db", seed_demo=True, postgres_url=POSTGRES_URL
        )
        server = ServerProcess(env={})
        server.env.update(server_env(db_url=db_url, server_url=server.url, fake=fake))
        server.start(timeout=120)
        assert server.process is not None
        pid = server.process.pid
        started = rss_bytes(pid) or 0
        outbox = outbox_counts(db_url)
        after_rounds, acknowledged, undelivered = [], 0, 0
        tag = secrets.token_hex(3)
        with Sampler(pid) as sampler:
            for index in range(ROUNDS):
                planned = plan(count=requests, tag=f"{tag}{index}", public_url=server.url, path=INBOUND_PATH,
                               token=fake.auth_token, account_sid=fake.account_sid, pool=sender_pool(),
                               seed=100 + index)  # fmt: skip
                load = fire(base_url=server.url, path=INBOUND_PATH, planned=planned, concurrency=CONCURRENCY,
                            label=f"{backend}: memory round {index + 1}/{ROUNDS}")  # fmt: skip
                acknowledged += load.ok
                undelivered, _ = wait_for_delivery(outbox, limit=DELIVERY_LIMIT)
                after_rounds.append(rss_bytes(pid) or 0)
        return MemoryResult(
            backend=backend,
            started=started,
            after_rounds=after_rounds,
            sampled_peak=sampler.peak,
            high_water=high_water_bytes(pid),
            acknowledged=acknowledged,
            sent=ROUNDS * requests,
            undelivered=undelivered,
        )
    finally:
        if outbox is not None:
            outbox.dispose()  # type: ignore[attr-defined]
        if server is not None:
            server.stop()
            server.log.unlink(missing_ok=True)
        fake.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def run(*, requests: int = 1500, backends: tuple[str, ...] = ("sqlite", "postgres")) -> list[tuple[str, str]]:
    """Measure each backend; return (metric, value) rows."""
    try:
        import psutil  # type: ignore[import-not-found]  # noqa: F401

        how = "psutil"
    except ImportError:
        how = "/proc/<pid>/status VmRSS"
    rows = [
        ("load", f"{ROUNDS} rounds × {requests} signed `POST /webhooks/twilio/sms`, {CONCURRENCY} threads "
                 f"(bench_inbound's generator), replies sent to a fake Twilio; RSS sampled every 50 ms via {how}, "
                 "peak also from the kernel's VmHWM"),
    ]  # fmt: skip
    if "postgres" in backends and (reason := ensure_database(POSTGRES_URL)):
        rows.append(("PostgreSQL", f"skipped: {reason}"))
        backends = tuple(b for b in backends if b != "postgres")
    for backend in backends:
        result = measure(backend, requests=requests)
        name = {"sqlite": "SQLite", "postgres": "PostgreSQL"}[backend]
        peak = max(result.sampled_peak, result.high_water or 0)
        growth = result.after_rounds[-1] - result.after_rounds[0] if len(result.after_rounds) > 1 else 0
        rows += [
            (f"{name}: peak RSS of `clinicbot serve` (kernel VmHWM: start-up included)",
             f"{mib(peak)}; highest sample under load {mib(result.sampled_peak)}"),
            (f"{name}: RSS idle after start → after each round",
             " → ".join(mib(v) for v in [result.started, *result.after_rounds])),
            (f"{name}: growth from round 1 to round {ROUNDS}",
             f"{mib(growth)} over {requests} more messages ({growth / requests / 1024:,.2f} KiB per message)"),
            (f"{name}: webhooks acknowledged / replies still unsent",
             f"{result.acknowledged}/{result.sent} / {result.undelivered}"),
        ]  # fmt: skip
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1500, help="webhooks per round")
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    args = parser.parse_args()
    backends = tuple(name.strip() for name in args.backends.split(",") if name.strip())
    if set(backends) - {"sqlite", "postgres"} or args.requests < 1:
        parser.error("backends are sqlite and/or postgres; --requests must be positive")
    print("| metric | value |\n| --- | --- |")
    for metric, value in run(requests=args.requests, backends=backends):
        print(f"| {metric} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
