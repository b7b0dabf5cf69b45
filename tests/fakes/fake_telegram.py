"""A fake Telegram Bot API on loopback, for the real python-telegram-bot client to talk to.

It answers the calls clinicbot makes (getMe, sendMessage, answerCallbackQuery, setWebhook,
deleteWebhook, getUpdates) with Telegram-shaped JSON, records what was sent, and can be told to
fail the next calls: 429 with retry_after, 403 blocked, 400 chat not found, 500, or an answer
slower than the client's timeout (the message still counts as sent, as on the real service).
Also here: builders for the updates Telegram sends to a webhook.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote

TOKEN = "123456:TEST-token_for-clinicbot"
BOT_USER = {"id": 123456, "is_bot": True, "first_name": "Riverside Clinic", "username": "riverside_test_bot",
            "can_join_groups": False, "can_read_all_group_messages": False, "supports_inline_queries": False}  # fmt: skip
# Parameters python-telegram-bot sends JSON-encoded inside form fields.
JSON_FIELDS = frozenset({"reply_markup", "allowed_updates", "chat_id", "offset", "timeout", "limit"})
MAX_BODY = 1_000_000
MAX_RECORDS = 1_000
# A long poll never waits longer than this, whatever timeout the client asks for.
MAX_POLL_WAIT = 0.5
_PATH = re.compile(r"^/bot(?P<token>[^/]+)/(?P<method>[A-Za-z]+)$")
_FILE_PATH = re.compile(r"^/file/bot(?P<token>[^/]+)/(?P<path>.+)$")


@dataclass(frozen=True)
class Fault:
    """How to fail one call."""

    status: int = 0  # 0: answer normally (after the delay)
    description: str = ""
    retry_after: int | None = None
    delay: float = 0.0


@dataclass(frozen=True)
class SentMessage:
    """One message the bot sent."""

    chat_id: int
    text: str
    reply_markup: dict[str, Any] | None
    message_id: int


@dataclass
class _State:
    sent: deque[SentMessage] = field(default_factory=lambda: deque(maxlen=MAX_RECORDS))
    calls: deque[tuple[str, dict[str, Any]]] = field(default_factory=lambda: deque(maxlen=MAX_RECORDS))
    answered: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_RECORDS))
    faults: dict[str, deque[Fault]] = field(default_factory=dict)
    updates: list[dict[str, Any]] = field(default_factory=list)
    webhook: dict[str, Any] | None = None
    next_message_id: int = 1
    # Files patients sent: file_id -> (file_path, content), served by getFile and the file endpoint.
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)


class _ApiError(Exception):
    """A Bot API method's own error answer (status and description)."""

    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status, self.description = status, description


