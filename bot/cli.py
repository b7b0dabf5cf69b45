"""The `clinicbot` command: parse, call a flow, print."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import sys
import time
import uuid
from collections.abc import Callable, Sequence

from rich.console import Console

from bot.clinic import ClinicConfigError
from bot.clinic_settings import ClinicMissingError
from bot.config import MAX_RETENTION_DAYS, Settings, SettingsError, get_settings
from bot.conversations.domain import DomainError
from bot.nlu.data import DialoguesError

log = logging.getLogger(__name__)


class UsageError(Exception):
    """A command-line mistake; printed as one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


# Argument types: a value out of range is a usage error naming the argument ("argument --port: …"),
# never a number that overflows later in a socket, a date or the database.
# The largest id our tables hold: their id columns are PostgreSQL's integer.
MAX_ID = 2**31 - 1
# `scheduler tick --at`: a time whose working days and UTC offset stay within the calendar's years.
AT_YEARS = (2000, 2999)
# `scheduler tick` waits this long (at most --wait) for the outbox sender's leadership: another tick's
# delivery ends in seconds, while a running app's sender keeps it and is left the texts.
TICK_SENDER_WAIT_SECONDS = 10.0


def _whole(low: int, high: int) -> Callable[[str], int]:
    """Return an argument type: a whole number from low to high."""

    def whole_number(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low} to {high}, not {raw}")
        return value

    return whole_number


def _seconds(high: float) -> Callable[[str], float]:
    """Return an argument type: a finite number of seconds from 0 to high."""

    def seconds(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a number of seconds") from None
        if not (math.isfinite(value) and 0 <= value <= high):
            raise argparse.ArgumentTypeError(f"must be 0 to {high:g} seconds, not {raw}")
        return value

    return seconds


def _iso_time(raw: str) -> datetime.datetime:
    """Read --at: an ISO 8601 time (clinic-local when it has no offset) in the years AT_YEARS."""
    try:
        at = datetime.datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not an ISO 8601 time such as 2026-11-25T16:30:00"
        ) from None
    if not AT_YEARS[0] <= at.year <= AT_YEARS[1]:
        raise argparse.ArgumentTypeError(f"must be in the years {AT_YEARS[0]} to {AT_YEARS[1]}, not {raw}")
    return at


