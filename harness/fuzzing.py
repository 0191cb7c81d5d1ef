"""A fuzzer for a live channel: arbitrary bytes into a real server's shared region.

One `ChannelFuzzer` holds a raw channel to a running server (a real handshake, then direct
writes into the region, bypassing the client endpoints) and turns each case's bytes into one
hostile act: garbage slots, valid headers with random fields, random msgpack bodies under real
opcodes, data buffers full of noise behind READ/WRITE commands, random ring indices, random
bytes over the header page, and garbage handshakes. After each case it collects whatever
completions came back and checks they are well formed. `check_health` proves that the server
process is alive and that a separate, well-behaved channel still works with its data intact.

Used by `tests/channel/test_fuzz_channel.py` (hypothesis, a short run in CI) and
`benchmarks/fuzz_channel.py` (a long run of random cases).
"""

from __future__ import annotations

import errno
import os
import random
import time
from pathlib import Path

from channel.protocol import layout
from channel.protocol.codec import (
    COMMAND_HEADER,
    NO_BUFFER,
    decode_completion,
    encode_command,
    pack_body,
)
from channel.protocol.errors import HandshakeRefused, ProtocolError
from channel.protocol.handshake import make_hello
from channel.protocol.layout import Geometry
from channel.protocol.opcodes import Op
from channel.protocol.sides import cq_consumer, sq_producer
from channel.transport import doorbell
from channel.transport.handshake_io import ClientConnection, connect, exchange
from channel.transport.shm_client import BlockingClient

FUZZ_GEOMETRY = Geometry(sq_entries=8, cq_entries=8, slot_size=512, buf_count=2, buf_size=4096)
#: Seconds the server may take to answer everything we queued before it counts as a hang.
PROGRESS_DEADLINE = 5.0

KINDS = ("slot", "header", "body", "buffers", "sq_tail", "cq_head", "header_page", "hello")
#: Relative frequencies: acts that end the channel (ring indices) or reconnect (hello) are
#: rarer, so most cases exercise command parsing.
WEIGHTS = (20, 30, 30, 15, 2, 2, 3, 1)


class ServerDied(AssertionError):
    pass


