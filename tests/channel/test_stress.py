"""Stress: two processes exchange over a million checksummed commands through busy phases
(a full pipeline, nobody sleeps) and idle phases (pauses that let both consumers park), and
none is lost, duplicated, corrupted, or waits past the sleep bound.

The client side is driven at the level of `ClientSide` plus `channel.transport.doorbell` (the same
pieces `BlockingClient` is made of) so that it can keep a whole ring of commands in flight:
one `call` at a time would make a million round trips take minutes.
"""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

from channel.protocol import limits
from channel.protocol.codec import pack_body
from channel.protocol.layout import ClientStat, Geometry, ServerStat
from channel.protocol.opcodes import Op
from channel.protocol.sides import ClientSide
from channel.transport import doorbell, handshake_io
from harness.echo_server import EchoServer

TOTAL = 1_000_000
PHASES = 10
PINGS_PER_IDLE_PHASE = 5
#: Longer than idle_spin + SLEEP_BOUND, so that the server and the client are parked.
IDLE_PAUSE = 0.03
#: A wake-up of a parked consumer normally takes a few hundred microseconds (eventfd write,
#: epoll, one trio scheduling round, and back). Were a wake-up lost, the bounded sleep would
#: still end it within SLEEP_BOUND. The slack on top covers what neither side controls on a
#: two-core machine shared with pytest and the kernel: being descheduled for a few CFS
#: time slices, and a garbage-collection pause. It is still far below what a lost wake-up
#: with an unbounded sleep (or a lost command) would show: an endless wait.
SLACK = 0.05
GEOMETRY = Geometry(sq_entries=256, cq_entries=256, slot_size=256, buf_count=256, buf_size=4096)
PAYLOAD = struct.Struct("<QQQQ")


def _payload(seq: int) -> bytes:
    return PAYLOAD.pack(seq, seq ^ 0x5A5A5A5A5A5A5A5A, seq * 2654435761 % (1 << 64), ~seq & 0xFF)


def test_million_commands(tmp_path: Path) -> None:
    with EchoServer(tmp_path / "sock") as server:
        conn = handshake_io.connect(server.path, geometry=GEOMETRY)
        try:
            _run(conn)
        finally:
            conn.close()


def _run(conn: handshake_io.ClientConnection) -> None:
    side = ClientSide(conn.region, conn.accept.token)
    buffers = side.buffers
    clock = doorbell.IdleClock(limits.DEFAULT_IDLE_SPIN)
    client_stats = side.stats
    server_stats = conn.region.server_stats()

    def on_sleep() -> None:
        client_stats[ClientStat.SLEEPS] += 1

    #: seq of each answered command: 1 once answered, so duplicates and losses show
    answered = bytearray(TOTAL)
    in_flight: dict[int, tuple[int, int, int]] = {}  # tag -> (seq, buffer, submit ns)
    busy_max = 0.0
    idle_latencies: list[float] = []
    next_seq = 0
    received = 0
    perf_ns = time.perf_counter_ns

    def submit(seq: int) -> None:
        buf = side.acquire_buffer()
        assert buf is not None
        data = _payload(seq)
        buffers[buf][: len(data)] = data
        tag, wake = side.submit(Op.WRITE, pack_body(seq), data_len=len(data), buf=buf)
        in_flight[tag] = (seq, buf, perf_ns())
        if wake:
            doorbell.ring(conn.sq_efd)
            client_stats[ClientStat.WAKEUPS_SENT] += 1

    def reap_all() -> list[float]:
        nonlocal received
        latencies = []
        while (completion := side.reap()) is not None:
            seq, buf, started = in_flight.pop(completion.tag)
            latencies.append((perf_ns() - started) / 1e9)
            side.release_buffer(buf)
            assert completion.status == 0
            assert completion.body == seq
            assert completion.value == zlib.crc32(_payload(seq)), f"corrupt payload {seq}"
            assert not answered[seq], f"command {seq} answered twice"
            answered[seq] = 1
            received += 1
        return latencies

    def nudge() -> None:
        doorbell.nudge_if_unconsumed(side.sq, conn.sq_efd)

    def wait() -> None:
        doorbell.wait_blocking(side.cq, conn.cq_efd, clock, on_sleep, conn.sock, nudge)

    started = time.monotonic()
    per_phase = (TOTAL - PHASES * PINGS_PER_IDLE_PHASE) // PHASES
    sleeps_before = server_stats[ServerStat.SLEEPS]
    wakeups_before = client_stats[ClientStat.WAKEUPS_SENT]
    for phase in range(PHASES):
        # Busy: keep the ring full.
        phase_end = next_seq + per_phase if phase < PHASES - 1 else TOTAL - PINGS_PER_IDLE_PHASE
        while next_seq < phase_end or in_flight:
            while next_seq < phase_end and side.can_submit() and side.free_buffers:
                submit(next_seq)
                next_seq += 1
            latencies = reap_all()
            if latencies:
                busy_max = max(busy_max, *latencies)
            else:
                wait()
        # Idle: pause until both sides park, then one command at a time.
        for _ in range(PINGS_PER_IDLE_PHASE if phase % 2 == 0 or phase == PHASES - 1 else 0):
            if next_seq >= TOTAL:
                break
            time.sleep(IDLE_PAUSE)
            submit(next_seq)
            next_seq += 1
            while in_flight:
                wait()
                idle_latencies.extend(reap_all())
    while next_seq < TOTAL:  # top up to exactly TOTAL (odd phases skipped their pings)
        submit(next_seq)
        next_seq += 1
        while in_flight:
            wait()
            reap_all()
    elapsed = time.monotonic() - started

    assert received == TOTAL and answered.count(1) == TOTAL, "commands lost"
    assert server_stats[ServerStat.COMMANDS] == TOTAL
    assert server_stats[ServerStat.COMPLETIONS] == TOTAL
    assert client_stats[ClientStat.COMPLETIONS] == TOTAL
    # The idle phases really parked the server, and every ping had to ring it awake.
    assert server_stats[ServerStat.SLEEPS] - sleeps_before >= len(idle_latencies)
    assert client_stats[ClientStat.WAKEUPS_SENT] - wakeups_before >= len(idle_latencies)
    assert len(idle_latencies) >= 5 * PINGS_PER_IDLE_PHASE
    worst_idle = max(idle_latencies)
    print(
        f"\n{TOTAL} commands in {elapsed:.1f}s ({TOTAL / elapsed:,.0f}/s); "
        f"idle wake-up round trips: max {worst_idle * 1e3:.2f} ms, "
        f"median {sorted(idle_latencies)[len(idle_latencies) // 2] * 1e3:.2f} ms; "
        f"busy max {busy_max * 1e3:.2f} ms (includes queueing behind a full ring); "
        f"server sleeps {server_stats[ServerStat.SLEEPS]}, client sleeps "
        f"{client_stats[ClientStat.SLEEPS]}"
    )
    assert worst_idle < limits.SLEEP_BOUND + SLACK
    assert elapsed < 110