def cmd_init(args: argparse.Namespace) -> int:
    """Migrate the database to head, and seed the demo clinic if asked."""
    from bot.db import get_engine, session_scope, shown_url
    from bot.db.migrate import upgrade_to_head
    from bot.demo import DEMO_ADMIN_EMAIL, do_seed_demo

    settings = get_settings()
    engine = get_engine()
    upgrade_to_head(engine)
    print(f"database ready: {shown_url(engine.url)}")
    if args.demo:
        with session_scope() as session:
            report = do_seed_demo(session=session)
        if any((report.clinic, report.staff, report.patients, report.lab_orders)):
            print(
                f"demo clinic seeded: {report.clinic} clinic, {report.staff} staff, "
                f"{report.patients} patients, {report.lab_orders} lab orders (admin: {DEMO_ADMIN_EMAIL})"
            )
        else:
            print("demo clinic already present; nothing changed")
    del settings
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Fit the classifier from dialogues/ and cache it."""
    from bot.nlu.classifier import train
    from bot.nlu.data import load_training

    settings = get_settings()
    examples = load_training(root=settings.dialogues_dir)
    started = time.perf_counter()
    from bot.runtime import load_nlu

    nlu = load_nlu(settings)
    elapsed = time.perf_counter() - started
    if args.force:
        started = time.perf_counter()
        train(root=settings.dialogues_dir)
        elapsed = time.perf_counter() - started
    print(
        f"classifier ready: {len(examples)} examples, {len(nlu.model.intents)} intents, "
        f"{elapsed:.2f} s, cache {settings.model_cache_dir}"
    )
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    """Classify stdin lines, one JSON object out per line."""
    from bot.runtime import load_nlu

    nlu = load_nlu()
    out = sys.stdout
    for raw in sys.stdin.buffer:
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        analysis = nlu.analyse(text)
        record = {
            "text": text,
            "lang": analysis.lang,
            "intent": analysis.intent,
            "confidence": analysis.confidence,
            "route": str(analysis.route),
        }
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        out.flush()
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """Chat with the bot in the terminal as a patient."""
    from bot.channels.base import OutgoingText
    from bot.channels.outbox import OutboxSender
    from bot.channels.terminal import TerminalChannel
    from bot.db import session_scope
    from bot.patients.models import Channel
    from bot.patients.service import InvalidPhoneError, normalize_phone
    from bot.runtime import get_runtime

    if args.as_phone:
        try:
            address = normalize_phone(args.as_phone)
        except InvalidPhoneError as error:
            raise UsageError(f"--as {args.as_phone!r}: {error}") from None
    else:
        address = f"guest-{uuid.uuid4().hex[:12]}"
    runtime = get_runtime()
    console = Console(highlight=False, soft_wrap=True)

    def show(text: OutgoingText) -> None:
        console.print(f"bot> {text.text}", markup=False)
        if text.buttons:
            console.print(
                "     [" + "] [".join(b["title"] for b in text.buttons) + "]", style="cyan", markup=False
            )

    # Replies reach the terminal through the outbox, like every other channel.
    sender = OutboxSender(channels={Channel.TERMINAL: TerminalChannel(show=show)}, pacing=False)
    who = f"as {address}" if args.as_phone else "as an unknown visitor"
    console.print(f"[bold]{runtime.clinic.name}[/bold] chat {who}. Type a message; Ctrl-D or /quit ends.")
    interactive = sys.stdin.isatty()
    while True:
        try:
            text = input("you> " if interactive else "")
        except EOFError:
            break
        if text.strip() == "/quit":
            break
        if not interactive:
            console.print(f"you> {text}", markup=False)
        with session_scope() as session:
            outcome = runtime.engine.receive(
                session=session,
                channel=Channel.TERMINAL,
                address=address,
                text=text,
                provider_message_id=uuid.uuid4().hex,
            )
        sender.drain()
        confidence = "" if outcome.confidence is None else f" {outcome.confidence:.2f}"
        console.print(
            f"     · route {outcome.route} · intent {outcome.intent}{confidence}", style="dim", markup=False
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Start the web server, with the inbound processor and the outbox sender beside it."""
    import uvicorn

    from bot.channels.registry import build_channels
    from bot.demo import DEMO_ADMIN_EMAIL, demo_admin_password
    from bot.runtime import get_runtime, settle_heap
    from bot.web.app import create_app

    settings = get_settings()
    if args.telegram_polling and not settings.telegram_enabled:
        raise UsageError("--telegram-polling needs TELEGRAM_BOT_TOKEN")
    runtime = get_runtime()  # fail fast, with one line, on a missing database or a bad clinic setting
    base = f"http://{args.host}:{args.port}"
    channels = sorted(build_channels(settings))
    print(f"{runtime.clinic.name} is running.")
    print(f"  web chat:     {base}/chat")
    print(f"  staff inbox:  {base}/staff")
    if demo_admin_password() is not None:
        print(
            f"  demo sign-in: {DEMO_ADMIN_EMAIL} / {demo_admin_password()} (demo only; add real staff with `clinicbot staff add`)"
        )
    print(f"  channels on:  {', '.join(channels)}")
    off = [
        name
        for name, on in (("sms", settings.twilio_enabled), ("telegram", settings.telegram_enabled))
        if not on
    ]
    if off:
        print(f"  channels off: {', '.join(off)} (no credentials; see README)")
    if demo_admin_password() is not None and not settings.twilio_enabled:
        print("  demo phone:   .venv/bin/clinicbot demo phone (the web chat's codes, which SMS would have sent)")
    if args.telegram_polling:
        print("  telegram:     long polling (the webhook is removed while this runs)")
    from bot.channels.workers import WorkerProcesses

    # Routing and sending in their own processes: acknowledgements keep a core and an interpreter lock.
    workers = WorkerProcesses(args.processors)
    workers.start()
    if workers.metrics_dir is not None:
        from bot import metrics

        metrics.count_worker_processes(workers.metrics_dir)
    if workers.processes:
        pids = ", ".join(str(p.pid) for p in workers.processes)
        print(f"  workers:      {len(workers.processes)} process(es) route and send (pids {pids}); restarted if one dies")
    app = create_app(telegram_polling=args.telegram_polling, wake_paths=workers.wake_paths or None)
    scheduler = None
    if not args.no_scheduler:
        # bot/ never imports scheduler/ (ARCHITECTURE.md); the CLI is the edge that wires it, lazily.
        from scheduler.setup import start_in_process

        print("  scheduler:    promise sweeps in this process (--no-scheduler to run them apart)")
        scheduler = start_in_process(settings)
    mllp = _start_mllp_thread(settings)
    settle_heap()
    try:
        uvicorn.run(
            app, host=args.host, port=args.port, log_level="warning", access_log=False, log_config=None
        )
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        if mllp is not None:
            mllp.stop_thread()
        workers.stop()
    return 0


