"""The MLLP listener over a real loopback socket: framing, one ACK per message, nothing ACKed unstored."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import hl7
import pytest
from sqlalchemy import select

from bot.db import session_scope
from bot.labs.mllp import END, NO_START, START, FramingError, MllpFramer, MllpListener
from bot.labs.models import LabMessage, LabOrder
from tests.labs.conftest import orm, oru


@pytest.fixture
def listener(demo_db: str) -> Iterator[MllpListener]:
    """A listener on a free loopback port, on the demo clinic's database."""
    server = MllpListener(host="127.0.0.1", port=0, pause=0.2, stall=1.0)
    server.start_in_thread()
    yield server
    server.stop_thread()


def frame(text: str) -> bytes:
    return START + text.encode() + END


def exchange(port: int, *chunks: bytes, pause: float = 0.0) -> list[str]:
    """Send the chunks (pausing between them), close our side, and return every ACK frame received."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for index, chunk in enumerate(chunks):
            if index and pause:
                time.sleep(pause)  # lets the server read the earlier chunk on its own
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
        framer, acks = MllpFramer(), []
        while data := sock.recv(4096):
            acks.extend(payload.decode() for payload in framer.feed(data))
    return acks


def converse(port: int, *turns: bytes) -> list[str]:
    """Send each chunk on one open connection and wait for one ACK frame after each."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        framer, acks = MllpFramer(), []
        for turn in turns:
            sock.sendall(turn)
            expected = len(acks) + 1
            while len(acks) < expected and (data := sock.recv(4096)):
                acks.extend(payload.decode() for payload in framer.feed(data))  # type: ignore[union-attr]
    return acks


def ack_of(text: str) -> tuple[str, str]:
    msa = hl7.parse(text).segment("MSA")
    return str(msa(1)), str(msa(2))


def nak_of(text: str) -> tuple[str, str, str]:
    ack = hl7.parse(text)
    msa = ack.segment("MSA")
    return str(msa(1)), str(msa(2)), ack.unescape(str(msa(3))) if len(msa) > 3 else ""


def test_two_messages_in_one_connection_get_one_ack_each_in_order(listener: MllpListener) -> None:
    acks = exchange(listener.port, frame(orm("M-1")) + frame(oru("M-2", status="P")))
    assert [ack_of(a) for a in acks] == [("AA", "M-1"), ("AA", "M-2")]
    assert acks[0].startswith("MSH|^~\\&|CLINICBOT|RFC|ACMELAB|ACME|") and acks[0].endswith("\rMSA|AA|M-1\r")
    with session_scope() as session:
        assert (
            session.scalars(select(LabOrder.status).where(LabOrder.order_id == "HL7-5001")).one() == "in_lab"
        )
        assert session.scalars(select(LabMessage.control_id).order_by(LabMessage.id)).all() == ["M-1", "M-2"]


def test_a_message_split_across_reads_is_reassembled(listener: MllpListener) -> None:
    whole = b"\r\n" + frame(orm("S-1"))  # noise before the start block is ignored
    cut = len(whole) // 2
    acks = exchange(listener.port, whole[:5], whole[5:cut], whole[cut:-1], whole[-1:], pause=0.05)
    assert [ack_of(a) for a in acks] == [("AA", "S-1")]
    with session_scope() as session:
        assert (
            session.scalars(select(LabOrder.order_id).where(LabOrder.order_id == "HL7-5001")).one()
            == "HL7-5001"
        )


def test_a_retry_on_a_new_connection_gets_the_same_ack(listener: MllpListener) -> None:
    first = exchange(listener.port, frame(orm("R-1")))
    retry = exchange(listener.port, frame(orm("R-1")))
    rejected = exchange(
        listener.port, frame(oru("R-2", order_id="HL7-404")) + frame(oru("R-2", order_id="HL7-404"))
    )
    assert [ack_of(a) for a in first + retry] == [("AA", "R-1"), ("AA", "R-1")]
    assert [ack_of(a) for a in rejected] == [("AE", "R-2"), ("AE", "R-2")]
    with session_scope() as session:
        assert session.scalars(select(LabMessage.control_id).order_by(LabMessage.id)).all() == ["R-1", "R-2"]


