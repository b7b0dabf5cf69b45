"""The HL7 MLLP listener: frames are \\x0b message \\x1c\\x0d; one ACK per message, written after commit.

Each message is applied and its LabMessage row committed in one transaction before the ACK is
written, so an acknowledged message is never lost. If storing fails (the database is down), no ACK
is sent and the connection is closed: the sender keeps the message and sends it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

from sqlalchemy.exc import IntegrityError

from bot.db import session_scope
from bot.labs.hl7v2 import do_receive_hl7

log = logging.getLogger(__name__)

START = b"\x0b"
END = b"\x1c\x0d"
MAX_FRAME_BYTES = 1 << 20
READ_BYTES = 64 * 1024


class FrameTooLarge(Exception):
    """A frame grew past the limit without its end marker."""


class MllpFramer:
    """Split a TCP byte stream into MLLP frames, however the reads cut it."""

    def __init__(self, *, limit: int = MAX_FRAME_BYTES) -> None:
        self.buffer = bytearray()
        self.limit = limit

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return every frame now complete."""
        self.buffer += data
        frames = []
        while True:
            start = self.buffer.find(START)
            if start < 0:
                # Bytes outside a frame (keep-alive newlines, noise) carry nothing.
                self.buffer.clear()
                return frames
            end = self.buffer.find(END, start + 1)
            if end < 0:
                del self.buffer[:start]
                if len(self.buffer) > self.limit:
                    raise FrameTooLarge(f"frame exceeds {self.limit} bytes")
                return frames
            frames.append(bytes(self.buffer[start + 1 : end]))
            del self.buffer[: end + len(END)]


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
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Callable[[bytes], bytes]
) -> None:
    framer = MllpFramer()
    peer = writer.get_extra_info("peername")
    try:
        while data := await reader.read(READ_BYTES):
            for frame in framer.feed(data):
                # Database work runs off the event loop; frames on one connection are answered in order.
                ack = await asyncio.to_thread(handler, frame)
                writer.write(START + ack + END)
                await writer.drain()
    except FrameTooLarge:
        log.warning("mllp frame from %s too large; connection closed", peer)
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

    def __init__(self, *, host: str, port: int, handler: Callable[[bytes], bytes] = store_and_ack) -> None:
        self.host, self.port, self.handler = host, port, handler
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        """Bind and start accepting; port 0 picks a free port (read it from .port)."""
        self._server = await asyncio.start_server(
            lambda r, w: _serve_connection(r, w, self.handler), host=self.host, port=self.port
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
