"""Logging: one JSON object per line (ids only) or text, and a filter that withholds anything shaped like a phone number."""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from datetime import UTC, datetime
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}

# E.164 and common national forms; also any run of 10+ digits. Ids stay below that in any real clinic.
PHONE_PATTERN = re.compile(
    r"""
    \+\d[\d\s().-]{5,18}\d              # +1 617 555 0142, +16175550142
    | (?<![\w.])\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}(?![\w.])   # (617) 555-0142, 617-555-0142, 617.555.0142
    | (?<![\w.-])\d{3}-\d{4}(?![\w.-])  # 555-0142
    | (?<!\w)\d{10,15}(?!\w)            # 6175550142, 16175550142
    """,
    re.VERBOSE,
)
WITHHELD = "log record withheld: it contained something shaped like a phone number"


class PhoneNumberFilter(logging.Filter):
    """Defence in depth: replace a record whose text or extra fields look like a phone number.

    Code must log ids only; this catches the line that forgets. The record is kept (level, logger,
    place in the code) so the leak can be found and fixed, but its text and arguments are dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Withhold the record's content if any of it looks like a phone number; always emit."""
        try:
            text = record.getMessage()
        except Exception:  # a bad format string: emit the template only, never the arguments
            text = str(record.msg)
            record.args = None
        suspicious = PHONE_PATTERN.search(text) is not None
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if not suspicious:
            suspicious = any(PHONE_PATTERN.search(str(value)) for value in extras.values())
        if not suspicious and record.exc_info and record.exc_info[1] is not None:
            suspicious = PHONE_PATTERN.search(str(record.exc_info[1])) is not None
        if suspicious:
            record.msg, record.args = f"{WITHHELD} ({record.module}:{record.lineno})", None
            for key in extras:
                delattr(record, key)
            record.exc_info, record.exc_text = None, None
        return True


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: ts, level, logger, message, extra ids, and the exception's type and stack."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a single line of JSON."""
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = _jsonable(value)
        if record.exc_info and record.exc_info[0] is not None:
            kind, _error, tb = record.exc_info
            # The exception's message is left out: SQL parameters and provider answers can carry patient data.
            entry["exc_type"] = kind.__name__
            entry["stack"] = "".join(traceback.format_tb(tb))
        return json.dumps(entry, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """Format a record as a line of text; an exception as its type and stack, like JsonFormatter."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        """Return the line, then the stack and the exception's type: never its message."""
        exc_info, exc_text = record.exc_info, record.exc_text
        # exc_text may hold another handler's full rendering (message included): neither is used here.
        record.exc_info, record.exc_text = None, None
        try:
            line = super().format(record)
        finally:
            record.exc_info, record.exc_text = exc_info, exc_text
        if exc_info and exc_info[0] is not None:
            kind, _error, tb = exc_info
            # The exception's message is left out: SQL parameters and provider answers can carry patient data.
            stack = "".join(traceback.format_tb(tb))
            line += f"\nTraceback (most recent call last):\n{stack}{kind.__name__} (message not logged)"
        return line


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Write to whatever sys.stderr is at the time (test runners swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure_logging(
    *, level: str = "INFO", json_lines: bool = True, stream: TextIO | None = None
) -> logging.Handler:
    """Send log records to one stream handler on the root logger (JSON or text), phone filter attached."""
    handler: logging.Handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    handler.addFilter(PhoneNumberFilter())
    handler._clinicbot = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    # Replace only our own handler: others (a test runner's capture) stay.
    for old in [h for h in root.handlers if getattr(h, "_clinicbot", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party clients log request URLs and parameters at INFO/DEBUG; keep them to warnings. Alembic's
    # plugin set-up and rasa_sdk's action registrations (two dozen lines a worker process) buried
    # `serve`'s own lines: the addresses a newcomer needs.
    for noisy in ("twilio.http_client", "httpx", "httpcore", "telegram", "urllib3", "apscheduler", "alembic", "rasa_sdk"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    return handler
