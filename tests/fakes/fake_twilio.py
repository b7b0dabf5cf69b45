"""A fake Twilio REST API on loopback: the Messages resource, with programmable faults.

Drive it only through the real `twilio` client (point `client.api.base_url` at `fake.base_url`):

    with FakeTwilio(account_sid="AC...", auth_token="...") as fake:
        fake.fail_next(Fault.server_error())           # the next create answers 500
        fake.fail_next(Fault.rate_limited(retry_after=30))
        fake.fail_next(Fault.slow(seconds=2))          # records the message, answers too late
        fake.fail_next(Fault.slow(seconds=2, record=False))
        fake.fail_next(Fault.held())                   # records the message, answers when fake.release() is called
        fake.fail_next(Fault.error(21610))             # Twilio error JSON, HTTP 400
        fake.fail_next(Fault.server_error(), on="list")
        fake.opt_out("+16175550142")                   # every later create to it answers 21610
        ...
        fake.messages                                  # what Twilio accepted, oldest first
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import secrets
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

API_VERSION = "2010-04-01"
ERROR_MESSAGES = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    21211: "The 'To' number is not a valid phone number.",
    21602: "Message body is required.",
    21604: "A 'To' phone number is required.",
    21606: "The 'From' phone number provided is not a valid message-capable Twilio phone number.",
    21610: "Attempt to send to unsubscribed recipient",
    21614: "'To' number is not a valid mobile number",
}
# Faults that sleep never hold a test longer than this, whatever they ask for.
MAX_DELAY_SECONDS = 30.0


@dataclass(frozen=True)
class Fault:
    """What the fake does instead of (or besides) answering normally."""

    kind: Literal["ok", "status", "error", "slow", "disconnect", "held", "lagging"]
    status: int = 500
    code: int | None = None
    retry_after: str | None = None
    seconds: float = 0.0
    record: bool = True
    # A held create, once released: answer as usual, or drop the connection unanswered.
    then: Literal["answer", "disconnect"] = "answer"

    @classmethod
    def ok(cls) -> Fault:
        """Answer normally: lets a request through so the fault after it hits a later one."""
        return cls("ok")

    @classmethod
    def server_error(cls, *, status: int = 500) -> Fault:
        """Answer a 5xx with Twilio's error JSON; nothing is recorded."""
        return cls("status", status=status)

    @classmethod
    def rate_limited(cls, *, retry_after: float | str = 1) -> Fault:
        """Answer 429 Too Many Requests with a Retry-After header; nothing is recorded."""
        return cls("status", status=429, code=20429, retry_after=str(retry_after))

    @classmethod
    def error(cls, code: int, *, status: int = 400) -> Fault:
        """Answer a Twilio error (21610 unsubscribed, 21211 invalid number, ...); nothing is recorded."""
        return cls("error", status=status, code=code)

    @classmethod
    def slow(cls, *, seconds: float, record: bool = True) -> Fault:
        """Wait before answering; with record=True the message was accepted before the client gave up."""
        return cls("slow", seconds=min(seconds, MAX_DELAY_SECONDS), record=record)

    @classmethod
    def disconnect(cls, *, record: bool = False) -> Fault:
        """Close the connection without an answer (after recording, if asked)."""
        return cls("disconnect", record=record)

    @classmethod
    def lagging(cls) -> Fault:
        """On a list: answer as if no message were there yet (Twilio's list can lag behind its creates)."""
        return cls("lagging")

    @classmethod
    def held(cls, *, then: Literal["answer", "disconnect"] = "answer") -> Fault:
        """Record the message, then hold the answer until `FakeTwilio.release()`: answer, or drop the connection.

        The test decides what happens while the sender waits (a status callback, another sender's reconcile);
        a hold never outlasts MAX_DELAY_SECONDS.
        """
        return cls("held", then=then)


@dataclass
class FakeMessage:
    """One message Twilio accepted."""

    sid: str
    account_sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str
    status_callback: str | None
    date_created: datetime
    # Twilio answers "queued" and sends within moments; list calls see the message as sent.
    status: str = "sent"

    def as_json(self) -> dict[str, Any]:
        stamp = format_datetime(self.date_created, usegmt=True)
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": self.body,
            "date_created": stamp,
            "date_sent": stamp if self.status != "queued" else None,
            "date_updated": stamp,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid,
            "num_media": "0",
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": self.sid,
            "status": self.status,
            "subresource_uris": {"media": f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{self.sid}/Media.json"},
            "to": self.to,
            "uri": f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{self.sid}.json",
        }