def test_a_short_msh_is_answered_and_the_next_frame_on_the_connection_still_gets_its_ack(
    listener: MllpListener,
) -> None:
    stream = frame("MSH|^~\\&|") + frame("MSH|^~\\&|A|B|C|D|E|F|ORM^O01|CID1") + frame(orm("M-1"))
    acks = exchange(listener.port, stream)
    assert [ack_of(a) for a in acks] == [("AR", ""), ("AE", "CID1"), ("AA", "M-1")]
    with session_scope() as session:
        assert session.scalars(select(LabMessage.control_id).order_by(LabMessage.id)).all() == ["CID1", "M-1"]


def test_a_message_that_cannot_be_stored_gets_no_ack(demo_db: str) -> None:
    def broken_store(payload: bytes) -> bytes:
        raise RuntimeError("database unavailable")

    server = MllpListener(host="127.0.0.1", port=0, handler=broken_store)
    server.start_in_thread()
    try:
        assert exchange(server.port, frame(orm("X-1"))) == []
    finally:
        server.stop_thread()


def test_framer_handles_any_cut() -> None:
    stream = (
        frame("MSH|a") + b"\r\n" + frame("MSH|b") + b"junk" + frame("MSH|c") + b"\x1c\r" + frame("MSH|d")[:-1]
    )
    for size in (1, 2, 3, 7, len(stream)):
        framer = MllpFramer()
        frames = []
        for offset in range(0, len(stream), size):
            frames.extend(framer.feed(stream[offset : offset + size]))
        assert frames == [
            b"MSH|a",
            b"MSH|b",
            FramingError(NO_START, b"junk", 4),
            b"MSH|c",
            FramingError(
                "a message ended with FS CR (0x1C 0x0D) but did not start with VT (0x0B)", b"\x1c\r", 2
            ),
        ], size
        assert framer.flush() == [
            FramingError("a frame ended with FS (0x1C) without the CR (0x0D) after it", b"MSH|d", 5)
        ], size


def test_unframed_bytes_and_a_frame_ended_by_fs_alone_get_a_nak_and_the_connection_stays_open(
    listener: MllpListener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bot.labs.mllp")
    unframed = orm("U-1").encode()
    fs_only = frame(orm("F-1"))[:-1]
    acks = converse(listener.port, unframed, frame(orm("M-1")), fs_only, frame(oru("M-2", status="P")))
    assert [nak_of(a) for a in acks] == [
        ("AR", "U-1", NO_START),
        ("AA", "M-1", ""),
        ("AR", "F-1", "a frame ended with FS (0x1C) without the CR (0x0D) after it"),
        ("AA", "M-2", ""),
    ]
    with session_scope() as session:
        assert session.scalars(select(LabMessage.control_id).order_by(LabMessage.id)).all() == ["M-1", "M-2"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w.split(": ", 1)[1] for w in warnings] == [
        f"{NO_START} ({len(unframed)} bytes); answered AR",
        f"a frame ended with FS (0x1C) without the CR (0x0D) after it ({len(fs_only) - 2} bytes); answered AR",
    ]
    assert "NGUYEN" not in caplog.text and "U-1" not in caplog.text


def test_an_oversized_frame_gets_a_nak_and_the_next_frame_its_ack(listener: MllpListener) -> None:
    huge = frame(orm("BIG-1").replace("NGUYEN", "N" * (1 << 20)))
    acks = converse(listener.port, huge, frame(orm("M-1")))
    assert [nak_of(a) for a in acks] == [
        ("AR", "BIG-1", "a frame is larger than 1048576 bytes"),
        ("AA", "M-1", ""),
    ]
    with session_scope() as session:
        assert session.scalars(select(LabMessage.control_id)).all() == ["M-1"]


def test_a_frame_without_its_end_block_gets_a_nak_when_the_sender_stalls_or_closes(
    listener: MllpListener,
) -> None:
    stalled = converse(listener.port, START + orm("S-1").encode(), frame(orm("M-1")))
    closed = exchange(listener.port, START + orm("C-1").encode())
    assert [nak_of(a) for a in stalled + closed] == [
        ("AR", "S-1", "the frame's end block (FS CR) did not arrive"),
        ("AA", "M-1", ""),
        ("AR", "C-1", "the connection closed before the frame's end block (FS CR)"),
    ]
