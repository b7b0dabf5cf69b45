"""The HL7 MLLP listener: frames are \\x0b message \\x1c\\x0d; one ACK per message, written after commit.

Each message is applied and its LabMessage row committed in one transaction before the ACK is
written, so an acknowledged message is never lost. If storing fails (the database is down), no ACK
is sent and the connection is closed: the sender keeps the message and sends it again.

Bytes that are not a well-formed frame (no start block, FS without its CR, a frame over 1 MiB, a
frame whose end never comes) get an AR saying what was wrong, with MSA-2 naming the message's MSH-10
when it can be read, and a warning logged with sizes only; nothing is stored, and the connection
stays open for the next frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from bot.db import session_scope
from bot.labs.hl7v2 import do_receive_hl7, framing_nak

log = logging.getLogger(__name__)

START = b"\x0b"
END = b"\x1c\x0d"
FS, CR = 0x1C, 0x0D
MAX_FRAME_BYTES = 1 << 20
READ_BYTES = 64 * 1024
# Whitespace (keep-alive newlines) and NUL padding between frames carry nothing.
IGNORED = b" \t\r\n\x00"
# Enough of a bad frame to find its MSH-10, so the NAK can name the message it answers.
HEAD_BYTES = 4096
# A sender waits for its ACK: stray bytes, or a frame ended by FS alone, are answered after this pause.
PAUSE_SECONDS = 1.0
# A frame whose end block has not come after this long is answered with a NAK and dropped.
STALL_SECONDS = 30.0

NO_START = "bytes outside a frame: a message must start with VT (0x0B) and end with FS CR (0x1C 0x0D)"
END_WITHOUT_START = "a message ended with FS CR (0x1C 0x0D) but did not start with VT (0x0B)"
START_BEFORE_END = "a frame has no end block (FS CR) before the next start block (VT)"
FS_WITHOUT_CR = "a frame ended with FS (0x1C) without the CR (0x0D) after it"
STALLED = "the frame's end block (FS CR) did not arrive"
CLOSED = "the connection closed before the frame's end block (FS CR)"


@dataclass(frozen=True)
class FramingError:
    """Bytes that are not a well-formed frame: what was wrong, their first bytes and their size."""

    reason: str
    head: bytes
    size: int


class MllpFramer:
    """Split a TCP byte stream into MLLP frames and framing errors, however the reads cut it."""

    def __init__(self, *, limit: int = MAX_FRAME_BYTES) -> None:
        self.buffer = bytearray()
        self.limit = limit
        self.junk = bytearray()  # the head of a run of bytes outside any frame
        self.junk_size = 0
        self.skipping = False  # inside a frame past the limit: dropped up to its end block

    def feed(self, data: bytes) -> list[bytes | FramingError]:
        """Add bytes; return every frame now complete and every framing error now certain."""
        self.buffer += data
        found: list[bytes | FramingError] = []
        while self.buffer:
            if self.skipping:
                end = self.buffer.find(END)
                if end < 0:
                    del self.buffer[: -1 if self.buffer[-1] == FS else None]
                    break
                del self.buffer[: end + len(END)]
                self.skipping = False
                continue
            start = self.buffer.find(START)
            if start != 0:
                # Keep a trailing FS: its CR may come in the next read.
                cut = len(self.buffer) - (self.buffer[-1] == FS) if start < 0 else start
                found.extend(self._outside(bytes(self.buffer[:cut])))
                del self.buffer[:cut]
                if start < 0:
                    break
                continue
            if self.junk_size:
                found.append(self._take_junk(NO_START))
            item = self._frame()
            if item is None:
                break
            found.append(item)
        return found

    def _frame(self) -> bytes | FramingError | None:
        """Take the frame at the start of the buffer; None while it is incomplete."""
        buffer = self.buffer
        fs, restart = buffer.find(FS, 1), buffer.find(START, 1)
        end = min((at for at in (fs, restart) if at > 0), default=len(buffer))
        if end - 1 > self.limit:
            # Answer now, and drop the rest up to its end block as it comes (holding at most the limit).
            error = FramingError(
                f"a frame is larger than {self.limit} bytes", bytes(buffer[1:HEAD_BYTES]), end - 1
            )
            del buffer[:1]
            self.skipping = True
            return error
        if end == len(buffer):
            return None
        if end == restart:
            return self._drop(restart, START_BEFORE_END, skip=0)
        if fs + 1 == len(buffer):
            return None  # the CR may be on its way
        if buffer[fs + 1] != CR:
            return self._drop(fs, FS_WITHOUT_CR, skip=1)
        payload = bytes(buffer[1:fs])
        del buffer[: fs + len(END)]
        return payload

    def _drop(self, end: int, reason: str, *, skip: int) -> FramingError:
        error = FramingError(reason, bytes(self.buffer[1 : min(end, HEAD_BYTES)]), end - 1)
        del self.buffer[: end + skip]
        return error

    def _outside(self, chunk: bytes) -> list[FramingError]:
        found = []
        while chunk:
            end = chunk.find(END)
            self._add_junk(chunk if end < 0 else chunk[: end + len(END)])
            if end < 0:
                break
            found.append(self._take_junk(END_WITHOUT_START))
            chunk = chunk[end + len(END) :]
        return found

    def _add_junk(self, part: bytes) -> None:
        if not self.junk_size:
            part = part.lstrip(IGNORED)
        self.junk += part[: max(0, HEAD_BYTES - len(self.junk))]
        self.junk_size += len(part)

    def _take_junk(self, reason: str) -> FramingError:
        error = FramingError(reason, bytes(self.junk), self.junk_size)
        self.junk.clear()
        self.junk_size = 0
        return error

    def wait(self, *, pause: float, stall: float) -> float | None:
        """Return how long to wait for more bytes before answering what is held, None for as long as it takes."""
        if self.junk_size or (self.buffer.startswith(START) and self.buffer.endswith(b"\x1c")):
            return pause
        if self.buffer.startswith(START):
            return stall
        return None

    def flush(self, *, closed: bool = False) -> list[FramingError]:
        """The sender paused (or closed): answer stray bytes and any frame left without its end block."""
        found = [self._take_junk(NO_START)] if self.junk_size else []
        if self.buffer.startswith(START) and self.buffer.endswith(b"\x1c"):
            found.append(self._drop(len(self.buffer) - 1, FS_WITHOUT_CR, skip=1))
        elif self.buffer.startswith(START):
            found.append(self._drop(len(self.buffer), CLOSED if closed else STALLED, skip=0))
        self.buffer.clear()
        return found


def decode(payload: bytes) -> str:
    """Decode a frame: UTF-8, else Latin-1 (older lab systems)."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.decode("latin-1")


