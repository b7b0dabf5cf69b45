"""Fault suite (`make soak`): mixed traffic on PostgreSQL with two app processes and one scheduler, under faults.

Set-up, all on loopback: a fresh PostgreSQL database with the demo clinic (opened round the clock for
the run: hours, quiet hours and the daily update time allow an update now, and holiday_country is
cleared because the run may fall on a public holiday), a fake Twilio and a fake Telegram, two
`clinicbot serve --no-scheduler` processes behind a client-side "load balancer", and one
`clinicbot scheduler run` (promise sweeps every 2 s, plus its own outbox sender).

Traffic for a bounded time: signed SMS webhooks (demo patients and strangers), Telegram updates, web chat
messages, and lab orders created through the REST API with expected_by in the past (so their promises are
due now), some then resulted. Every request is retried like a provider would (another process, backoff)
until acknowledged or its time budget runs out.

Faults: the fake Twilio answers 5xx and 429 (Retry-After) and the fake Telegram 500 and 429 to a share of
sends; duplicate webhooks (the same MessageSid / update_id / client id again: later, to the other process,
or concurrently to both); `kill -9` of one app process and of the scheduler, each restarted; a PostgreSQL
restart (pg_ctlcluster; skipped, saying why, when it cannot be done here or SOAK_PG_RESTART=0).

After the traffic everything drains; then the checks (exit 1 on any violation):
- every acknowledged inbound message is stored exactly once, and nothing else is;
- every processed inbound message that the bot answers has its replies queued, and each queued text
  reached the fake provider exactly once (matched by the provider's message id: none lost, none doubled);
- every due promise got at most one update per kind and clinic-local day; every one still open got exactly
  one late update (or call-list entry) today, and every resulted order its results-ready notice.

    .venv/bin/python bench/soak.py [--seconds 180] [--rate 12]      (SOAK_SECONDS overrides the default)
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402
from twilio.request_validator import RequestValidator  # noqa: E402

SOAK_URL = os.environ.get(
    "CLINICBOT_SOAK_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/bench_soak"
)
PUBLIC_URL = (
    "http://soak.clinicbot.test"  # what both app processes believe they are reached at (a load balancer)
)
CLINIC_NUMBER = "+16175550199"
TELEGRAM_TOKEN = "424242:SOAK-token_for-clinicbot"  # noqa: S105 (the fake's token)
TELEGRAM_SECRET = "soak-secret-token"  # noqa: S105
DEMO_PHONES = ("+16175550142", "+16175550101", "+16175550177")
STRANGERS = tuple(f"+1617555{n:04d}" for n in range(2000, 2040))
# Texts the demo clinic answers without handing off (a hand-off silences later texts, which is allowed
# and checked, but would leave little to answer).
BODIES = ("what time do you open", "are you open on saturday", "hi", "thanks", "where are you located",
          "how do i pay my bill", "any news on my lab results", "are my test results back",
          "I need a refill of my blood pressure medicine", "¿a qué hora abren mañana?", "good morning")  # fmt: skip
REQUEST_BUDGET = 45.0  # seconds a request keeps being retried before it counts as never acknowledged
DRAIN_LIMIT = 120.0  # seconds after the traffic for everything to settle
SETTLED_OK = ("sent", "delivered", "read")
# A queued late update withdrawn because its promise closed first: the cancellation's reason -> the promise's status.
WITHDRAWN = {"promise_kept": "kept", "promise_cancelled": "cancelled"}

console = Console(stderr=True)


# -- processes --------------------------------------------------------------------------------


def free_port() -> int:
    """Return a free loopback port."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def webchat_key(client_message_id: str) -> str:
    """Name a web chat message by the id its page gave it (unique in a run).

    The server stores it under the visitor's identity id and that id (bot.web.routers.webchat), which the
    load generator does not know before the session's first message.
    """
    return f"webchat:{client_message_id}"