class ChannelFuzzer:
    def __init__(self, socket_path: Path | str) -> None:
        self.socket_path = str(socket_path)
        self.conn: ClientConnection | None = None
        self.cases = 0
        self.completions = 0
        self.error_statuses: dict[int, int] = {}
        self.reconnects = 0
        self._outstanding = 0
        self._connect()

    # -- the raw channel --------------------------------------------------------------------
    def _connect(self) -> None:
        self.conn = connect(self.socket_path, geometry=FUZZ_GEOMETRY)
        self.sq = sq_producer(self.conn.region)
        self.cq = cq_consumer(self.conn.region)
        self.token = self.conn.accept.token
        self._outstanding = 0

    def _reconnect(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.reconnects += 1
        self._connect()

    def _server_closed_us(self) -> bool:
        assert self.conn is not None
        return doorbell.peer_gone(self.conn.sock)

    def _collect(self) -> None:
        """Read every completion that is there, checking that each one is well formed."""
        cq = self.cq
        while cq.available():
            completion = decode_completion(cq.current_slot(), FUZZ_GEOMETRY.buf_size)
            cq.release()
            self.completions += 1
            self._outstanding -= 1
            if completion.status:
                self.error_statuses[completion.status] = (
                    self.error_statuses.get(completion.status, 0) + 1
                )

    def _submit_raw(self, fill: bytes | None = None, /, **command: object) -> None:
        """Queue one slot: raw bytes, or an encoded command; wait for room first."""
        deadline = time.monotonic() + PROGRESS_DEADLINE
        while self.sq.free_slots() == 0 or self._outstanding >= FUZZ_GEOMETRY.cq_entries:
            self._collect()
            if self._server_closed_us():
                self._reconnect()
                continue
            if time.monotonic() > deadline:
                raise AssertionError("the server stopped consuming a channel's commands")
            doorbell.ring(self.conn.sq_efd)  # type: ignore[union-attr]
            time.sleep(0.0002)  # waiting for another process to make progress
        slot = self.sq.next_slot()
        if fill is not None:
            slot[: len(fill)] = fill
        else:
            encode_command(slot, **command)  # type: ignore[arg-type]
        self._outstanding += 1
        if self.sq.publish():
            doorbell.ring(self.conn.sq_efd)  # type: ignore[union-attr]

    # -- cases ------------------------------------------------------------------------------
    def case(self, data: bytes) -> None:
        """One hostile act chosen and shaped by `data`."""
        self.cases += 1
        rng = random.Random(data)
        kind = rng.choices(KINDS, WEIGHTS)[0]
        getattr(self, f"_case_{kind}")(rng, data)
        self._collect()

    def _case_slot(self, rng: random.Random, data: bytes) -> None:
        self._submit_raw(data[: FUZZ_GEOMETRY.slot_size] or b"\0")

    def _random_header(self, rng: random.Random, body: bytes) -> dict[str, object]:
        def u(bits: int) -> int:
            return rng.choice([0, 1, rng.getrandbits(bits), (1 << bits) - 1])

        return dict(
            tag=rng.getrandbits(64),
            opcode=rng.choice([u(16), rng.choice(list(Op))]),
            token=self.token if rng.random() < 0.8 else rng.randbytes(16),
            body=body,
            flags=u(16),
            buf=rng.choice([NO_BUFFER, 0, 1, 2, -2, rng.getrandbits(31)]),
            data_len=rng.choice([0, 1, 4096, 4097, u(32)]),
            ino=rng.choice([0, 1, 2, u(64)]),
            fh=rng.choice([0, 1, u(64)]),
            offset=u(64),
            size=rng.choice([0, 4096, u(32)]),
            uid=rng.choice([0, 65534, u(32)]),
            gid=rng.choice([0, 65534, u(32)]),
            pid=u(32),
            umask=u(32),
        )

    def _case_header(self, rng: random.Random, data: bytes) -> None:
        body = data[: FUZZ_GEOMETRY.slot_size - COMMAND_HEADER.size]
        self._submit_raw(**self._random_header(rng, body))

    def _random_value(self, rng: random.Random, depth: int = 0) -> object:
        choices: list[object] = [
            None, True, rng.getrandbits(64) - (1 << 63), rng.random(),
            rng.randbytes(rng.randrange(300)), "x" * rng.randrange(300),
            b"..", b"a/b", b"\0", b"x" * 256,
        ]  # fmt: skip
        if depth < 3:
            choices.append([self._random_value(rng, depth + 1) for _ in range(rng.randrange(5))])
            choices.append(
                {"mode": self._random_value(rng, depth + 1), "size": rng.getrandbits(70)}
            )
        return rng.choice(choices)

    @staticmethod
    def _packed(rng: random.Random, value: object, fallback: bytes) -> bytes:
        try:
            return pack_body(value)
        except (OverflowError, ValueError, TypeError):  # e.g. an integer beyond 64 bits
            return fallback[:64]

    def _case_body(self, rng: random.Random, data: bytes) -> None:
        body = self._packed(rng, self._random_value(rng), data)
        if len(body) > FUZZ_GEOMETRY.slot_size - COMMAND_HEADER.size:
            body = body[:64]
        header = self._random_header(rng, body)
        header["token"] = self.token
        header["buf"] = NO_BUFFER
        header["data_len"] = 0
        self._submit_raw(**header)

    def _case_buffers(self, rng: random.Random, data: bytes) -> None:
        assert self.conn is not None
        index = rng.randrange(FUZZ_GEOMETRY.buf_count)
        buffer = self.conn.region.buffer(index)
        noise = (data * (FUZZ_GEOMETRY.buf_size // max(len(data), 1) + 1))[: len(buffer)]
        buffer[: len(noise)] = noise or b"\0"
        header = self._random_header(rng, b"")
        header.update(opcode=rng.choice([Op.READ, Op.WRITE, Op.SETXATTR, Op.READDIR]),
                      token=self.token, buf=index, data_len=rng.randrange(4097),
                      size=rng.randrange(4097))  # fmt: skip
        self._submit_raw(**header)

    def _case_sq_tail(self, rng: random.Random, data: bytes) -> None:
        assert self.conn is not None
        self.conn.region.words[layout.SQ_TAIL // 8] = rng.getrandbits(64)
        doorbell.ring(self.conn.sq_efd)
        self._reconnect_after_server_saw_it()

    def _case_cq_head(self, rng: random.Random, data: bytes) -> None:
        assert self.conn is not None
        self._submit_raw(tag=1, opcode=Op.NOP, token=self.token)
        self.conn.region.words[layout.CQ_HEAD // 8] = rng.getrandbits(64)
        doorbell.ring(self.conn.sq_efd)
        self._reconnect_after_server_saw_it()

    def _case_header_page(self, rng: random.Random, data: bytes) -> None:
        assert self.conn is not None
        start = rng.randrange(layout.HEADER_SIZE)
        chunk = data[: layout.HEADER_SIZE - start]
        self.conn.region.buf[start : start + len(chunk)] = chunk
        self._reconnect_after_server_saw_it()

    def _reconnect_after_server_saw_it(self) -> None:
        # Give the server a moment to trip over it (it may or may not close the channel),
        # then start over on a fresh channel: our own view of the indices is now void.
        assert self.conn is not None
        doorbell.ring(self.conn.sq_efd)
        self._reconnect()

    def _case_hello(self, rng: random.Random, data: bytes) -> None:
        """A garbage or half-valid hello on a fresh connection: refused, never a crash."""
        shape = rng.randrange(3)
        if shape == 0:
            payload = data[:2000]
        elif shape == 1:
            payload = make_hello("app", FUZZ_GEOMETRY)[: rng.randrange(1, 40)] + data[:100]
        else:
            fields = {"version": rng.getrandbits(8), "role": self._random_value(rng),
                      "geometry": self._random_value(rng)}  # fmt: skip
            payload = self._packed(rng, fields, data)
        fds: list[int] = []
        if rng.random() < 0.5:
            fds = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(rng.randrange(1, 5))]
        try:
            sock, _ = exchange(self.socket_path, payload, fds, timeout=PROGRESS_DEADLINE)
            sock.close()
        except (HandshakeRefused, ProtocolError, ConnectionError):
            pass
        except OSError as exc:  # the server may hang up while we still send
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                raise
        finally:
            for fd in fds:
                os.close(fd)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class HealthCheck:
    """A separate, well-behaved channel: proves that the server lives and serves others."""

    def __init__(self, socket_path: Path | str, server_pid: int) -> None:
        self.server_pid = server_pid
        self.client = BlockingClient.connect(socket_path, geometry=FUZZ_GEOMETRY)
        self.payload = os.urandom(3000)
        reply = self.client.call(Op.CREATE, [b"health", 0o644, os.O_RDWR], ino=1).check()
        self.fh = reply.value
        self.client.call(Op.WRITE, fh=self.fh, offset=0, data=self.payload).check()
        self.checks = 0

    def check(self) -> None:
        try:
            os.kill(self.server_pid, 0)
        except ProcessLookupError:
            raise ServerDied("the server process died") from None
        reply = self.client.call(
            Op.READ, fh=self.fh, offset=0, size=len(self.payload), read_size=len(self.payload)
        ).check()
        assert reply.data == self.payload, "another channel's data changed under the fuzzer"
        self.client.call(Op.GETATTR, ino=1).check()
        self.checks += 1

    def close(self) -> None:
        self.client.close()
