"""The `clinicbot` command: parse, call a flow, print."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable, Sequence

from rich.console import Console

from bot.clinic import ClinicConfigError
from bot.clinic_settings import ClinicMissingError
from bot.config import SettingsError, get_settings
from bot.conversations.domain import DomainError
from bot.nlu.data import DialoguesError

log = logging.getLogger(__name__)


class UsageError(Exception):
    """A command-line mistake; printed as one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def cmd_init(args: argparse.Namespace) -> int:
    """Migrate the database to head, and seed the demo clinic if asked."""
    from bot.db import get_engine, session_scope
    from bot.db.migrate import upgrade_to_head
    from bot.demo import DEMO_ADMIN_EMAIL, do_seed_demo

    settings = get_settings()
    engine = get_engine()
    upgrade_to_head(engine)
    print(f"database ready: {engine.url.render_as_string(hide_password=True)}")
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
    """Start the web server with the inbound processor and the outbox sender inside."""
    import uvicorn

    from bot.channels.registry import build_channels
    from bot.demo import DEMO_ADMIN_EMAIL, demo_admin_password
    from bot.runtime import get_runtime
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
    if args.telegram_polling:
        print("  telegram:     long polling (the webhook is removed while this runs)")
    app = create_app(telegram_polling=args.telegram_polling)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
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


def _read_password(args: argparse.Namespace) -> str:
    if not args.password_stdin:
        raise UsageError("staff add: --password-stdin is required (passwords are never taken as arguments)")
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageError("staff add: no password on standard input")
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
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--telegram-polling", action="store_true",
                       help="fetch Telegram updates by long polling (development, no public URL)")  # fmt: skip
    serve.set_defaults(func=cmd_serve)
    telegram = commands.add_parser("telegram", help="Telegram bot set-up")
    telegram_commands = telegram.add_subparsers(dest="telegram_command", required=True, parser_class=_Parser)
    set_webhook = telegram_commands.add_parser(
        "set-webhook", help="register this server's webhook with Telegram"
    )
    set_webhook.set_defaults(func=cmd_telegram_set_webhook)
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
    disable = staff_commands.add_parser("disable", help="disable a staff account and end its sessions")
    disable.add_argument("--email", required=True)
    disable.set_defaults(func=cmd_staff_disable)
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

    from bot.runtime import NotReadyError

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
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
        get_settings()
    except KNOWN_ERRORS as error:
        print(f"clinicbot: error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    return _guarded(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