class Proc:
    """One clinicbot process in its own process group, logging to a file; kill -9 and restart."""

    def __init__(
        self, name: str, args: list[str], *, env: dict[str, str], workdir: Path, port: int | None = None
    ):
        self.name, self.args, self.port = name, args, port
        self.env = {**os.environ, **env}
        self.log = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout: float = 120.0) -> None:
        """Start; for a web process wait until /healthz answers."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", *self.args], cwd=ROOT, env=self.env,
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        self.starts += 1
        if self.port is None:
            time.sleep(1.0)
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-1500:]}")
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-1500:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become healthy in {timeout:.0f} s")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        """Kill the process group at once, as a crash would."""
        if self.alive():
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if not self.alive():
            return
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill9()
        except ProcessLookupError:
            pass


def run_cli(args: list[str], env: dict[str, str], *, timeout: float = 180.0) -> str:
    """Run one clinicbot command to completion; return its stdout or raise with its output."""
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "bot.cli", *args], cwd=ROOT, env={**os.environ, **env},
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"clinicbot {' '.join(args)} failed: {done.stdout[-800:]} {done.stderr[-800:]}")
    return done.stdout


# -- PostgreSQL ---------------------------------------------------------------------------------


def postgres_problem(url: str) -> str | None:
    """Return why the soak database cannot be used (creating it when missing), or None."""
    from bench.common import ensure_database

    return ensure_database(url)


def reset_database(url: str) -> None:
    """Drop and recreate the public schema (the run then migrates it with `clinicbot init --demo`)."""
    from sqlalchemy import text

    from bot.db import make_engine

    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


def open_clinic_all_day(url: str) -> None:
    """Make an update due right now: open every day, send any time, update time at midnight, no holidays."""
    from sqlalchemy import update

    from bot.clinic_settings import ClinicProfile
    from bot.db import make_engine

    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(update(ClinicProfile).values(
                weekly_hours={day: "00:00-23:59" for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")},
                holiday_country=None, holiday_subdivision=None, closures=[],
                daily_update_time="00:00", quiet_start="00:00", quiet_end="23:59",
            ))  # fmt: skip
    finally:
        engine.dispose()


def pg_restart_command() -> tuple[list[str] | None, str]:
    """Return the command restarting the local cluster, or None and why it cannot be run here."""
    if os.environ.get("SOAK_PG_RESTART", "1").lower() in {"0", "false", "no"}:
        return None, "SOAK_PG_RESTART=0"
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        return None, "pg_ctlcluster is not installed (PostgreSQL not managed by postgresql-common here)"
    listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, timeout=20,  # noqa: S607
                             check=False).stdout  # fmt: skip
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "5432" and parts[3] == "online":
            owner = parts[4] if len(parts) > 4 else "postgres"
            if os.geteuid() not in (0,) and owner != os.environ.get("USER"):
                return (
                    None,
                    f"cluster {parts[0]}/{parts[1]} is owned by {owner}; this user cannot restart it (no sudo)",
                )
            return ["pg_ctlcluster", "--skip-systemctl-redirect", parts[0], parts[1], "restart"], ""
    return None, "no online cluster on port 5432 found by pg_lsclusters (PostgreSQL runs elsewhere)"


def wait_for_postgres(url: str, *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if postgres_problem(url) is None:
            return True
        time.sleep(0.5)
    return False


# -- the load --------------------------------------------------------------------------------


@dataclass
class Stats:
    """What the load generator did and saw."""

    sent: Counter[str] = field(default_factory=Counter)  # distinct messages per channel
    duplicates: Counter[str] = field(default_factory=Counter)  # resends of an already sent id, by mode
    faults: Counter[str] = field(default_factory=Counter)
    skipped_faults: dict[str, str] = field(default_factory=dict)
    unacknowledged: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    lab_created: int = 0
    lab_resulted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    # provider id -> channel, for every message acknowledged at least once
    acknowledged: dict[str, str] = field(default_factory=dict)
    # provider id of every message sent at least once (stored-but-unacknowledged is allowed)
    attempted: set[str] = field(default_factory=set)

    def count(self, counter: str, key: str, n: int = 1) -> None:
        with self.lock:
            getattr(self, counter)[key] += n


class _Params(dict[str, list[str]]):
    def getlist(self, name: str) -> list[str]:
        return self[name]


class Load:
    """Builds, sends and retries requests across the app processes."""

    def __init__(self, *, apps: list[Proc], twilio_token: str, api_key: str, stats: Stats, seed: int) -> None:
        self.apps, self.stats, self.api_key = apps, stats, api_key
        self.validator = RequestValidator(twilio_token)
        self.rng = random.Random(seed)
        self.rng_lock = threading.Lock()
        self.local = threading.local()
        self.update_ids = itertools.count(random.Random(seed).randrange(10_000_000, 90_000_000))
        self.sids = itertools.count(1)
        self.chat_ids = [7_000_000 + n for n in range(30)]
        self.webchat_sessions = [secrets.token_hex(16) for _ in range(20)]
        self.labs = itertools.count(1)
        self.run_tag = secrets.token_hex(3)
        self.stopping = threading.Event()

    def choice(self, seq):  # type: ignore[no-untyped-def]
        with self.rng_lock:
            return self.rng.choice(seq)

    def chance(self, p: float) -> bool:
        with self.rng_lock:
            return self.rng.random() < p

    def client(self) -> httpx.Client:
        client = getattr(self.local, "client", None)
        if client is None:
            client = self.local.client = httpx.Client(timeout=10.0, trust_env=False)
        return client

    # -- sending with retries -------------------------------------------------------------------

    def send(self, method: str, path: str, *, content: bytes | None = None, json: object = None,
             headers: dict[str, str], app: int | None = None, ok: Callable[[int], bool]) -> int | None:  # fmt: skip
        """Send until a process acknowledges (another process after a failure); return the status or None."""
        deadline = time.monotonic() + REQUEST_BUDGET
        target = self.choice(range(len(self.apps))) if app is None else app
        delay = 0.1
        while True:
            url = self.apps[target].url + path
            try:
                response = self.client().request(method, url, content=content, json=json, headers=headers)
                self.stats.count("statuses", str(response.status_code))
                if ok(response.status_code):
                    return response.status_code
            except httpx.HTTPError as error:
                self.stats.count("statuses", type(error).__name__)
            if time.monotonic() > deadline:
                return None
            with self.stats.lock:
                self.stats.retries += 1
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            target = (target + 1) % len(self.apps)

    # -- channels ---------------------------------------------------------------------------------

    def sms(self) -> tuple[str, Callable[[int | None], int | None]]:
        sid = f"SM{self.run_tag}{next(self.sids):026x}"
        pairs = [("ToCountry", "US"), ("SmsMessageSid", sid), ("NumMedia", "0"), ("MessageSid", sid),
                 ("AccountSid", "AC" + "0" * 31 + "1"), ("From", self.choice(DEMO_PHONES + STRANGERS)),
                 ("To", CLINIC_NUMBER), ("Body", self.choice(BODIES)), ("NumSegments", "1"),
                 ("ApiVersion", "2010-04-01")]  # fmt: skip
        params = _Params()
        for name, value in pairs:
            params.setdefault(name, []).append(value)
        headers = {"Content-Type": "application/x-www-form-urlencoded",
                   "X-Twilio-Signature": self.validator.compute_signature(PUBLIC_URL + "/webhooks/twilio/sms", params)}  # fmt: skip
        body = urlencode(pairs).encode()
        return sid, lambda app: self.send("POST", "/webhooks/twilio/sms", content=body, headers=headers, app=app,
                                          ok=lambda s: s == 200)  # fmt: skip

    def telegram(self) -> tuple[str, Callable[[int | None], int | None]]:
        from tests.fakes.fake_telegram import text_update

        update_id = next(self.update_ids)
        update = text_update(update_id, self.choice(self.chat_ids), self.choice(BODIES[:7]))
        headers = {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}
        return f"update:{update_id}", lambda app: self.send("POST", "/webhooks/telegram", json=update,
                                                            headers=headers, app=app, ok=lambda s: s == 200)  # fmt: skip

    def webchat(self) -> tuple[str, Callable[[int | None], int | None]]:
        session = self.choice(self.webchat_sessions)
        client_id = f"{self.run_tag}-{next(self.sids)}"
        body = {"text": self.choice(BODIES[:7]), "client_message_id": client_id}
        headers = {"Origin": PUBLIC_URL, "Cookie": f"clinicbot_chat={session}"}
        provider_id = webchat_key(client_id)
        return provider_id, lambda app: self.send("POST", "/chat/api/messages", json=body, headers=headers,
                                                  app=app, ok=lambda s: s == 202)  # fmt: skip

    def lab(self) -> None:
        """Create a lab order due an hour ago (its promise is due now); result about a third of them."""
        n = next(self.labs)
        order_id = f"SOAK-{self.run_tag}-{n}"
        now = datetime.now(tz=UTC)
        body = {"order_id": order_id, "test_name": "Lipid panel",
                "patient": {"phone": f"+1617555{3000 + n % 60:04d}", "name": f"Soak Patient {n % 60}",
                            "date_of_birth": "1980-01-01", "external_id": f"SOAK-{n % 60}"},
                "ordered_at": (now - timedelta(days=2)).isoformat(),
                "expected_by": (now - timedelta(hours=1)).isoformat()}  # fmt: skip
        headers = {"Authorization": f"Bearer {self.api_key}"}
        if (
            self.send("POST", "/api/v1/lab-orders", json=body, headers=headers, ok=lambda s: s in (200, 201))
            is None
        ):
            self.stats.count("unacknowledged", "lab_order")
            return
        with self.stats.lock:
            self.stats.lab_created += 1
        if not self.chance(0.35):
            return
        time.sleep(self.choice((0.0, 1.0, 3.0)))  # before or after the sweep's late update
        # A retried PATCH of a status already applied answers 409: the order is then resulted all the same.
        status = self.send("PATCH", f"/api/v1/lab-orders/{order_id}", json={"status": "resulted"}, headers=headers,
                           ok=lambda s: s in (200, 409))  # fmt: skip
        if status is None:
            self.stats.count("unacknowledged", "lab_result")
        else:
            with self.stats.lock:
                self.stats.lab_resulted += 1

    def message(self, channel: str, pool: ThreadPoolExecutor) -> None:
        """Send one new message; sometimes send it again (later, elsewhere, or twice at once)."""
        provider_id, post = {"sms": self.sms, "telegram": self.telegram, "webchat": self.webchat}[channel]()
        self.stats.count("sent", channel)
        with self.stats.lock:
            self.stats.attempted.add(provider_id)
        if not self.chance(0.12):
            self._ack(channel, provider_id, post(None))
            return
        mode = self.choice(("later, same process", "later, other process", "concurrently, both processes"))
        self.stats.count("duplicates", mode)
        if mode.startswith("concurrently"):
            other = pool.submit(post, 1)
            self._ack(channel, provider_id, post(0))
            self._ack(channel, provider_id, other.result())
            return
        first = self.choice((0, 1))
        self._ack(channel, provider_id, post(first))
        time.sleep(self.choice((0.0, 0.2, 1.0)))
        self._ack(channel, provider_id, post(first if mode.endswith("same process") else 1 - first))

    def _ack(self, channel: str, provider_id: str, status: int | None) -> None:
        if status is None:
            self.stats.count("unacknowledged", channel)
            return
        with self.stats.lock:
            self.stats.acknowledged[provider_id] = channel


def run_traffic(load: Load, *, seconds: float, rate: float, faults: Callable[[float], None]) -> None:
    """Start events at `rate` per second for `seconds`, calling faults(elapsed) along the way."""
    mix = ["sms"] * 5 + ["telegram"] * 3 + ["webchat"] * 2 + ["lab"]
    workers = ThreadPoolExecutor(max_workers=24, thread_name_prefix="soak-load")
    helpers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="soak-dup")
    started = time.monotonic()
    futures = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console,
                  transient=True) as progress:  # fmt: skip
        task = progress.add_task("soak traffic", total=seconds)
        tick = 0
        while (elapsed := time.monotonic() - started) < seconds:
            kind = load.choice(mix)
            if kind == "lab":
                futures.append(workers.submit(load.lab))
            else:
                futures.append(workers.submit(load.message, kind, helpers))
            tick += 1
            if tick % 10 == 0:
                progress.update(
                    task,
                    completed=elapsed,
                    description=f"soak traffic ({sum(load.stats.sent.values())} sent)",
                )
                faults(elapsed)
            time.sleep(max(0.0, started + tick / rate - time.monotonic()))
        progress.update(task, description="soak traffic: waiting for the last requests")
        deadline = time.monotonic() + REQUEST_BUDGET * 2 + 15
        for future in futures:
            try:
                future.result(timeout=max(0.1, deadline - time.monotonic()))
            except Exception as error:  # noqa: BLE001 - reported, never hangs the run
                console.print(f"[red]load task failed: {type(error).__name__}: {error}")
    workers.shutdown(wait=False, cancel_futures=True)
    helpers.shutdown(wait=False, cancel_futures=True)


# -- provider faults ----------------------------------------------------------------------------


class ProviderFaults:
    """Keep a few provider faults queued while the traffic runs: roughly `share` of sends fail once."""

    def __init__(self, twilio, telegram, stats: Stats, *, share: float = 0.1) -> None:  # type: ignore[no-untyped-def]
        self.twilio, self.telegram, self.stats, self.share = twilio, telegram, stats, share
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="soak-faults", daemon=True)
        self.rng = random.Random(7)

    def _run(self) -> None:
        from tests.fakes.fake_twilio import Fault

        while not self.stop.wait(0.5):
            if self.twilio.pending_faults == 0 and self.rng.random() < self.share * 5:
                if self.rng.random() < 0.5:
                    self.twilio.fail_next(Fault.server_error(status=self.rng.choice((500, 502, 503))))
                    self.stats.count("faults", "Twilio 5xx")
                else:
                    self.twilio.fail_next(Fault.rate_limited(retry_after=1))
                    self.stats.count("faults", "Twilio 429 + Retry-After")
            if self.rng.random() < self.share * 3:
                if self.rng.random() < 0.5:
                    self.telegram.server_error()
                    self.stats.count("faults", "Telegram 500")
                else:
                    self.telegram.rate_limit(retry_after=1)
                    self.stats.count("faults", "Telegram 429 + retry_after")

    def start(self) -> ProviderFaults:
        self.thread.start()
        return self

    def finish(self) -> None:
        """Stop queuing; faults still queued are cleared so the drain is clean, and not counted."""
        self.stop.set()
        self.thread.join(timeout=5)
        with self.twilio.state.lock:
            for kind, queue in self.twilio.state.faults.items():
                for fault in queue:
                    label = "Twilio 429 + Retry-After" if fault.status == 429 else "Twilio 5xx"
                    self.stats.faults[label] -= 1
                queue.clear()
                del kind
        with self.telegram._lock:  # noqa: SLF001 - the fake has no public way to drop queued faults
            for queue in self.telegram._state.faults.values():  # noqa: SLF001
                for fault in queue:
                    label = "Telegram 429 + retry_after" if fault.status == 429 else "Telegram 500"
                    self.stats.faults[label] -= 1
                queue.clear()


# -- checks -----------------------------------------------------------------------------------


@dataclass
class Report:
    rows: list[tuple[str, str]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def add(self, name: str, value: object) -> None:
        self.rows.append((name, str(value)))

    def violate(self, message: str) -> None:
        self.violations.append(message)


def _called_about(order_id):  # type: ignore[no-untyped-def]
    """Return a clause: the order's promise is on the staff call list (the patient cannot be texted)."""
    from sqlalchemy import and_, exists

    from bot.promises.models import Promise, PromiseUpdate

    return exists().where(and_(Promise.subject_type == "lab_order", Promise.subject_id == order_id,
                               PromiseUpdate.promise_id == Promise.id, PromiseUpdate.kind == "call_list"))  # fmt: skip


