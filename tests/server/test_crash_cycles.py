"""Clients that crash: after 1,000 connect-and-crash cycles the server's descriptor count and
memory are back at their baseline. Each client opens files and directories (so the server
holds inodes and handles for it), then dies with SIGKILL mid-session."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from channel.protocol.opcodes import Op
from channel.transport.shm_client import BlockingClient
from tests.support.server_harness import GEOMETRY, ServerProcess

CYCLES = 1000


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _crashing_client(socket_path: Path) -> int:
    """Fork a client that connects, takes some state on the server, then waits to be killed.
    Returns its pid once it has done its work (it writes one byte to say so)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            client = BlockingClient.connect(socket_path, geometry=GEOMETRY)
            entry = client.call(Op.LOOKUP, [b"data"], ino=1).check()
            ino = entry.body[0][0]
            client.call(Op.OPEN, [os.O_RDONLY], ino=ino).check()  # a handle left open
            client.call(Op.OPENDIR, ino=1).check()  # and a directory handle
            client.call(Op.READ, fh=1, offset=0, size=4096, read_size=4096)
            os.write(write_end, b"x")
            signal.pause()
        finally:
            os._exit(1)
    os.close(write_end)
    assert os.read(read_end, 1) == b"x", "the client failed before crashing"
    os.close(read_end)
    return pid


def _settled_fd_count(server: ServerProcess) -> int:
    """The server's fd count once it has stopped changing: a channel's `closed` line is
    printed by an on_close callback, before the channel's own descriptors are closed."""
    deadline = time.monotonic() + 10
    counts = [server.fd_count()]
    while len(counts) < 5 or len(set(counts[-5:])) > 1:
        assert time.monotonic() < deadline, f"fd count never settled: {counts[-10:]}"
        time.sleep(0.02)  # sampling another process
        counts.append(server.fd_count())
    return counts[-1]


def test_thousand_connect_and_crash_cycles_leave_no_trace(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "data").write_bytes(os.urandom(8192))
    with ServerProcess(export, tmp_path / "server.sock") as server:
        # Warm up (imports, caches, allocator arenas), then take the baseline.
        for _ in range(20):
            pid = _crashing_client(server.path)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        server.wait_line(lambda line: line == "closed 20", timeout=10)
        fds, rss = _settled_fd_count(server), _rss_kib(server.pid)
        for _ in range(CYCLES):
            pid = _crashing_client(server.path)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        last = 20 + CYCLES
        server.wait_line(lambda line: line == f"closed {last}", timeout=30)
        deadline = time.monotonic() + 10
        while server.fd_count() != fds:  # the last channels' teardown may still be running
            assert time.monotonic() < deadline, f"fds {server.fd_count()} != baseline {fds}"
            time.sleep(0.01)  # another process's cleanup
        grown = _rss_kib(server.pid) - rss
        print(f"after {CYCLES} crashes: fds {server.fd_count()} (baseline {fds}), "
              f"RSS {rss} -> {rss + grown} KiB")  # fmt: skip
        assert grown < 8 * 1024, f"server memory grew by {grown} KiB over {CYCLES} crashes"
        with BlockingClient.connect(server.path, geometry=GEOMETRY) as client:
            client.call(Op.GETATTR, ino=1).check()  # and it still serves