def cmd_telegram_set_webhook(args: argparse.Namespace) -> int:
    """Register PUBLIC_URL/webhooks/telegram and the webhook secret with Telegram."""
    from bot.channels.telegram import TelegramSetupError, set_webhook

    try:
        url = set_webhook(settings=get_settings())
    except TelegramSetupError as error:
        raise UsageError(str(error)) from None
    print(f"telegram webhook set: {url}")
    return 0


def cmd_demo_phone(args: argparse.Namespace) -> int:
    """Show the texts waiting for the demo patients' phones (SMS is off in the demo); audited."""
    from bot.db import session_scope
    from bot.demo import DEMO_PATIENTS, DemoPhoneError, demo_phone_texts
    from bot.patients.service import InvalidPhoneError, normalize_phone

    names = {phone: preferred or name.split()[0] for _, name, preferred, _, phone, _ in DEMO_PATIENTS}
    try:
        phones = [normalize_phone(args.as_phone)] if args.as_phone else list(names)
    except InvalidPhoneError as error:
        raise UsageError(f"demo phone: --as: {error}") from None
    sms_on = get_settings().twilio_enabled
    try:
        with session_scope() as session:
            found = {phone: demo_phone_texts(session=session, phone=phone, sms_on=sms_on) for phone in phones}
    except DemoPhoneError as error:
        raise UsageError(f"demo phone: {error}") from None
    for phone, texts in found.items():
        print(f"{phone} ({names[phone]}): {len(texts)} text(s) waiting, oldest first")
        for text in texts:
            print(f"  {text.queued_at:%H:%M} UTC  {text.body}")
    return 0


def cmd_telegram_link(args: argparse.Namespace) -> int:
    """Print a one-time t.me link that ties the Telegram chat that opens it to a patient's record."""
    from datetime import timedelta

    from bot.channels.linking import create_link_token
    from bot.channels.telegram import TelegramSetupError, bot_username
    from bot.db import session_scope
    from bot.patients.service import InvalidPhoneError, get_by_phone, normalize_phone

    if not 1 <= args.hours <= 24 * 14:
        raise UsageError("telegram link: --hours must be 1 to 336")
    try:
        phone = normalize_phone(args.phone)
    except InvalidPhoneError as error:
        raise UsageError(f"telegram link: --phone: {error}") from None
    try:
        username = bot_username(settings=get_settings())
    except TelegramSetupError as error:
        raise UsageError(f"telegram link: {error}") from None
    with session_scope() as session:
        patient = get_by_phone(session=session, phone=phone)
        if patient is None:
            raise UsageError("telegram link: no patient has that phone number on file")
        token = create_link_token(session=session, patient_id=patient.id, ttl=timedelta(hours=args.hours))
        patient_id = patient.id
    # The link is a credential for this patient's record: give it only to the patient.
    print(f"https://t.me/{username}?start={token}")
    print(f"one-time link for patient {patient_id}, valid {args.hours} h", file=sys.stderr)
    return 0


def _read_password(args: argparse.Namespace) -> str:
    command = f"staff {args.staff_command}"
    if not args.password_stdin:
        raise UsageError(f"{command}: --password-stdin is required (passwords are never taken as arguments)")
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageError(f"{command}: no password on standard input")
    return password


def cmd_staff_add(args: argparse.Namespace) -> int:
    """Create a staff account with an argon2id-hashed password read from stdin."""
    from bot.db import session_scope
    from bot.staff.auth import StaffError, add_staff
    from bot.staff.models import Role

    password = _read_password(args)
    try:
        with session_scope() as session:
            user = add_staff(
                session=session, email=args.email, name=args.name, role=Role(args.role), password=password
            )
            staff_id = user.id
    except StaffError as error:
        raise UsageError(f"staff add: {error}") from None
    print(f"staff {staff_id} added ({args.role})")
    return 0