def drain(url: str, *, limit: float) -> str:
    """Wait until every inbound message is processed, nothing waits in the outbox and sweeps caught up."""
    from sqlalchemy import func, select

    from bot.channels.models import OutboxMessage
    from bot.conversations.models import Direction, Message
    from bot.db import make_engine
    from bot.labs.models import LabOrder, LabStatus
    from bot.promises.models import Promise, PromiseStatus

    engine = make_engine(url)
    deadline = time.monotonic() + limit
    called_about = _called_about
    state = ""
    try:
        with Progress(
            TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True
        ) as progress:
            task = progress.add_task("draining")
            while True:
                try:
                    with engine.connect() as connection:
                        unprocessed = connection.scalar(select(func.count()).select_from(Message).where(
                            Message.direction == Direction.IN, Message.processed_at.is_(None)))  # fmt: skip
                        # Telegram rows of unknown outcome wait minutes between reconciliations: they are settled
                        # for this check (counted against what the fake Telegram received).
                        waiting = connection.scalar(select(func.count()).select_from(OutboxMessage).where(
                            OutboxMessage.status.in_(("pending", "sending"))
                            | ((OutboxMessage.status == "unknown") & (OutboxMessage.channel != "telegram"))))  # fmt: skip
                        now = datetime.now(tz=UTC)
                        late_due = connection.scalar(select(func.count()).select_from(Promise).where(
                            Promise.status == PromiseStatus.OPEN, Promise.due_at <= now - timedelta(seconds=1),
                            Promise.next_update_at.is_(None)))  # fmt: skip
                        unnotified = connection.scalar(select(func.count()).select_from(LabOrder).where(
                            LabOrder.status == LabStatus.RESULTED, LabOrder.result_notified_at.is_(None),
                            ~called_about(LabOrder.id)))  # fmt: skip
                    state = (f"{unprocessed} unprocessed, {waiting} in the outbox, {late_due} due promises without "
                             f"an update, {unnotified} results not yet told")  # fmt: skip
                    progress.update(task, description=f"draining: {state}")
                    if unprocessed == 0 and waiting == 0 and late_due == 0 and unnotified == 0:
                        return ""
                except Exception as error:  # noqa: BLE001 - the database may be restarting
                    state = f"database error {type(error).__name__}"
                if time.monotonic() > deadline:
                    return state
                time.sleep(0.5)
    finally:
        engine.dispose()


