"""Client endpoints against a real echo server process: replies, data, errors, concurrency,
peer death in both directions, and the socket transport's identical answers."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from channel.protocol import layout, limits
from channel.protocol.errors import ChannelClosed
from channel.protocol.layout import ClientStat, Geometry, ServerStat
from channel.protocol.opcodes import Op
from channel.transport import doorbell
from channel.transport.calls import Reply
from channel.transport.shm_client import BlockingClient, TrioClient
from channel.transport.socket_client import SocketBlockingClient, SocketTrioClient
from harness.echo_server import EchoServer
from harness.reporting_process import REPO

SMALL = Geometry(sq_entries=16, cq_entries=16, slot_size=1024, buf_count=4, buf_size=8192)
#: The bound within which each side must notice its peer's death.
NOTICE = 1.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EchoServer]:
    with EchoServer(tmp_path / "sock") as srv:
        yield srv


def _exchanges(call: object) -> list[Reply]:
    """The same calls on any blocking endpoint."""
    c = call  # a bound `call` of either transport
    assert callable(c)
    payload = bytes(range(256)) * 10
    return [
        c(Op.NOP, ["hello", 1, {"k": b"v"}]),
        c(Op.WRITE, None, data=payload, fh=3, offset=100),
        c(Op.READ, None, data=payload, read_size=1000),
        c(Op.READ, None, read_size=300, offset=0x41),
        c(Op.NOP, {"fail": errno.ENOENT}),
        c(Op.NOP, None),
    ]


def test_blocking_replies(server: EchoServer) -> None:
    with BlockingClient.connect(server.path, geometry=SMALL) as client:
        nop, write, read, fill, fail, empty = _exchanges(client.call)
        assert nop.check().body == ["hello", 1, {"k": b"v"}] and nop.data is None
        assert write.value == zlib.crc32(bytes(range(256)) * 10)
        assert read.data == (bytes(range(256)) * 10)[:1000] and read.data_len == 1000
        assert fill.data == b"A" * 300
        with pytest.raises(FileNotFoundError):
            fail.check("lookup")
        assert empty.body is None and empty.status == 0
        dest = bytearray(64)
        into = client.call_into(Op.READ, dest, offset=0x42)
        assert into.data is None and into.data_len == 64 and dest == b"B" * 64
        stats = client.region.client_stats()
        assert stats[ClientStat.COMMANDS] == stats[ClientStat.COMPLETIONS] == 7
        with pytest.raises(ValueError):
            client.call(Op.WRITE, data=b"x" * (SMALL.buf_size + 1))


def test_socket_transport_identical(server: EchoServer) -> None:
    with (
        BlockingClient.connect(server.path, geometry=SMALL) as shm,
        SocketBlockingClient.connect(server.path) as sock,
    ):
        assert _exchanges(shm.call) == _exchanges(sock.call)
        a, b = bytearray(100), bytearray(100)
        assert shm.call_into(Op.READ, a, offset=7) == sock.call_into(Op.READ, b, offset=7)
        assert a == b == bytes([7]) * 100


async def test_trio_out_of_order(server: EchoServer) -> None:
    order: list[int] = []

    async def one(client: TrioClient, i: int, delay: float) -> None:
        payload = os.urandom(100 + i)
        reply = await client.call(Op.WRITE, {"sleep": delay, "i": i}, data=payload)
        assert reply.body == {"sleep": delay, "i": i}
        assert reply.value == zlib.crc32(payload)
        order.append(i)

    delays = [(40 - i) * 0.002 for i in range(40)]  # later submissions finish first
    with trio.fail_after(10):
        async with TrioClient.open(server.path, geometry=SMALL) as client:
            async with trio.open_nursery() as nursery:
                for i, delay in enumerate(delays):
                    nursery.start_soon(one, client, i, delay)
            # SMALL has 16 slots and 4 buffers: back-pressure held the rest back.
            assert client.max_in_flight == 16
    assert sorted(order) == list(range(40))
    assert order != list(range(40))


async def test_trio_many_in_flight_and_cancel(server: EchoServer) -> None:
    with trio.fail_after(20):
        async with TrioClient.open(server.path, geometry=SMALL) as client:
            # A cancelled call leaves its command in flight; the client must retire it when
            # the answer comes and keep working.
            with trio.move_on_after(0.05):
                await client.call(Op.READ, {"sleep": 0.3}, data=b"abc", read_size=3)
            results: dict[int, Reply] = {}

            async def one(i: int) -> None:
                results[i] = await client.call(Op.READ, [i], data=i.to_bytes(4), read_size=4)

            async with trio.open_nursery() as nursery:
                for i in range(500):
                    nursery.start_soon(one, i)
            for i, reply in results.items():
                assert (reply.body, reply.data) == ([i], i.to_bytes(4))
            assert len(results) == 500
            await trio.sleep(0.3)  # let the cancelled command's answer arrive
            assert client.side.free_buffers == SMALL.buf_count


async def test_trio_answers_reaped_inline_still_yield(server: EchoServer) -> None:
    """While the server is busy, a caller reaps its own answer without a scheduler pass, yet
    a loop of such calls still lets the other tasks of its thread run, and a call made in a
    cancelled scope sends nothing."""
    calls = 400
    other_ran = 0

    async def other(done: trio.Event) -> None:
        nonlocal other_ran
        while not done.is_set():
            other_ran += 1
            await trio.lowlevel.checkpoint()

    with trio.fail_after(20):
        async with TrioClient.open(server.path, geometry=SMALL) as client:
            done = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(other, done)
                for i in range(calls):
                    reply = await client.call(Op.NOP, [i])
                    assert reply.body == [i]
                done.set()
            assert client.inline_reaps > 0
            # the other task first runs at the caller's first pass through the scheduler
            assert other_ran >= calls // limits.INLINE_REAP_RUN - 1
            sent = client.side.stats[ClientStat.COMMANDS]
            with trio.CancelScope() as scope:
                scope.cancel()
                with pytest.raises(trio.Cancelled):
                    await client.call(Op.NOP, ["never"])
            assert client.side.stats[ClientStat.COMMANDS] == sent


async def test_socket_trio_client(server: EchoServer) -> None:
    async with SocketTrioClient.open(server.path) as client:
        results: list[Reply] = []

        async def one(i: int) -> None:
            results.append(await client.call(Op.READ, {"sleep": 0.01 * (i % 5)}, read_size=i))

        async with trio.open_nursery() as nursery:
            for i in range(1, 50):
                nursery.start_soon(one, i)
        assert sorted(len(r.data or b"") for r in results) == list(range(1, 50))


_CLIENT = """
import sys, time
from channel.transport.shm_client import BlockingClient
from channel.protocol.opcodes import Op
c = BlockingClient.connect(sys.argv[1])
c.call(Op.NOP, 1)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("busy", [False, True])
def test_server_notices_client_kill(server: EchoServer, busy: bool) -> None:
    client = subprocess.Popen(
        [sys.executable, "-c", _CLIENT, str(server.path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == b"ready\n"
        line = server.wait_line(lambda ln: ln.startswith("open ") and ln.endswith(f" {client.pid}"))
        channel_id = line.split()[1]
        if busy:
            # A second, busy channel must not be disturbed by the death of the first.
            other = BlockingClient.connect(server.path, geometry=SMALL)
        client.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        server.wait_line(lambda ln: ln == f"closed {channel_id}", timeout=NOTICE + 1)
        assert time.monotonic() - killed < NOTICE
        if busy:
            with other:
                assert other.call(Op.NOP, "still here").body == "still here"
    finally:
        client.kill()
        client.wait()
        if client.stdout is not None:
            client.stdout.close()


def test_blocking_client_notices_server_kill(server: EchoServer) -> None:
    client = BlockingClient.connect(server.path, geometry=SMALL)
    killed: list[float] = []

    def kill() -> None:
        killed.append(time.monotonic())
        os.kill(server.pid, signal.SIGKILL)

    timer = threading.Timer(0.2, kill)
    try:
        timer.start()
        with pytest.raises(ChannelClosed):
            client.call(Op.NOP, {"sleep": 30})  # waiting (parked) when the server dies
        assert time.monotonic() - killed[0] < NOTICE
        with pytest.raises(ChannelClosed):
            client.call(Op.NOP, 1)
    finally:
        timer.cancel()
        timer.join()
        client.close()


def test_idle_blocking_client_then_server_gone(server: EchoServer) -> None:
    with BlockingClient.connect(server.path, geometry=SMALL) as client:
        assert client.call(Op.NOP, 1).body == 1
        server.kill()
        started = time.monotonic()
        with pytest.raises(ChannelClosed):
            client.call(Op.NOP, 2)
        assert time.monotonic() - started < NOTICE


async def test_trio_waiters_fail_when_server_dies(server: EchoServer) -> None:
    failures: list[type[BaseException]] = []

    async def one(client: TrioClient) -> None:
        try:
            await client.call(Op.NOP, {"sleep": 30})
        except ChannelClosed as exc:
            failures.append(type(exc))

    with trio.fail_after(10):
        async with TrioClient.open(server.path, geometry=SMALL) as client:
            async with trio.open_nursery() as nursery:
                for _ in range(40):  # more than max_in_flight: some wait for a permit
                    nursery.start_soon(one, client)
                await trio.sleep(0.2)
                os.kill(server.pid, signal.SIGKILL)
                killed = trio.current_time()
            assert trio.current_time() - killed < NOTICE
            with pytest.raises(ChannelClosed):
                await client.call(Op.NOP, 1)
    assert failures == [ChannelClosed] * 40


def test_server_parks_and_wakes(server: EchoServer) -> None:
    """An idle channel lets the server sleep; a command still gets through promptly."""
    with BlockingClient.connect(server.path, geometry=SMALL) as client:
        client.call(Op.NOP, 0)
        server_stats = client.region.server_stats()
        before = server_stats[ServerStat.SLEEPS]
        # a park is counted when its sleep ends: at most IDLE_POLLER_SLEEP after it began
        deadline = time.monotonic() + limits.IDLE_POLLER_SLEEP + 2
        while server_stats[ServerStat.SLEEPS] == before:  # wait for the server to park
            assert time.monotonic() < deadline
            time.sleep(0.005)
        for i in range(5):
            time.sleep(0.03)
            started = time.monotonic()
            assert client.call(Op.NOP, i).body == i
            assert time.monotonic() - started < 0.2
        assert client.region.client_stats()[ClientStat.WAKEUPS_SENT] >= 1


def test_random_payloads(server: EchoServer) -> None:
    rng = random.Random(7)
    with BlockingClient.connect(server.path, geometry=SMALL) as client:
        for _ in range(300):
            payload = rng.randbytes(rng.randrange(0, SMALL.buf_size + 1))
            reply = client.call(Op.READ, None, data=payload, read_size=len(payload) or 1)
            assert reply.value == (zlib.crc32(payload) if payload else 0)
            assert reply.data == (payload if payload else b"\x00")


def _reap(client: BlockingClient) -> Reply:
    completion = client._wait_any()
    return Reply(completion.status, completion.value, completion.body)


def test_rejected_commands_answered(server: EchoServer) -> None:
    with BlockingClient.connect(server.path, geometry=SMALL) as client:
        # A buffer index outside the pool: EPROTO; the channel stays usable.
        client.side.submit(Op.NOP, b"", buf=99)
        doorbell.ring(client._sq_efd)
        assert _reap(client).status == -errno.EPROTO
        # A wrong token: EACCES, counted by the server.
        token, client.side.token = client.side.token, b"\x01" * 16
        assert client.call(Op.NOP, 1).status == -errno.EACCES
        client.side.token = token
        assert client.call(Op.NOP, 2).body == 2
        stats = client.region.server_stats()
        assert stats[ServerStat.AUTH_FAILURES] == 1
        assert stats[ServerStat.PROTOCOL_ERRORS] == 1


def test_corrupt_ring_closes_only_that_channel(server: EchoServer) -> None:
    with (
        BlockingClient.connect(server.path, geometry=SMALL) as bad,
        BlockingClient.connect(server.path, geometry=SMALL) as good,
    ):
        bad.call(Op.NOP, 0)
        bad.region.words[layout.SQ_TAIL // 8] += 1000  # impossible: more than the ring holds
        doorbell.ring(bad._sq_efd)
        server.wait_line(lambda ln: ln == f"closed {bad.channel_id}", timeout=NOTICE)
        with pytest.raises(ChannelClosed):
            bad.call(Op.NOP, 1)
        assert good.call(Op.NOP, "fine").body == "fine"


def test_socket_client_notices_server_kill(server: EchoServer) -> None:
    with SocketBlockingClient.connect(server.path) as client:
        assert client.call(Op.NOP, 1).body == 1
        server.kill()
        with pytest.raises(ChannelClosed):
            client.call(Op.NOP, 2)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_idle_server_costs_almost_no_cpu(server: EchoServer) -> None:
    with (
        BlockingClient.connect(server.path, geometry=SMALL) as a,
        BlockingClient.connect(server.path, geometry=SMALL) as b,
    ):
        a.call(Op.NOP, 1)
        b.call(Op.NOP, 1)
        time.sleep(0.1)  # past idle_spin: the poller parks
        cpu_before, wall_before = _cpu_seconds(server.pid), time.monotonic()
        time.sleep(2.0)  # the measurement window itself
        cpu = _cpu_seconds(server.pid) - cpu_before
        share = cpu / (time.monotonic() - wall_before)
        assert share < 0.02, f"idle server used {share:.1%} of a core"
        assert a.call(Op.NOP, 2).body == 2


def test_server_releases_descriptors(server: EchoServer) -> None:
    """A closed channel's memfd mapping, eventfds and socket leave the server at once, not
    at some later garbage collection."""
    fd_dir = Path(f"/proc/{server.pid}/fd")
    baseline = len(list(fd_dir.iterdir()))
    for _ in range(3):
        with BlockingClient.connect(server.path, geometry=SMALL) as client:
            client.call(Op.READ, None, data=b"abc", read_size=3)
            assert len(list(fd_dir.iterdir())) > baseline
        server.wait_line(lambda ln, cid=client.channel_id: ln == f"closed {cid}")
        deadline = time.monotonic() + 1.0
        while len(list(fd_dir.iterdir())) != baseline:
            assert time.monotonic() < deadline, "the server kept a closed channel's fds"
            time.sleep(0.01)
