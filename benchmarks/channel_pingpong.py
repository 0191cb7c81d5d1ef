"""Round-trip latency and throughput: shared-memory channel versus the Unix-socket transport.

Both talk to the same echo server process (harness/echo_server.py) with the same msgpack
messages. Measured per transport:
  * busy ping-pong: one NOP in flight at a time, back to back (p50/p99, round trips/s), in
    rounds that alternate between the transports, so that both see the same noise of a
    shared machine; each figure is the median over the rounds;
  * after idle: a pause long enough for the server (and client) to park, then one NOP,
    i.e. the cost of a doorbell wake-up;
  * pipelined: many trio tasks in flight at once (commands/s).

The last line is `channel_pingpong: ratio=X.X`, socket p50 / channel p50 (busy).
Usage: python benchmarks/channel_pingpong.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from channel.protocol.opcodes import Op  # noqa: E402
from channel.transport.shm_client import BlockingClient, TrioClient  # noqa: E402
from channel.transport.socket_client import SocketBlockingClient, SocketTrioClient  # noqa: E402
from harness.echo_server import EchoServer  # noqa: E402

IDLE_PAUSE = 0.03
BODY = ["pingpong", 12345, b"0123456789abcdef"]


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def ping_pong(call: Callable[..., Any], rounds: int) -> tuple[float, float, float]:
    """(p50 µs, p99 µs, round trips per second)."""
    for _ in range(min(200, rounds)):  # warm up caches and the server's spin
        call(Op.NOP, BODY)
    latencies = []
    perf = time.perf_counter_ns
    started = perf()
    for _ in range(rounds):
        t0 = perf()
        call(Op.NOP, BODY)
        latencies.append(perf() - t0)
    elapsed = (perf() - started) / 1e9
    latencies.sort()
    return _percentile(latencies, 0.5) / 1e3, _percentile(latencies, 0.99) / 1e3, rounds / elapsed


def after_idle(call: Callable[..., Any], rounds: int) -> tuple[float, float]:
    latencies = []
    for _ in range(rounds):
        time.sleep(IDLE_PAUSE)  # the point: let the consumers park
        t0 = time.perf_counter_ns()
        call(Op.NOP, BODY)
        latencies.append(time.perf_counter_ns() - t0)
    latencies.sort()
    return _percentile(latencies, 0.5) / 1e3, _percentile(latencies, 0.99) / 1e3


async def pipelined(open_client: Any, path: Path, total: int, tasks: int) -> float:
    async with open_client(path) as client:
        per_task = total // tasks

        async def worker() -> None:
            for _ in range(per_task):
                await client.call(Op.NOP, BODY)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(tasks):
                nursery.start_soon(worker)
        return per_task * tasks / (time.perf_counter() - started)


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (under a minute)")
    args = parser.parse_args()
    rounds, per_round, idle_rounds, piped = (
        (7, 2_000, 30, 20_000) if args.quick else (15, 10_000, 200, 100_000)
    )

    names = ("channel (shm)", "unix socket")
    busy: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
    rows = []
    with tempfile.TemporaryDirectory() as tmp, EchoServer(Path(tmp) / "sock") as server:
        with (
            BlockingClient.connect(server.path) as shm,
            SocketBlockingClient.connect(server.path) as sock,
        ):
            calls = {names[0]: shm.call, names[1]: sock.call}
            for _ in range(rounds):
                for name in names:
                    busy[name].append(ping_pong(calls[name], per_round))
            idle = {name: after_idle(calls[name], idle_rounds) for name in names}
        opens = {names[0]: TrioClient.open, names[1]: SocketTrioClient.open}
        for name in names:
            throughput = trio.run(pipelined, opens[name], server.path, piped, 64)
            p50, p99, rate = (median([r[i] for r in busy[name]]) for i in range(3))
            rows.append((name, p50, p99, rate, *idle[name], throughput))

    print(
        f"{'transport':<15}{'p50 µs':>9}{'p99 µs':>9}{'rt/s':>9}"
        f"{'idle p50':>10}{'idle p99':>10}{'piped/s':>10}"
    )
    for name, p50, p99, rate, idle50, idle99, throughput in rows:
        print(
            f"{name:<15}{p50:>9.1f}{p99:>9.1f}{rate:>9.0f}"
            f"{idle50:>10.1f}{idle99:>10.1f}{throughput:>10.0f}"
        )
    ratios = [sock[0] / shm[0] for shm, sock in zip(busy[names[0]], busy[names[1]], strict=True)]
    print(f"ratio per round: {' '.join(f'{r:.1f}' for r in ratios)}")
    print(f"channel_pingpong: ratio={median(ratios):.1f}")


if __name__ == "__main__":
    main()