def settle(counts: Callable[[], int], *, quiet: float = 3.0, limit: float = 30.0) -> None:
    """Wait until a count stops changing for `quiet` seconds."""
    last, since, deadline = -1, time.monotonic(), time.monotonic() + limit
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        now = counts()
        if now != last:
            last, since = now, time.monotonic()
        time.sleep(0.2)


def check(url: str, *, stats: Stats, twilio, telegram, report: Report) -> None:  # type: ignore[no-untyped-def]
    """Compare what was sent with what was stored, answered and delivered; record counts and violations."""
    from sqlalchemy import func, select

    from bot.channels.models import OutboxMessage
    from bot.conversations.models import Direction, Message
    from bot.db import make_engine
    from bot.labs.models import LabOrder, LabStatus
    from bot.patients.models import ChannelIdentity
    from bot.promises.models import Promise, PromiseStatus, PromiseUpdate

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            inbound = [
                (mid, channel, webchat_key(pid.partition(":")[2]) if channel == "webchat" else pid, processed, route)
                for mid, channel, pid, processed, route in connection.execute(
                    select(Message.id, Message.channel, Message.provider_message_id, Message.processed_at,
                           Message.route).where(Message.direction == Direction.IN))
            ]  # fmt: skip
            outbox = connection.execute(select(OutboxMessage.id, OutboxMessage.key, OutboxMessage.channel,
                                               OutboxMessage.status, OutboxMessage.provider_message_id,
                                               OutboxMessage.body, OutboxMessage.error_code, ChannelIdentity.address)
                                        .join(ChannelIdentity, ChannelIdentity.id == OutboxMessage.identity_id)).all()  # fmt: skip
            updates = connection.execute(select(PromiseUpdate.promise_id, PromiseUpdate.local_date,
                                                PromiseUpdate.kind)).all()  # fmt: skip
            promises = connection.execute(select(Promise.id, Promise.status, Promise.due_at, Promise.subject_type,
                                                 Promise.subject_id)).all()  # fmt: skip
            orders = connection.execute(select(LabOrder.id, LabOrder.order_id, LabOrder.status,
                                               LabOrder.result_notified_at)).all()  # fmt: skip
            duplicates_in_db = connection.execute(
                select(Message.channel, Message.provider_message_id, func.count())
                .where(Message.direction == Direction.IN)
                .group_by(Message.channel, Message.provider_message_id).having(func.count() > 1)).all()  # fmt: skip
    finally:
        engine.dispose()

    # 1. Stored once.
    stored = Counter(provider_id for _, _, provider_id, _, _ in inbound)
    acknowledged = stats.acknowledged
    missing = [pid for pid in acknowledged if stored[pid] == 0]
    extra = [pid for pid in stored if pid not in stats.attempted]
    for channel in ("sms", "telegram", "webchat"):
        acked = sum(1 for c in acknowledged.values() if c == channel)
        rows = sum(1 for _, c, pid, _, _ in inbound if c == channel and pid in acknowledged)
        report.add(
            f"{channel}: messages sent / acknowledged / stored", f"{stats.sent[channel]} / {acked} / {rows}"
        )
    if missing:
        report.violate(f"{len(missing)} acknowledged messages not stored, e.g. {missing[:3]}")
    if extra:
        report.violate(f"{len(extra)} stored inbound messages nobody sent, e.g. {extra[:3]}")
    if duplicates_in_db:
        report.violate(f"{len(duplicates_in_db)} inbound messages stored more than once")

    # 2. Answered exactly once.
    unprocessed = [mid for mid, _, _, processed, _ in inbound if processed is None]
    if unprocessed:
        report.violate(f"{len(unprocessed)} inbound messages never processed")
    reply_keys: dict[int, int] = Counter()
    for _, key, *_ in outbox:
        if key.startswith("reply:"):
            reply_keys[int(key.split(":")[1])] += 1
    routes = Counter(route for *_, route in inbound)
    answerable = [
        mid for mid, _, _, processed, route in inbound if processed is not None and route != "silent"
    ]
    unanswered = [mid for mid in answerable if reply_keys[mid] == 0]
    report.add(
        "inbound processed (by route)", ", ".join(f"{r} {n}" for r, n in sorted(routes.items(), key=str))
    )
    report.add(
        "inbound answered / should be answered", f"{len(answerable) - len(unanswered)} / {len(answerable)}"
    )
    if unanswered:
        report.violate(
            f"{len(unanswered)} processed messages routed to a reply have none queued, e.g. {unanswered[:3]}"
        )
    silent_with_reply = [mid for mid, _, _, _, route in inbound if route == "silent" and reply_keys[mid]]
    if silent_with_reply:
        report.violate(f"{len(silent_with_reply)} silent messages were answered anyway")

    # Delivery: every queued text reached its provider exactly once, matched by the provider's id.
    statuses = Counter((channel, status) for _, _, channel, status, *_ in outbox)
    report.add(
        "outbox texts by channel and status",
        ", ".join(f"{c} {s} {n}" for (c, s), n in sorted(statuses.items())),
    )
    twilio_by_sid = {m.sid: m for m in twilio.messages}
    telegram_sent = {f"{m.chat_id}:{m.message_id}": m for m in telegram.sent}
    claimed_twilio, claimed_telegram = Counter(), Counter()
    unknown_telegram: Counter[tuple[str, str]] = Counter()
    by_kind = Counter()
    promise_status = {pid: str(status) for pid, status, *_ in promises}
    withdrawn = 0
    for _, key, channel, status, provider_id, body, error_code, address in outbox:
        kind = key.split(":", 1)[0]
        if status == "cancelled" and kind == "promise" and key.endswith(":late_update") and error_code in WITHDRAWN:
            # Withdrawn by design: the promise was kept (results came) or cancelled while its late update waited
            # (a retry in backoff), and "still waiting" would contradict what the patient is told next.
            if promise_status.get(int(key.split(":")[1])) != WITHDRAWN[error_code]:
                report.violate(f"outbox {key} withdrawn ({error_code}) but its promise is not {WITHDRAWN[error_code]}")
            withdrawn += 1
            continue
        if status not in SETTLED_OK:
            if channel == "telegram" and (
                status == "unknown" or error_code in ("unknown_outcome", "timeout")
            ):
                unknown_telegram[(address, body or "")] += 1
                continue
            report.violate(f"outbox {key} ({channel}) ended {status} ({error_code})")
            continue
        by_kind[kind] += 1
        if channel == "sms":
            if provider_id not in twilio_by_sid:
                report.violate(
                    f"outbox {key} says sent as {provider_id}, which the fake Twilio never received"
                )
            claimed_twilio[provider_id] += 1
        elif channel == "telegram":
            # Telegram numbers messages per chat: the outbox keeps the message id, the address the chat.
            sent_as = f"{address}:{provider_id}"
            if sent_as not in telegram_sent:
                report.violate(
                    f"outbox {key} says sent as message {provider_id}, which the fake Telegram never received"
                )
            claimed_telegram[sent_as] += 1
    for provider_id, n in list(claimed_twilio.items()) + list(claimed_telegram.items()):
        if n > 1:
            report.violate(f"{n} outbox rows claim one provider message {provider_id}")
    orphans_twilio = [m for sid, m in twilio_by_sid.items() if sid not in claimed_twilio]
    if orphans_twilio:
        report.violate(f"the fake Twilio received {len(orphans_twilio)} texts no outbox row accounts for "
                       f"(sent twice), e.g. to {orphans_twilio[0].to}")  # fmt: skip
    orphans_telegram = Counter(
        (str(m.chat_id), m.text) for pid, m in telegram_sent.items() if pid not in claimed_telegram
    )
    lost_unknown = 0
    for pair, n in orphans_telegram.items():
        if n > unknown_telegram[pair]:
            report.violate(
                f"the fake Telegram received {n - unknown_telegram[pair]} texts to {pair[0]} twice"
            )
    for pair, n in unknown_telegram.items():
        if orphans_telegram[pair] < n:
            lost_unknown += n - orphans_telegram[pair]
    if lost_unknown:
        report.violate(f"{lost_unknown} Telegram texts of unknown outcome never reached the fake Telegram")
    report.add("late updates withdrawn before they went (their promise closed first)", withdrawn)
    report.add("texts delivered by kind (reply / promise / other)",
               f"{by_kind['reply']} / {by_kind['promise']} / {sum(by_kind.values()) - by_kind['reply'] - by_kind['promise']}")  # fmt: skip
    report.add(
        "fake Twilio received / fake Telegram received", f"{len(twilio_by_sid)} / {len(telegram_sent)}"
    )
    if unknown_telegram:
        report.add("Telegram texts of unknown outcome (a kill -9 mid-send), received once",
                   sum(unknown_telegram.values()) - lost_unknown)  # fmt: skip

    # 3. Promises.
    per_day = Counter(updates)
    if any(n > 1 for n in per_day.values()):
        report.violate("a promise got the same kind of update twice on one day")
    kinds = Counter(kind for *_, kind in updates)
    report.add("promise updates by kind", ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none")
    late_by_promise: dict[int, Counter] = defaultdict(Counter)
    for promise_id, local_date, kind in updates:
        if kind in ("late_update", "call_list"):
            late_by_promise[promise_id][local_date] += 1
    now = datetime.now(tz=UTC)
    due_open = [pid for pid, status, due_at, *_ in promises
                if status == PromiseStatus.OPEN and _aware(due_at) <= now - timedelta(seconds=5)]  # fmt: skip
    not_updated = [pid for pid in due_open if not late_by_promise[pid]]
    doubled = [pid for pid, days in late_by_promise.items() if any(n > 1 for n in days.values())]
    report.add(
        "due open promises / updated exactly once today",
        f"{len(due_open)} / {len(due_open) - len(not_updated)}",
    )
    if not_updated:
        report.violate(f"{len(not_updated)} due open promises got no update, e.g. {not_updated[:3]}")
    if doubled:
        report.violate(f"{len(doubled)} promises got both a late update and a call-list entry on one day")
    resulted = [o for o in orders if o.status == LabStatus.RESULTED]
    lab_promise = {
        subject_id: pid for pid, _, _, subject_type, subject_id in promises if subject_type == "lab_order"
    }
    called = {pid for pid, _, kind in updates if kind == "call_list"}
    untold = [
        o.order_id for o in resulted if o.result_notified_at is None and lab_promise.get(o.id) not in called
    ]
    results_rows = Counter(pid for pid, _, kind in updates if kind == "results_ready")
    report.add("lab orders created / resulted / results-ready notices",
               f"{stats.lab_created} / {stats.lab_resulted} / {sum(results_rows.values())}")  # fmt: skip
    if untold:
        report.violate(f"{len(untold)} resulted orders never told, e.g. {untold[:3]}")


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# -- the run --------------------------------------------------------------------------------


def soak(*, seconds: float, rate: float, url: str = SOAK_URL, pg_restart: bool = True) -> Report:
    """Run the whole suite; return the report (violations empty when everything held)."""
    from tests.fakes.fake_telegram import FakeTelegram
    from tests.fakes.fake_twilio import FakeTwilio

    report, stats = Report(), Stats()
    if problem := postgres_problem(url):
        raise RuntimeError(problem)
    workdir = Path(tempfile.mkdtemp(prefix="clinicbot-soak-"))
    twilio = FakeTwilio(account_sid="AC" + "0" * 31 + "1", auth_token=secrets.token_hex(16)).start()
    telegram = FakeTelegram(token=TELEGRAM_TOKEN).start()
    from collections import deque

    telegram._state.sent = deque()  # noqa: SLF001 - keep every record, not the fake's last 1,000
    processes: list[Proc] = []
    faults = ProviderFaults(twilio, telegram, stats)
    try:
        env = {
            "CLINICBOT_DATABASE_URL": url,
            "CLINICBOT_DATA_DIR": str(ROOT / "var"),  # the trained classifier cache is shared
            "CLINICBOT_PUBLIC_URL": PUBLIC_URL,
            "CLINICBOT_LOG_FORMAT": "text",
            "TWILIO_ACCOUNT_SID": twilio.account_sid, "TWILIO_AUTH_TOKEN": twilio.auth_token,
            "TWILIO_FROM_NUMBER": CLINIC_NUMBER, "TWILIO_MESSAGING_SERVICE_SID": "",
            "TWILIO_API_BASE_URL": twilio.base_url,
            "TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN, "TELEGRAM_WEBHOOK_SECRET": TELEGRAM_SECRET,
            "TELEGRAM_API_BASE_URL": telegram.base_url, "TELEGRAM_STAFF_CHAT_ID": "",
            "CLINICBOT_OUTBOX_PACING": "false",
            # Short windows so a crash mid-send is reconciled within the run.
            "CLINICBOT_OUTBOX_SEND_TIMEOUT": "2", "CLINICBOT_OUTBOX_STALE_SECONDS": "5",
            "CLINICBOT_SCHEDULER_SWEEP_SECONDS": "2",
            "CLINICBOT_WEBCHAT_RATE_PER_MINUTE": "100000",
            "CLINICBOT_MLLP_PORT": "0",
        }  # fmt: skip
        console.print("[bold]soak:[/] fresh database, demo clinic, two app processes, one scheduler")
        reset_database(url)
        run_cli(["init", "--demo"], env)
        open_clinic_all_day(url)
        api_key = run_cli(["apikey", "create", "--name", "soak"], env).strip().splitlines()[-1].strip()
        apps = [Proc(f"app{i}", ["serve", "--no-scheduler", "--port", ""], env=env, workdir=workdir, port=free_port())
                for i in (1, 2)]  # fmt: skip
        for app in apps:
            app.args[-1] = str(app.port)
        scheduler = Proc("scheduler", ["scheduler", "run"], env=env, workdir=workdir)
        processes += [*apps, scheduler]
        for proc in processes:
            proc.start()

        restart_cmd, why_not = (
            pg_restart_command()
            if pg_restart
            else (
                None,
                "off for this run: the short CI test restarts PostgreSQL only under CI=true or SOAK_PG_RESTART=1, since a restart breaks other work on a shared server",
            )
        )
        if restart_cmd is None:
            stats.skipped_faults["PostgreSQL restart"] = why_not
            console.print(f"[yellow]PostgreSQL restart skipped: {why_not}")
        plan = {"kill -9 app": 0.3, "kill -9 scheduler": 0.5, "PostgreSQL restart": 0.7}
        done: set[str] = set()
        fault_lock = threading.Lock()

        def inject(elapsed: float) -> None:
            with fault_lock:
                due = [name for name, at in plan.items() if elapsed >= at * seconds and name not in done]
                done.update(due)
            for name in due:
                threading.Thread(target=fault, args=(name,), daemon=True, name=f"soak-{name}").start()

        def fault(name: str) -> None:
            try:
                if name == "kill -9 app":
                    apps[0].kill9()
                    stats.count("faults", name)
                    time.sleep(1.0)
                    apps[0].start()
                elif name == "kill -9 scheduler":
                    scheduler.kill9()
                    stats.count("faults", name)
                    time.sleep(1.0)
                    scheduler.start()
                elif name == "PostgreSQL restart" and restart_cmd is not None:
                    done_cmd = subprocess.run(
                        restart_cmd, capture_output=True, text=True, timeout=60, check=False
                    )  # noqa: S603
                    if done_cmd.returncode != 0:
                        stats.skipped_faults[name] = (
                            f"{' '.join(restart_cmd)} failed: {done_cmd.stderr.strip()[-300:]}"
                        )
                    else:
                        stats.count("faults", name)
                    if not wait_for_postgres(url, timeout=60):
                        stats.skipped_faults[name] = "PostgreSQL did not come back within 60 s"
            except Exception as error:  # noqa: BLE001 - reported as a violation, never hangs the run
                report.violate(f"fault {name!r} failed: {type(error).__name__}: {error}")

        load = Load(apps=apps, twilio_token=twilio.auth_token, api_key=api_key, stats=stats, seed=11)
        faults.start()
        run_traffic(load, seconds=seconds, rate=rate, faults=inject)
        faults.finish()
        # Faults in flight finish (a restart takes a few seconds) before the drain.
        for proc in processes:
            if not proc.alive():
                proc.start()
        state = drain(url, limit=DRAIN_LIMIT)
        if state:
            report.violate(f"did not drain within {DRAIN_LIMIT:.0f} s: {state}")
        settle(lambda: len(twilio.messages) + len(telegram.sent))
        for name, at in plan.items():
            if name not in done and name not in stats.skipped_faults:
                stats.skipped_faults[name] = f"the run ended before {at:.0%} of it"
        check(url, stats=stats, twilio=twilio, telegram=telegram, report=report)
        for proc in processes:
            if proc.starts and not proc.alive():
                report.violate(f"{proc.name} died on its own: {proc.log.read_text()[-500:]}")
    finally:
        faults.stop.set()
        for proc in processes:
            proc.stop()
        twilio.stop()
        telegram.stop()
    report.rows[:0] = [
        ("duration / rate", f"{seconds:.0f} s of traffic at {rate:g} events/s"),
        ("duplicates injected", f"{sum(stats.duplicates.values())} (" +
         ", ".join(f"{k} {n}" for k, n in sorted(stats.duplicates.items())) + ")"),
        ("faults injected", ", ".join(f"{k} ×{n}" for k, n in sorted(stats.faults.items()) if n) or "none"),
        ("faults not injected", "; ".join(f"{k}: {v}" for k, v in stats.skipped_faults.items()) or "none"),
        ("client retries (after 5xx / refused connections)", f"{stats.retries}; answers seen: " +
         ", ".join(f"{k} ×{n}" for k, n in sorted(stats.statuses.items()))),
        ("never acknowledged within the retry budget",
         ", ".join(f"{k} {n}" for k, n in stats.unacknowledged.items()) or "none"),
    ]  # fmt: skip
    if report.violations:
        console.print(f"process logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def print_report(report: Report) -> None:
    table = Table(title="clinicbot soak", show_lines=False)
    table.add_column("count")
    table.add_column("value", overflow="fold")
    for name, value in report.rows:
        table.add_row(name, value)
    Console().print(table)
    if report.violations:
        console.print(f"[bold red]{len(report.violations)} violation(s):")
        for violation in report.violations[:40]:
            console.print(f"  - {violation}", markup=False)
    else:
        console.print("[bold green]no violations: every message stored once and answered once, "
                      "every due promise updated once")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "180")))
    parser.add_argument("--rate", type=float, default=float(os.environ.get("SOAK_RATE", "12")),
                        help="new events (messages, lab orders) per second")  # fmt: skip
    args = parser.parse_args()
    if args.seconds <= 0 or args.rate <= 0:
        parser.error("--seconds and --rate must be positive")
    try:
        report = soak(seconds=args.seconds, rate=args.rate)
    except RuntimeError as error:
        console.print(f"soak: {error}", markup=False)
        return 2
    print_report(report)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