def store_and_ack(payload: bytes) -> bytes:
    """Apply one message in its own committed transaction and return the ACK to write."""
    text = decode(payload)
    for attempt in range(2):
        try:
            with session_scope() as session:
                result = do_receive_hl7(session=session, text=text)
            return result.ack.encode("utf-8")
        except IntegrityError:
            # The same MSH-10 arrived on another connection at the same moment; the retry reads its answer.
            if attempt:
                raise
    raise AssertionError("unreachable")


async def _serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handler: Callable[[bytes], bytes],
    *,
    pause: float = PAUSE_SECONDS,
    stall: float = STALL_SECONDS,
) -> None:
    framer = MllpFramer()
    peer = writer.get_extra_info("peername")
    try:
        while True:
            try:
                data = await asyncio.wait_for(reader.read(READ_BYTES), framer.wait(pause=pause, stall=stall))
            except TimeoutError:
                data, found = None, framer.flush()
            else:
                found = framer.feed(data) if data else framer.flush(closed=True)
            for item in found:
                if isinstance(item, FramingError):
                    # Sizes only: the bytes may be a patient's message.
                    log.warning("mllp from %s: %s (%d bytes); answered AR", peer, item.reason, item.size)
                    ack = framing_nak(decode(item.head), item.reason).encode("utf-8")
                else:
                    # Database work runs off the event loop; frames on one connection are answered in order.
                    ack = await asyncio.to_thread(handler, item)
                writer.write(START + ack + END)
                await writer.drain()
            if data == b"":
                break
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    except Exception:
        log.exception("mllp message from %s not stored; connection closed without an ACK", peer)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


class MllpListener:
    """An asyncio MLLP server; run it in the current loop or in a thread of its own."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        handler: Callable[[bytes], bytes] = store_and_ack,
        pause: float = PAUSE_SECONDS,
        stall: float = STALL_SECONDS,
    ) -> None:
        self.host, self.port, self.handler = host, port, handler
        self.pause, self.stall = pause, stall
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        """Bind and start accepting; port 0 picks a free port (read it from .port)."""
        self._server = await asyncio.start_server(
            lambda r, w: _serve_connection(r, w, self.handler, pause=self.pause, stall=self.stall),
            host=self.host,
            port=self.port,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("mllp listening on %s:%s", self.host, self.port)

    async def serve_forever(self) -> None:
        """Start and serve until cancelled."""
        await self.start()
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def close(self) -> None:
        """Stop accepting and close the server."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def start_in_thread(self) -> int:
        """Run the listener on an event loop in a daemon thread; return the bound port."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as error:  # a port in use must reach the caller
                failure.append(error)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.close())
                loop.close()

        self._thread = threading.Thread(target=run, name="mllp", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self.port

    def stop_thread(self) -> None:
        """Stop a listener started with start_in_thread."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._thread = None