class FakeTelegram:
    """A Bot API server on 127.0.0.1 with a random port, served from a background thread."""

    def __init__(self, *, token: str = TOKEN) -> None:
        self.token = token
        self._state = _State()
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-telegram", daemon=True
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeTelegram:
        """Start serving."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; slow answers and long polls in progress end at once."""
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeTelegram:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """Return the value for TELEGRAM_API_BASE_URL."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/bot"

    # -- what happened ----------------------------------------------------------------------------

    @property
    def sent(self) -> list[SentMessage]:
        """Return the messages sent, oldest first."""
        with self._lock:
            return list(self._state.sent)

    def calls(self, method: str | None = None) -> list[dict[str, Any]]:
        """Return the parameters of each call (of one method), oldest first."""
        with self._lock:
            return [params for name, params in self._state.calls if method is None or name == method]

    @property
    def answered_callbacks(self) -> list[str]:
        """Return the callback query ids answered."""
        with self._lock:
            return list(self._state.answered)

    @property
    def webhook(self) -> dict[str, Any] | None:
        """Return the webhook set with setWebhook, if any."""
        with self._lock:
            return self._state.webhook

    def wait_for_calls(self, method: str, count: int, *, timeout: float = 5.0) -> bool:
        """Wait until a method was called count times; return whether it was."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len([1 for name, _ in self._state.calls if name == method]) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
            return True

    # -- programming it -------------------------------------------------------------------------

    def fail_next(self, method: str, fault: Fault, *, times: int = 1) -> None:
        """Fail the next calls of a method."""
        with self._lock:
            self._state.faults.setdefault(method, deque()).extend([fault] * times)

    def rate_limit(self, *, retry_after: int, method: str = "sendMessage") -> None:
        """Answer the next call with 429 Too Many Requests."""
        self.fail_next(method, Fault(429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after))

    def block(self, *, method: str = "sendMessage") -> None:
        """Answer the next call as if the user blocked the bot."""
        self.fail_next(method, Fault(403, "Forbidden: bot was blocked by the user"))

    def chat_not_found(self, *, method: str = "sendMessage") -> None:
        """Answer the next call with 400 chat not found."""
        self.fail_next(method, Fault(400, "Bad Request: chat not found"))

    def server_error(self, *, method: str = "sendMessage") -> None:
        """Answer the next call with 500."""
        self.fail_next(method, Fault(500, "Internal Server Error"))

    def slow(self, *, seconds: float, method: str = "sendMessage") -> None:
        """Answer the next call only after a delay (the call still takes effect at once)."""
        self.fail_next(method, Fault(delay=seconds))

    def push_update(self, update: dict[str, Any]) -> None:
        """Queue an update for getUpdates."""
        with self._lock:
            self._state.updates.append(update)
            self._lock.notify_all()

    # -- serving --------------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10  # an idle or stuck client cannot hold a thread for long

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

            def do_POST(self) -> None:
                self._serve()

            def do_GET(self) -> None:
                self._serve()

            def _serve(self) -> None:
                file_match = _FILE_PATH.match(self.path.split("?")[0])
                if file_match is not None:
                    self._file(unquote(file_match["token"]), unquote(file_match["path"]))
                    return
                match = _PATH.match(self.path.split("?")[0])
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self._reply(413, {"ok": False, "error_code": 413, "description": "Request Entity Too Large"})
                    return
                body = self.rfile.read(length) if length else b""
                if match is None:
                    self._reply(404, {"ok": False, "error_code": 404, "description": "Not Found"})
                    return
                if match["token"] != fake.token:
                    self._reply(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
                    return
                params = _parse_params(body, self.headers.get("Content-Type", ""))
                status, payload = fake._call(match["method"], params)
                self._reply(status, payload)

            def _file(self, token: str, path: str) -> None:
                with fake._lock:
                    found = next((content for file_path, content in fake._state.files.values() if file_path == path), None)
                if token != fake.token or found is None:
                    self._reply(404, {"ok": False, "error_code": 404, "description": "Not Found"})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(found)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(found)
                self.close_connection = True

            def _reply(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up waiting (a slow answer): as on the real service
                self.close_connection = True

        return Handler

    def _call(self, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self._state.calls.append((method, params))
            self._lock.notify_all()
            queue = self._state.faults.get(method)
            fault = queue.popleft() if queue else None
        if fault is not None and fault.status:
            error: dict[str, Any] = {"ok": False, "error_code": fault.status, "description": fault.description}
            if fault.retry_after is not None:
                error["parameters"] = {"retry_after": fault.retry_after}
            return fault.status, error
        text = str(params.get("text", ""))
        if method == "sendMessage" and len(text.encode("utf-16-le")) // 2 > 4096:
            # As the Bot API: a message is 1-4096 characters (UTF-16 code units).
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: message is too long"}
        handler = getattr(self, f"_api_{method}", None)
        if handler is None:
            return 404, {"ok": False, "error_code": 404, "description": "Not Found: method not found"}
        try:
            result = handler(params)
        except _ApiError as error:
            return error.status, {"ok": False, "error_code": error.status, "description": error.description}
        if fault is not None and fault.delay:
            # The call took effect; only the answer is late.
            self._stopping.wait(fault.delay)
        return 200, {"ok": True, "result": result}

    def add_file(self, file_id: str, file_path: str, content: bytes) -> None:
        """Hold a file a patient sent, for getFile and the file download endpoint."""
        with self._lock:
            self._state.files[file_id] = (file_path, content)

    def _api_getFile(self, params: dict[str, Any]) -> dict[str, Any]:
        file_id = str(params.get("file_id", ""))
        with self._lock:
            found = self._state.files.get(file_id)
        if found is None:
            raise _ApiError(400, "Bad Request: invalid file_id")
        file_path, content = found
        return {"file_id": file_id, "file_unique_id": f"u{file_id}", "file_size": len(content), "file_path": file_path}

    def _api_getMe(self, params: dict[str, Any]) -> dict[str, Any]:
        return dict(BOT_USER)

    def _api_sendMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        with self._lock:
            message_id = self._state.next_message_id
            self._state.next_message_id += 1
            self._state.sent.append(SentMessage(chat_id, str(params.get("text", "")), params.get("reply_markup"), message_id))
        return {"message_id": message_id, "date": int(time.time()), "from": BOT_USER,
                "chat": {"id": chat_id, "type": "private"}, "text": str(params.get("text", ""))}  # fmt: skip

    def _api_answerCallbackQuery(self, params: dict[str, Any]) -> bool:
        with self._lock:
            self._state.answered.append(str(params.get("callback_query_id")))
        return True

    def _api_setWebhook(self, params: dict[str, Any]) -> bool:
        with self._lock:
            self._state.webhook = {k: params.get(k) for k in ("url", "secret_token", "allowed_updates")}
        return True

    def _api_deleteWebhook(self, params: dict[str, Any]) -> bool:
        with self._lock:
            self._state.webhook = None
        return True

    def _api_getUpdates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        wait = min(float(params.get("timeout") or 0), MAX_POLL_WAIT)
        deadline = time.monotonic() + wait
        with self._lock:
            # An offset confirms every update below it: Telegram forgets them.
            self._state.updates = [u for u in self._state.updates if u["update_id"] >= offset]
            while not self._state.updates and not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(remaining)
            return list(self._state.updates[:limit])


def _parse_params(body: bytes, content_type: str) -> dict[str, Any]:
    if not body:
        return {}
    if content_type.startswith("application/json"):
        return json.loads(body)
    params: dict[str, Any] = {}
    for key, value in parse_qsl(body.decode("utf-8"), keep_blank_values=True):
        if key in JSON_FIELDS:
            try:
                params[key] = json.loads(value)
                continue
            except ValueError:
                pass
        params[key] = value
    return params


# -- updates, as Telegram posts them ----------------------------------------------------------------


def user(user_id: int, *, language_code: str = "en") -> dict[str, Any]:
    """Return a Telegram user object."""
    return {"id": user_id, "is_bot": False, "first_name": "Pat", "language_code": language_code}


def _message(chat_id: int, *, message_id: int, from_id: int | None = None, language_code: str = "en",
             chat_type: str = "private", **content: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "message_id": message_id,
        "date": int(time.time()),
        "chat": {"id": chat_id, "type": chat_type},
        "from": user(from_id or chat_id, language_code=language_code),
        **content,
    }


def text_update(update_id: int, chat_id: int, text: str, *, language_code: str = "en",
                chat_type: str = "private") -> dict[str, Any]:  # fmt: skip
    """Return an update carrying a text message."""
    message = _message(chat_id, message_id=update_id, language_code=language_code, chat_type=chat_type, text=text)
    if text.startswith("/"):
        message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
    return {"update_id": update_id, "message": message}


def contact_update(update_id: int, chat_id: int, phone: str, *, contact_user_id: int | None) -> dict[str, Any]:
    """Return an update carrying a shared contact (the sender's own when contact_user_id == chat_id)."""
    contact: dict[str, Any] = {"phone_number": phone, "first_name": "Pat"}
    if contact_user_id is not None:
        contact["user_id"] = contact_user_id
    return {"update_id": update_id, "message": _message(chat_id, message_id=update_id, contact=contact)}


def callback_update(update_id: int, chat_id: int, data: str, *, buttons: list[tuple[str, str]] | None = None,
                    query_id: str = "cb-1") -> dict[str, Any]:  # fmt: skip
    """Return an update for a tapped inline button; buttons are the (title, data) of the message it was on."""
    message = _message(chat_id, message_id=900 + update_id, from_id=BOT_USER["id"], text="Are you asking about ...?")
    message["from"] = BOT_USER
    if buttons is not None:
        message["reply_markup"] = {"inline_keyboard": [[{"text": t, "callback_data": d}] for t, d in buttons]}
    return {
        "update_id": update_id,
        "callback_query": {"id": query_id, "from": user(chat_id), "chat_instance": "ci-1", "data": data,
                           "message": message},  # fmt: skip
    }


def member_update(update_id: int, chat_id: int, *, status: str) -> dict[str, Any]:
    """Return a my_chat_member update: status "kicked" when the user blocks the bot, "member" when they unblock."""
    old = "member" if status == "kicked" else "kicked"

    def member(state: str) -> dict[str, Any]:
        extra = {"until_date": 0} if state == "kicked" else {}
        return {"user": BOT_USER, "status": state, **extra}

    return {
        "update_id": update_id,
        "my_chat_member": {"chat": {"id": chat_id, "type": "private"}, "from": user(chat_id), "date": int(time.time()),
                           "old_chat_member": member(old), "new_chat_member": member(status)},  # fmt: skip
    }