def cmd_staff_password(args: argparse.Namespace) -> int:
    """Give a staff account a new argon2id-hashed password read from stdin; its sessions end."""
    from bot.db import session_scope
    from bot.staff.auth import StaffError, reset_password

    password = _read_password(args)
    try:
        with session_scope() as session:
            staff_id = reset_password(session=session, email=args.email, password=password).id
    except StaffError as error:
        raise UsageError(f"staff password: {error}") from None
    print(f"staff {staff_id} has a new password; their sessions are ended")
    return 0


def cmd_staff_disable(args: argparse.Namespace) -> int:
    """Disable a staff account and end its sessions."""
    from bot.db import session_scope
    from bot.staff.auth import StaffError, disable_staff

    try:
        with session_scope() as session:
            staff_id = disable_staff(session=session, email=args.email).id
    except StaffError as error:
        raise UsageError(f"staff disable: {error}") from None
    print(f"staff {staff_id} disabled; their sessions are ended")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check the configuration; print each problem with its fix; exit 1 if there is any."""
    from bot.doctor import report, run_checks

    lines, status = report(run_checks(get_settings()))
    for line in lines:
        print(line)
    return status


def _patient_lookup(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from bot.privacy import PrivacyError, find_patient

    if (args.phone is None) == (args.patient_id is None):
        raise UsageError(f"patient {args.patient_command}: give exactly one of --phone or --id")

    def lookup(session):  # type: ignore[no-untyped-def]
        try:
            return find_patient(session=session, phone=args.phone, patient_id=args.patient_id)
        except PrivacyError as error:
            raise UsageError(f"patient {args.patient_command}: {error}") from None

    return lookup


def cmd_patient_export(args: argparse.Namespace) -> int:
    """Write one patient's data as JSON (stdout or --out); audited."""
    from bot.db import session_scope
    from bot.privacy import export_patient

    lookup = _patient_lookup(args)
    _require_migrated()
    with session_scope() as session:
        patient = lookup(session)
        data = export_patient(session=session, patient=patient, actor_kind="cli")
        patient_id = patient.id
    text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    if args.out:
        try:
            with open(args.out, "x", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as error:
            raise UsageError(f"patient export: cannot write {args.out}: {error.strerror}") from None
        print(f"patient {patient_id} exported to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_patient_erase(args: argparse.Namespace) -> int:
    """Erase one patient's personal data, keeping ids, times and the audit trail; needs --yes."""
    from bot.db import session_scope
    from bot.privacy import do_erase_patient

    lookup = _patient_lookup(args)
    if not args.yes:
        raise UsageError("patient erase: this cannot be undone; add --yes to erase")
    _require_migrated()
    with session_scope() as session:
        patient = lookup(session)
        result = do_erase_patient(session=session, patient_id=patient.id, actor_kind="cli")
    print(
        f"patient {result.patient_id} erased: {result.identities} identities, {result.conversations} conversations, "
        f"{result.messages} message bodies, {result.outbox} outbox texts, {result.requests} requests, "
        f"{result.lab_orders} lab orders, {result.notes} notes, {result.complaints} complaints, "
        f"{result.promises_cancelled} open promises cancelled; the audit trail keeps the erasure"
    )
    return 0


def cmd_retention_purge(args: argparse.Namespace) -> int:
    """Clear message and outbox bodies older than the retention period; metadata and audit stay."""
    from bot.db import session_scope
    from bot.privacy import do_purge_bodies

    days = args.days if args.days is not None else get_settings().retention_days
    _require_migrated()
    with session_scope() as session:
        result = do_purge_bodies(session=session, days=days, actor_kind="cli")
    print(
        f"purged bodies older than {days} days (before {result.cutoff:%Y-%m-%d %H:%M} UTC): "
        f"{result.messages} messages, {result.outbox} outbox texts"
    )
    return 0


def _require_migrated() -> None:
    from bot.db import get_engine
    from bot.db.migrate import require_at_head

    require_at_head(get_engine())


def cmd_scheduler_run(args: argparse.Namespace) -> int:
    """Run the promise sweeps (and an outbox sender) as a standalone process."""
    from bot.clinic_settings import load_clinic
    from bot.db import session_scope

    # bot/ never imports scheduler/ (ARCHITECTURE.md); the CLI is the edge that wires it, lazily.
    from scheduler.setup import run_standalone

    settings = get_settings()
    _require_migrated()
    # A bad clinic setting is a one-line error now, not a traceback logged by every pass of a running scheduler.
    with session_scope() as session:
        load_clinic(session=session)
    print(f"scheduler running: promise sweeps every {settings.scheduler_sweep_seconds:g} s; Ctrl-C stops")
    run_standalone(settings)
    return 0


def _at_utc(at: datetime.datetime) -> datetime.datetime:
    """Return --at as aware UTC, reading a time without an offset as clinic-local."""
    from bot.clinic_settings import load_clinic
    from bot.db import session_scope

    if at.tzinfo is not None:
        return at.astimezone(datetime.UTC)
    with session_scope() as session:
        calendar = load_clinic(session=session).calendar
    return calendar.at_local(at.date(), at.time())


def cmd_scheduler_tick(args: argparse.Namespace) -> int:
    """Run one pass of every sweep as if at --at, then deliver what is due."""
    # bot/ never imports scheduler/ (ARCHITECTURE.md); the CLI is the edge that wires it, lazily.
    from scheduler.jobs import build_sender, deliver_due, sweep_pass

    _require_migrated()
    now = _at_utc(args.at) if args.at else None
    counts = sweep_pass(now=now, wait=args.wait)
    if counts is None:
        raise UsageError(
            f"scheduler tick: another scheduler kept the leadership for {args.wait:g} s; try again"
        )
    # One sender per deployment: while a running app sends, the texts are left to it.
    delivered = deliver_due(build_sender(), wait=min(args.wait, TICK_SENDER_WAIT_SECONDS))
    print(
        f"tick: {counts.updates} updates, {counts.call_list} on the call list, {counts.escalations} escalations, "
        f"{counts.results_ready} results-ready; "
        + (f"delivered {delivered.sent}" if delivered.led else "delivery left to the running outbox sender")
        + (f" ({delivered.not_sent} not sent yet)" if delivered.not_sent else "")
    )
    return 0


def _start_mllp_thread(settings: Settings):  # type: ignore[no-untyped-def]
    """Start the HL7 MLLP listener beside the web server when CLINICBOT_MLLP_PORT is set."""
    if not settings.mllp_port:
        return None
    from bot.labs.mllp import MllpListener

    listener = MllpListener(host=settings.mllp_host, port=settings.mllp_port)
    try:
        port = listener.start_in_thread()
    except OSError as error:
        raise UsageError(
            f"CLINICBOT_MLLP_PORT {settings.mllp_port}: cannot listen ({error.strerror})"
        ) from None
    print(f"  lab HL7:      mllp://{settings.mllp_host}:{port}")
    return listener


def cmd_mllp(args: argparse.Namespace) -> int:
    """Run the HL7 v2 MLLP listener as a standalone process."""
    import asyncio

    from bot.labs.mllp import MllpListener

    settings = get_settings()
    port = args.port if args.port is not None else settings.mllp_port
    host = args.host or settings.mllp_host
    if not port:
        raise UsageError("mllp: set CLINICBOT_MLLP_PORT or pass --port")
    _require_migrated()
    listener = MllpListener(host=host, port=port)
    print(f"lab HL7 listener on mllp://{host}:{port}; Ctrl-C stops")
    try:
        asyncio.run(listener.serve_forever())
    except OSError as error:
        raise UsageError(f"mllp: cannot listen on {host}:{port} ({error.strerror})") from None
    return 0


def cmd_apikey_create(args: argparse.Namespace) -> int:
    """Create a lab API key and print it once; only its hash is stored."""
    from bot.db import session_scope
    from bot.labs.apikeys import ApiKeyError, do_create_key

    _require_migrated()
    try:
        with session_scope() as session:
            row, key = do_create_key(session=session, name=args.name)
            key_id = row.id
    except ApiKeyError as error:
        raise UsageError(f"apikey create: {error}") from None
    print(f"api key {key_id} {args.name!r} created. Copy it now; it is not shown again:", file=sys.stderr)
    print(key)
    return 0


def cmd_apikey_list(args: argparse.Namespace) -> int:
    """List lab API keys (names and prefixes, never the keys)."""
    from bot.db import session_scope
    from bot.labs.apikeys import list_keys

    _require_migrated()
    with session_scope() as session:
        rows = [
            (k.id, k.name, k.prefix, k.created_at, k.last_used_at, k.revoked_at)
            for k in list_keys(session=session)
        ]
    if not rows:
        print("no API keys; create one with `clinicbot apikey create --name NAME`")
        return 0

    def when(at: datetime.datetime | None) -> str:
        return "-" if at is None else f"{at:%Y-%m-%d %H:%M} UTC"

    print(f"{'id':>4}  {'name':<24} {'prefix':<14} {'created':<22} {'last used':<22} revoked")
    for key_id, name, prefix, created, used, revoked in rows:
        print(
            f"{key_id:>4}  {name:<24} {prefix + '…':<14} {when(created):<22} {when(used):<22} {when(revoked)}"
        )
    return 0


def cmd_apikey_revoke(args: argparse.Namespace) -> int:
    """Revoke a lab API key by name."""
    from bot.db import session_scope
    from bot.labs.apikeys import ApiKeyError, do_revoke_key

    _require_migrated()
    try:
        with session_scope() as session:
            key_id = do_revoke_key(session=session, name=args.name).id
    except ApiKeyError as error:
        raise UsageError(f"apikey revoke: {error}") from None
    print(f"api key {key_id} {args.name!r} revoked")
    return 0


def cmd_labs_import(args: argparse.Namespace) -> int:
    """Import lab orders from a CSV file: all rows or none; rejected rows listed by line."""
    from pathlib import Path

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from bot.db import session_scope, utcnow
    from bot.labs.csv_import import (
        CsvFileError,
        ImportConflicts,
        check_records,
        do_import_orders,
        read_records,
    )

    _require_migrated()
    try:
        records = read_records(Path(args.file))
    except CsvFileError as error:
        raise UsageError(f"labs import: {error}") from None
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        console=Console(stderr=True), transient=False)  # fmt: skip
    with progress:
        checking = progress.add_task("checking", total=len(records))
        orders, rejections = check_records(
            records, today=utcnow().date(), advance=lambda: progress.advance(checking)
        )
        if not rejections:
            importing = progress.add_task("importing", total=len(orders))
            try:
                with session_scope() as session:
                    counts = do_import_orders(
                        session=session, orders=orders, advance=lambda: progress.advance(importing)
                    )
            except ImportConflicts as conflicts:
                rejections = conflicts.rejections
    if rejections:
        for rejection in sorted(rejections, key=lambda r: r.line):
            print(f"line {rejection.line}: {rejection.field}: {rejection.problem}")
        lines = len({r.line for r in rejections})
        print(f"nothing imported: {lines} of {len(records)} rows rejected", file=sys.stderr)
        return 2
    rows = "row" if len(records) == 1 else "rows"
    print(f"imported {len(records)} {rows}: {counts.created} created, {counts.unchanged} unchanged")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Describe the commands and their options."""
    parser = _Parser(prog="clinicbot", description="Messaging assistant for medical clinics.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    init = commands.add_parser("init", help="migrate the database; --demo seeds the demo clinic")
    init.add_argument("--demo", action="store_true", help="seed Riverside Family Clinic (safe to repeat)")
    init.set_defaults(func=cmd_init)
    chat = commands.add_parser("chat", help="chat with the bot in the terminal")
    chat.add_argument("--as", dest="as_phone", metavar="PHONE", help="text as this phone number")
    chat.set_defaults(func=cmd_chat)
    classify = commands.add_parser("classify", help="classify stdin lines to JSON lines")
    classify.set_defaults(func=cmd_classify)
    train = commands.add_parser("train", help="fit the classifier from dialogues/ and cache it")
    train.add_argument("--force", action="store_true", help="retrain even when the cache is fresh")
    train.set_defaults(func=cmd_train)
    serve = commands.add_parser("serve", help="start the web server: webhooks, web chat, outbox sender")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_whole(1, 65535), default=8000)
    serve.add_argument("--no-scheduler", action="store_true",
                       help="do not run the promise sweeps here (run `clinicbot scheduler run` instead)")  # fmt: skip
    serve.add_argument("--telegram-polling", action="store_true",
                       help="fetch Telegram updates by long polling (development, no public URL)")  # fmt: skip
    serve.add_argument("--processors", type=_whole(0, 64), default=2, metavar="N",
                       help="worker processes that route messages (the first also sends texts; default 2; "
                            "0 runs routing and sending as threads of the web process)")  # fmt: skip
    serve.set_defaults(func=cmd_serve)
    telegram = commands.add_parser("telegram", help="Telegram bot set-up")
    telegram_commands = telegram.add_subparsers(dest="telegram_command", required=True, parser_class=_Parser)
    set_webhook = telegram_commands.add_parser(
        "set-webhook", help="register this server's webhook with Telegram"
    )
    set_webhook.set_defaults(func=cmd_telegram_set_webhook)
    link = telegram_commands.add_parser("link", help="print a one-time t.me link that links a patient's Telegram chat")
    link.add_argument("--phone", required=True, help="the patient's phone number on file")
    link.add_argument("--hours", type=int, default=72, help="how long the link stays valid (default 72)")
    link.set_defaults(func=cmd_telegram_link)
    demo = commands.add_parser("demo", help="the demo clinic")
    demo_commands = demo.add_subparsers(dest="demo_command", required=True, parser_class=_Parser)
    phone = demo_commands.add_parser(
        "phone", help="show the texts waiting for the demo patients' phones (SMS is off in the demo): the web chat's codes"
    )
    phone.add_argument("--as", dest="as_phone", help="one demo patient's phone (default: all three)")
    phone.set_defaults(func=cmd_demo_phone)
    staff = commands.add_parser("staff", help="staff accounts for the inbox")
    staff_commands = staff.add_subparsers(dest="staff_command", required=True, parser_class=_Parser)
    add = staff_commands.add_parser("add", help="create a staff account")
    add.add_argument("--email", required=True)
    add.add_argument("--name", required=True)
    add.add_argument("--role", required=True, choices=["admin", "staff", "clinician"])
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin"
    )
    add.set_defaults(func=cmd_staff_add)
    password = staff_commands.add_parser("password", help="set a staff account's password (ends its sessions)")
    password.add_argument("--email", required=True)
    password.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin"
    )
    password.set_defaults(func=cmd_staff_password)
    disable = staff_commands.add_parser("disable", help="disable a staff account and end its sessions")
    disable.add_argument("--email", required=True)
    disable.set_defaults(func=cmd_staff_disable)
    sched = commands.add_parser(
        "scheduler", help="the promise sweeps: same-working-day updates, results-ready"
    )
    sched_commands = sched.add_subparsers(dest="scheduler_command", required=True, parser_class=_Parser)
    sched_run = sched_commands.add_parser("run", help="run the sweeps as a standalone process")
    sched_run.set_defaults(func=cmd_scheduler_run)
    tick = sched_commands.add_parser("tick", help="one pass of every sweep, then deliver what it queued")
    tick.add_argument("--at", type=_iso_time, metavar="ISO", help="run as if at this time (clinic-local without an offset)")
    tick.add_argument("--wait", type=_seconds(3600), default=60.0, metavar="SECONDS",
                      help="how long to wait for another scheduler's pass to finish")  # fmt: skip
    tick.set_defaults(func=cmd_scheduler_tick)
    doctor = commands.add_parser("doctor", help="check the configuration and say how to fix what is wrong")
    doctor.set_defaults(func=cmd_doctor)
    patient = commands.add_parser("patient", help="privacy requests: export or erase one patient's data")
    patient_commands = patient.add_subparsers(dest="patient_command", required=True, parser_class=_Parser)
    export = patient_commands.add_parser("export", help="write one patient's data as JSON (audited)")
    erase = patient_commands.add_parser("erase", help="erase one patient's personal data (audited)")
    for sub in (export, erase):
        sub.add_argument("--phone", help="the patient's phone number on file")
        sub.add_argument("--id", dest="patient_id", type=_whole(1, MAX_ID), help="the patient's id (e.g. after an erasure)")
    export.add_argument("--out", metavar="FILE", help="write to a new file instead of standard output")
    export.set_defaults(func=cmd_patient_export)
    erase.add_argument("--yes", action="store_true", help="confirm: the erasure cannot be undone")
    erase.set_defaults(func=cmd_patient_erase)
    retention = commands.add_parser("retention", help="data retention")
    retention_commands = retention.add_subparsers(dest="retention_command", required=True, parser_class=_Parser)
    purge = retention_commands.add_parser(
        "purge", help="clear message bodies older than CLINICBOT_RETENTION_DAYS (metadata and audit stay)"
    )
    purge.add_argument("--days", type=_whole(1, MAX_RETENTION_DAYS), help="override CLINICBOT_RETENTION_DAYS")
    purge.set_defaults(func=cmd_retention_purge)
    apikey = commands.add_parser("apikey", help="API keys for lab systems (REST /api/v1)")
    apikey_commands = apikey.add_subparsers(dest="apikey_command", required=True, parser_class=_Parser)
    key_create = apikey_commands.add_parser("create", help="create a key and print it once")
    key_create.add_argument("--name", required=True, help="who uses the key, e.g. the lab's name")
    key_create.set_defaults(func=cmd_apikey_create)
    key_list = apikey_commands.add_parser("list", help="list keys (never the keys themselves)")
    key_list.set_defaults(func=cmd_apikey_list)
    key_revoke = apikey_commands.add_parser("revoke", help="revoke a key by name")
    key_revoke.add_argument("--name", required=True)
    key_revoke.set_defaults(func=cmd_apikey_revoke)
    labs = commands.add_parser("labs", help="lab orders")
    labs_commands = labs.add_subparsers(dest="labs_command", required=True, parser_class=_Parser)
    labs_import = labs_commands.add_parser(
        "import", help="import lab orders from a CSV file (all or nothing)"
    )
    labs_import.add_argument("file", metavar="FILE",
                             help="CSV with order_id,external_id,name,date_of_birth,phone,test_name,ordered_at,expected_by")  # fmt: skip
    labs_import.set_defaults(func=cmd_labs_import)
    mllp = commands.add_parser(
        "mllp",
        help="run the HL7 v2 MLLP listener on its own (serve runs it too when CLINICBOT_MLLP_PORT is set)",
    )
    mllp.add_argument("--host", help="default CLINICBOT_MLLP_HOST (127.0.0.1)")
    mllp.add_argument("--port", type=_whole(1, 65535), help="default CLINICBOT_MLLP_PORT")
    mllp.set_defaults(func=cmd_mllp)
    return parser


# Errors a person can cause and fix; each is printed as one line, never as a traceback.
KNOWN_ERRORS: tuple[type[Exception], ...] = (
    UsageError,
    SettingsError,
    ClinicConfigError,
    ClinicMissingError,
    DomainError,
    DialoguesError,
)


def _guarded(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    from sqlalchemy.exc import OperationalError

    # Not from bot.runtime: importing that loads the conversation engine and the classifier (about a
    # second), which most commands never use.
    from bot.db.migrate import NotReadyError

    try:
        return func(args)
    except KNOWN_ERRORS + (NotReadyError,) as error:
        prefix = "clinic setting " if isinstance(error, ClinicConfigError) else ""
        print(f"clinicbot: error: {prefix}{error}", file=sys.stderr)
        return 2
    except OperationalError as error:
        print(f"clinicbot: error: database unavailable ({error.orig.__class__.__name__})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status."""
    try:
        args = build_parser().parse_args(argv)
        _configure_logging(args.command, get_settings())
    except KNOWN_ERRORS as error:
        print(f"clinicbot: error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    return _guarded(args.func, args)


# Processes that run unattended log JSON lines at the configured level; interactive commands stay quiet.
LONG_RUNNING = frozenset({"serve", "scheduler", "mllp"})


def _configure_logging(command: str, settings: Settings) -> None:
    from bot.logging_setup import configure_logging

    long_running = command in LONG_RUNNING
    json_lines = settings.log_format == "json" or (settings.log_format == "auto" and long_running)
    level = settings.log_level if long_running or settings.log_level in {"WARNING", "ERROR"} else "WARNING"
    configure_logging(level=level, json_lines=json_lines)


if __name__ == "__main__":
    sys.exit(main())
