"""Wire format: round trips, and malformed slots that must yield ProtocolError and nothing else."""

from __future__ import annotations

import errno
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from channel.protocol.codec import (
    COMMAND_HEADER,
    NO_BUFFER,
    Command,
    decode_command,
    decode_completion,
    encode_command,
    encode_completion,
    pack_body,
)
from channel.protocol.errors import ProtocolError
from channel.protocol.layout import Geometry, Region, ServerStat
from channel.protocol.opcodes import Op
from channel.protocol.sides import ClientSide, Rejected, ServerSide

G = Geometry(sq_entries=4, cq_entries=4, slot_size=512, buf_count=4, buf_size=8192)
TOKEN = os.urandom(16)


def test_command_round_trip() -> None:
    slot = bytearray(G.slot_size)
    body = pack_body([b"name\xff", 0o644, 7])
    encode_command(
        slot, 42, Op.CREATE, TOKEN, body, buf=3, data_len=100, ino=9, fh=11, offset=2**40,
        size=4096, uid=1000, gid=100, pid=77, umask=0o22,
    )  # fmt: skip
    cmd = decode_command(bytes(slot), G.buf_count, G.buf_size)
    assert (cmd.tag, cmd.opcode, cmd.token, cmd.buf, cmd.data_len) == (42, Op.CREATE, TOKEN, 3, 100)
    assert (cmd.ino, cmd.fh, cmd.offset, cmd.size) == (9, 11, 2**40, 4096)
    assert (cmd.uid, cmd.gid, cmd.pid, cmd.umask) == (1000, 100, 77, 0o22)
    assert cmd.body == [b"name\xff", 0o644, 7]


def test_completion_round_trip() -> None:
    slot = bytearray(G.slot_size)
    encode_completion(slot, 7, -errno.ENOENT, pack_body({"a": 1}), data_len=5, buf=2, value=9)
    c = decode_completion(bytes(slot), G.buf_size)
    assert (c.tag, c.status, c.data_len, c.buf, c.value, c.body) == (7, -2, 5, 2, 9, {"a": 1})


def test_body_too_large_is_refused_at_encode() -> None:
    slot = bytearray(G.slot_size)
    try:
        encode_command(slot, 1, Op.NOP, TOKEN, b"x" * G.slot_size)
    except ValueError as exc:
        assert "does not fit" in str(exc)
    else:
        raise AssertionError("oversized body was accepted")


def _header(**overrides: int | bytes) -> bytearray:
    fields = dict(
        tag=1, opcode=0, flags=0, body_len=0, token=TOKEN, buf=NO_BUFFER, data_len=0, ino=0,
        fh=0, offset=0, size=0, uid=0, gid=0, pid=0, umask=0, reserved=0,
    )  # fmt: skip
    fields.update(overrides)
    slot = bytearray(G.slot_size)
    COMMAND_HEADER.pack_into(slot, 0, *fields.values())
    return slot


def _rejects(slot: bytes | bytearray, fragment: str) -> None:
    try:
        decode_command(bytes(slot), G.buf_count, G.buf_size)
    except ProtocolError as exc:
        assert fragment in str(exc)
    else:
        raise AssertionError(f"accepted a slot that should fail with {fragment!r}")


def test_out_of_range_fields_are_protocol_errors() -> None:
    _rejects(_header(body_len=G.slot_size), "overruns")
    _rejects(_header(buf=G.buf_count), "out of range")
    _rejects(_header(buf=-2), "out of range")
    _rejects(_header(buf=0, data_len=G.buf_size + 1), "exceeds")
    _rejects(_header(data_len=1), "without a data buffer")
    _rejects(_header(buf=1, size=G.buf_size + 1), "exceeds")
    bad_body = _header(body_len=2)
    bad_body[COMMAND_HEADER.size : COMMAND_HEADER.size + 2] = b"\xc1\xc1"  # never-used byte
    _rejects(bad_body, "malformed body")
    truncated = _header(body_len=3)
    truncated[COMMAND_HEADER.size : COMMAND_HEADER.size + 3] = b"\x93\x01\x02"  # list of 3, 2 given
    _rejects(truncated, "malformed body")


@settings(max_examples=2000, deadline=None)
@given(st.binary(min_size=0, max_size=G.slot_size))
def test_random_bytes_never_escape_as_other_exceptions(data: bytes) -> None:
    slot = data + bytes(G.slot_size - len(data))
    for decode in (
        lambda: decode_command(slot, G.buf_count, G.buf_size),
        lambda: decode_completion(slot, G.buf_size),
        lambda: decode_command(data, G.buf_count, G.buf_size),  # short slots too
    ):
        try:
            decoded = decode()
        except ProtocolError:
            continue
        if isinstance(decoded, Command):
            assert decoded.buf == NO_BUFFER or 0 <= decoded.buf < G.buf_count
            assert decoded.data_len <= G.buf_size


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=G.slot_size, max_size=G.slot_size), min_size=1, max_size=8))
def test_server_side_answers_garbage_slots_with_errors(slots: list[bytes]) -> None:
    """Garbage written straight into a live region's SQ: every slot is taken and becomes either a
    command, or a Rejected carrying -EPROTO / -EACCES; nothing else escapes."""
    region = Region.create(G)
    try:
        client, server = ClientSide(region, TOKEN), ServerSide(region, TOKEN)
        taken = 0
        for raw in slots:
            if not client.sq.free_slots():
                break
            client.sq.next_slot()[:] = raw
            client.sq.publish()
            item = server.take()
            assert item is not None
            taken += 1
            if isinstance(item, Rejected):
                assert item.status in (-errno.EPROTO, -errno.EACCES)
                server.complete(item.tag, item.status)
            else:
                server.complete(item.tag, 0)
            while client.cq.available():
                client.cq.release()
        assert server.stats[ServerStat.COMMANDS] == taken
    finally:
        region.close()


def test_token_mismatch_is_eacces_and_counted() -> None:
    region = Region.create(G)
    try:
        client = ClientSide(region, os.urandom(16))
        server = ServerSide(region, TOKEN)
        tag, _ = client.submit(Op.NOP)
        item = server.take()
        assert isinstance(item, Rejected) and item.tag == tag and item.status == -errno.EACCES
        assert server.stats[ServerStat.AUTH_FAILURES] == 1
    finally:
        region.close()