@dataclass
class _State:
    account_sid: str
    auth_token: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    messages: list[FakeMessage] = field(default_factory=list)
    faults: dict[str, deque[Fault]] = field(default_factory=lambda: {"create": deque(), "list": deque()})
    opted_out: set[str] = field(default_factory=set)
    requests: list[tuple[str, str]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    # Files patients "attached" to MMS: media sid -> (content, content type); and whether the file store
    # (another host, as Twilio's CDN is) was ever sent the account's credentials.
    media: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    store_saw_credentials: bool = False
    released: threading.Event = field(default_factory=threading.Event)


def _parse_when(value: str) -> datetime | None:
    for pattern in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d"):
        try:
            return datetime.strptime(value, pattern).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeTwilio/1.0"
    # Keep-alive, as Twilio's API does: a new TCP connection per create would be the bottleneck.
    protocol_version = "HTTP/1.1"
    # An idle kept-alive connection is closed after this long, ending its thread.
    timeout = 30
    # Headers and body go out as two writes: with Nagle on, the body waits for the client's delayed ACK (40 ms).
    disable_nagle_algorithm = True
    state: _State  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        """Stay quiet: tests read `fake.messages`, not the access log."""

    # -- plumbing ---------------------------------------------------------------------------------

    def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        # The client may have given up already (a slow fault): that is the point of the fault.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def _error(self, status: int, code: int, headers: dict[str, str] | None = None) -> None:
        self._json(
            status,
            {"code": code, "message": ERROR_MESSAGES.get(code, "Error"),
             "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status},
            headers,
        )  # fmt: skip

    def _authorised(self, account_sid: str) -> bool:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        state = self.state
        return (user, password) == (state.account_sid, state.auth_token) and account_sid == state.account_sid

    def _route(self) -> tuple[str, dict[str, list[str]]] | None:
        parts = urlsplit(self.path)
        segments = parts.path.strip("/").split("/")
        if len(segments) != 4 or segments[0] != API_VERSION or segments[1] != "Accounts" or segments[3] != "Messages.json":
            return None
        return segments[2], parse_qs(parts.query, keep_blank_values=True)

    def _next_fault(self, on: str) -> Fault | None:
        with self.state.lock:
            queue = self.state.faults[on]
            return queue.popleft() if queue else None

    def _apply(self, fault: Fault | None, recorded: FakeMessage | None = None) -> bool:
        """Act out a fault; return True when the request was answered (or dropped) by it."""
        if fault is None or fault.kind == "ok":
            return False
        if fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
            self._error(fault.status, fault.code or fault.status, headers)
            return True
        if fault.kind == "error":
            self._error(fault.status, fault.code or fault.status)
            return True
        if fault.kind == "held":
            self.state.released.wait(MAX_DELAY_SECONDS)
            if fault.then == "answer":
                return False
        if fault.kind in {"disconnect", "held"}:
            self.close_connection = True
            self.connection.close()
            return True
        # slow: hold the answer past the client's timeout, then answer as if all was well.
        self.state.stopping.wait(fault.seconds)
        if recorded is not None:
            self._json(201, recorded.as_json() | {"status": "queued", "date_sent": None})
        else:
            self._error(500, 500)
        return True

    # -- endpoints ------------------------------------------------------------------------------

    def do_POST(self) -> None:
        # Read the whole body first: on a kept-alive connection an unread body would garble the next request.
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode()
        route = self._route()
        if route is None:
            self._error(404, 20404)
            return
        account_sid, _ = route
        form = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        with self.state.lock:
            self.state.requests.append(("POST", self.path))
        if not self._authorised(account_sid):
            self._error(401, 20003)
            return
        fault = self._next_fault("create")
        if fault is not None and fault.kind != "ok" and not (fault.kind in {"slow", "disconnect", "held"} and fault.record):
            self._apply(fault)
            return
        to, body = form.get("To"), form.get("Body")
        sender, service = form.get("From"), form.get("MessagingServiceSid")
        if not to:
            self._error(400, 21604)
            return
        if not body:
            self._error(400, 21602)
            return
        if not (sender or service):
            self._error(400, 21606)
            return
        with self.state.lock:
            if to in self.state.opted_out:
                refused = True
            else:
                refused = False
                message = FakeMessage(
                    sid="SM" + secrets.token_hex(16),
                    account_sid=account_sid,
                    to=to,
                    from_=sender,
                    messaging_service_sid=service,
                    body=body,
                    status_callback=form.get("StatusCallback"),
                    date_created=datetime.now(tz=UTC).replace(microsecond=0),
                )
                self.state.messages.append(message)
        if refused:
            self._error(400, 21610)
            return
        if self._apply(fault, recorded=message):
            return
        self._json(201, message.as_json() | {"status": "queued", "date_sent": None})

    def _media(self) -> bool:
        """Serve MMS media as Twilio does: the API path redirects to a file store on another host."""
        segments = urlsplit(self.path).path.strip("/").split("/")
        if segments[:1] == ["_media-store"] and len(segments) == 2:
            with self.state.lock:
                found = self.state.media.get(segments[1])
                self.state.store_saw_credentials |= "Authorization" in self.headers
            if found is None:
                self._error(404, 20404)
                return True
            content, content_type = found
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)
            return True
        if len(segments) == 7 and segments[0] == API_VERSION and segments[3] == "Messages" and segments[5] == "Media":
            with self.state.lock:
                self.state.requests.append(("GET", self.path))
                known = segments[6] in self.state.media
            if not self._authorised(segments[2]):
                self._error(401, 20003)
            elif not known:
                self._error(404, 20404)
            else:
                port = self.server.server_address[1]
                self.send_response(307)
                self.send_header("Location", f"http://localhost:{port}/_media-store/{segments[6]}")
                self.send_header("Content-Length", "0")
                self.end_headers()
            return True
        return False

    def do_GET(self) -> None:
        if self._media():
            return
        if self.path == "/_fake/stats":
            # Not Twilio's: lets a benchmark running the fake in another process count what arrived.
            with self.state.lock:
                bodies = [m.body for m in self.state.messages]
            self._json(200, {"messages": len(bodies), "distinct_bodies": len(set(bodies))})
            return
        route = self._route()
        if route is None:
            self._error(404, 20404)
            return
        account_sid, query = route
        with self.state.lock:
            self.state.requests.append(("GET", self.path))
        if not self._authorised(account_sid):
            self._error(401, 20003)
            return
        fault = self._next_fault("list")
        lagging = fault is not None and fault.kind == "lagging"
        if not lagging and self._apply(fault):
            return
        first = {name: values[0] for name, values in query.items()}
        after = _parse_when(first["DateSent>"]) if "DateSent>" in first else None
        before = _parse_when(first["DateSent<"]) if "DateSent<" in first else None
        with self.state.lock:
            matches = [
                m for m in reversed(self.state.messages)  # Twilio lists the newest first
                if not lagging
                and ("To" not in first or m.to == first["To"])
                and ("From" not in first or m.from_ == first["From"])
                and (after is None or m.date_created >= after)
                and (before is None or m.date_created <= before)
            ]  # fmt: skip
        page_size = max(1, min(int(first.get("PageSize") or 50), 1000))
        page = max(0, int(first.get("Page") or 0))
        chunk = matches[page * page_size : (page + 1) * page_size]
        base = f"/{API_VERSION}/Accounts/{account_sid}/Messages.json"
        filters = {k: v for k, v in first.items() if k not in {"Page", "PageSize", "PageToken"}}

        def uri(number: int) -> str:
            return base + "?" + urlencode({**filters, "PageSize": page_size, "Page": number})

        has_next = (page + 1) * page_size < len(matches)
        self._json(
            200,
            {
                "messages": [m.as_json() for m in chunk],
                "end": page * page_size + max(len(chunk) - 1, 0),
                "first_page_uri": uri(0),
                "next_page_uri": uri(page + 1) + f"&PageToken=PA{page + 1}" if has_next else None,
                "page": page,
                "page_size": page_size,
                "previous_page_uri": uri(page - 1) if page else None,
                "start": page * page_size,
                "uri": uri(page),
            },
        )


class _Server(ThreadingHTTPServer):
    # The stdlib's backlog of 5 drops connections when several send threads connect at once.
    request_queue_size = 128


class FakeTwilio:
    """A real HTTP server on 127.0.0.1 (random port) answering like Twilio's Messages API."""

    _ids = itertools.count(1)

    def __init__(
        self,
        *,
        account_sid: str = "AC" + "0" * 31 + "1",
        auth_token: str = "fake-auth-token",
    ) -> None:
        self.state = _State(account_sid=account_sid, auth_token=auth_token)
        handler = type(f"_Handler{next(self._ids)}", (_Handler,), {"state": self.state})
        self.server = _Server(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-twilio", daemon=True
        )
        self._started = False

    @property
    def account_sid(self) -> str:
        return self.state.account_sid

    @property
    def auth_token(self) -> str:
        return self.state.auth_token

    @property
    def base_url(self) -> str:
        """The URL that replaces https://api.twilio.com."""
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeTwilio:
        """Start serving in a background thread."""
        if not self._started:
            self.thread.start()
            self._started = True
        return self

    def stop(self) -> None:
        """Stop serving; requests held by slow or held faults are released at once."""
        self.state.stopping.set()
        self.state.released.set()
        if self._started:
            self.server.shutdown()
            self.thread.join(timeout=5)
        self.server.server_close()

    def __enter__(self) -> FakeTwilio:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- programming faults and state -------------------------------------------------------------

    def fail_next(self, fault: Fault, *, times: int = 1, on: Literal["create", "list"] = "create") -> None:
        """Apply a fault to the next `times` requests of one kind (message creates or lists)."""
        if fault.kind == "lagging" and on != "list":
            raise ValueError("a lagging fault applies to lists only: fail_next(Fault.lagging(), on='list')")
        with self.state.lock:
            self.state.faults[on].extend([fault] * times)

    def release(self) -> None:
        """Let every held create answer (see Fault.held)."""
        self.state.released.set()

    def add_media(self, content: bytes, content_type: str) -> str:
        """Store a file as if a patient attached it to an MMS; return its MediaUrl."""
        with self.state.lock:
            number = len(self.state.media) + 1
            self.state.media[f"ME{number:032d}"] = (content, content_type)
        return f"{self.base_url}/{API_VERSION}/Accounts/{self.account_sid}/Messages/MM{number:032d}/Media/ME{number:032d}"

    @property
    def media_store_saw_credentials(self) -> bool:
        """Whether the file store (another host) was ever sent the account's credentials."""
        with self.state.lock:
            return self.state.store_saw_credentials

    def opt_out(self, number: str) -> None:
        """Make every later message to a number fail with 21610, as Twilio does after STOP."""
        with self.state.lock:
            self.state.opted_out.add(number)

    def set_status(self, sid: str, status: str) -> None:
        """Change a message's status as later list calls report it."""
        with self.state.lock:
            next(m for m in self.state.messages if m.sid == sid).status = status

    def reset(self) -> None:
        """Forget messages, faults, opt-outs and the request log."""
        with self.state.lock:
            self.state.messages.clear()
            for queue in self.state.faults.values():
                queue.clear()
            self.state.opted_out.clear()
            self.state.requests.clear()

    @property
    def messages(self) -> list[FakeMessage]:
        """Every message accepted so far, oldest first."""
        with self.state.lock:
            return list(self.state.messages)

    def messages_to(self, number: str) -> list[FakeMessage]:
        """The messages accepted for one number, oldest first."""
        return [m for m in self.messages if m.to == number]

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Every request received as (method, path), oldest first."""
        with self.state.lock:
            return list(self.state.requests)

    @property
    def pending_faults(self) -> int:
        """How many programmed faults have not been used yet."""
        with self.state.lock:
            return sum(len(queue) for queue in self.state.faults.values())


def main() -> None:
    """Serve a fake on its own (`python -m tests.fakes.fake_twilio SID TOKEN`), printing its base URL.

    A benchmark runs it in another process so it does not share the sender's interpreter lock; it
    stops when its standard input closes.
    """
    import sys

    fake = FakeTwilio(account_sid=sys.argv[1], auth_token=sys.argv[2]).start()
    print(fake.base_url, flush=True)
    sys.stdin.read()
    fake.stop()


if __name__ == "__main__":
    main()
