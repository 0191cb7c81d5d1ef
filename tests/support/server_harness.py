"""A real filesystem server process for the operation tests, and clients to drive it.

`python -m tests.support.server_harness EXPORT SOCKET` runs the real server
(`backend_server.server.serve`, what `ringfs serve` runs) with every local user admitted.
It prints `ready`, then `open <channel_id> <peer pid>` and `closed <channel_id>` lines, so
tests can watch channel lifetimes from outside, and exits cleanly on SIGTERM.

Clients:
* `ServerProcess.client(role=...)`: a `channel.transport.shm_client.BlockingClient` in the
  test process.
* `UserClient`: a forked child that drops to another uid/gid *before* its handshake and then
  serves `call`s sent to it over a pipe, so the server sees a non-root peer (SO_PEERCRED).
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

from channel.protocol.layout import Geometry
from channel.transport.calls import Reply
from channel.transport.server_api import ServedChannel
from channel.transport.shm_client import BlockingClient
from harness.reporting_process import ReportingProcess
from tests.support.worlds import temporary_world

#: Geometry of test channels: small, but with buffers as large as FUSE's largest I/O.
GEOMETRY = Geometry(sq_entries=64, cq_entries=64, slot_size=8192, buf_count=16, buf_size=1 << 20)


async def serve(export: str, path: str) -> None:
    """The real server (`backend_server.server.serve`), reporting channel lifetimes on stdout."""
    from backend_server.server import AccessPolicy, serve

    def on_channel(channel: ServedChannel) -> None:
        channel_id = channel.channel_id
        print(f"open {channel_id} {channel.peer.pid}", flush=True)
        # Capture the id, not the channel (a cycle would keep the region mapped until a GC).
        channel.on_close.append(lambda: print(f"closed {channel_id}", flush=True))

    # Tests connect as other users too: open the socket to everyone.
    policy = AccessPolicy(everyone=True)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                functools.partial(serve, export, path, policy=policy, on_channel=on_channel)
            )
            print("ready", flush=True)
    finally:
        print("stopped", flush=True)


class ServerProcess(ReportingProcess):
    """The harness server as a child process; always killed on exit."""

    def __init__(
        self, export: Path, socket_path: Path, *, user: tuple[int, int] | None = None
    ) -> None:
        """`user`: (uid, gid) the server runs as (default: this process's, i.e. root)."""
        self.export = export
        user_args = ["--user", f"{user[0]}:{user[1]}"] if user else []
        module_args = ["tests.support.server_harness", str(export), str(socket_path), *user_args]
        super().__init__(socket_path, module_args, "server")

    def client(self, role: str = "app", geometry: Geometry = GEOMETRY) -> BlockingClient:
        return BlockingClient.connect(self.path, role=role, geometry=geometry)

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def wait_closed(self, channel_id: int, timeout: float = 10.0) -> None:
        self.wait_line(lambda line: line == f"closed {channel_id}", timeout)

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM, and the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        status = self.proc.wait(timeout=timeout)
        self._take(os.read(self._out, 1 << 20) + b"\n")
        return status


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll `condition` until it holds or the deadline passes (then AssertionError)."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


# -- a client running as another user ------------------------------------------------------
def _user_main(
    conn: multiprocessing.connection.Connection,
    socket_path: str,
    uid: int,
    gid: int,
    groups: list[int],
    role: str,
) -> None:
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)
    try:
        client = BlockingClient.connect(socket_path, role=role, geometry=GEOMETRY)
    except BaseException as exc:  # report, then die
        conn.send(("error", repr(exc)))
        return
    conn.send(("ready", client.channel_id))
    while True:
        try:
            request = conn.recv()
        except EOFError:
            break
        if request is None:
            break
        opcode, body, kwargs = request
        try:
            reply = client.call(opcode, body, **kwargs)
            conn.send(("reply", (reply.status, reply.value, reply.body, reply.data)))
        except BaseException as exc:
            conn.send(("error", repr(exc)))
    client.close()


class UserClient:
    """A BlockingClient in a child process that runs as `uid`/`gid` (dropped before the
    handshake). `call` has BlockingClient.call's signature."""

    def __init__(
        self,
        socket_path: Path,
        uid: int = 65534,
        gid: int = 65534,
        groups: tuple[int, ...] = (),
        role: str = "app",
    ) -> None:
        ctx = multiprocessing.get_context("fork")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_user_main,
            args=(child, str(socket_path), uid, gid, list(groups), role),
            daemon=True,
        )
        self.proc.start()
        child.close()
        kind, value = self._recv(20.0)
        if kind != "ready":
            raise RuntimeError(f"user client failed to connect: {value}")
        self.channel_id: int = value

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def _recv(self, timeout: float = 30.0) -> tuple[str, Any]:
        if not self._conn.poll(timeout):
            raise TimeoutError("user client did not answer")
        message: tuple[str, Any] = self._conn.recv()
        return message

    def call(self, opcode: int, body: Any = None, **kwargs: Any) -> Reply:
        self._conn.send((int(opcode), body, kwargs))
        kind, value = self._recv()
        if kind != "reply":
            raise RuntimeError(f"user client call failed: {value}")
        status, val, rbody, data = value
        return Reply(status, val, rbody, data, len(data) if data else 0)

    def kill(self) -> None:
        if self.proc.is_alive():
            os.kill(self.pid, signal.SIGKILL)
        self.proc.join(10)

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self._conn.send(None)
            except OSError:
                pass
            self.proc.join(10)
        self.kill()
        self._conn.close()

    def __enter__(self) -> UserClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("export")
    parser.add_argument("socket")
    parser.add_argument(
        "--user",
        help="uid:gid to drop to once started (the interpreter may "
        "live where only root can start it, as /root/.pyenv does here)",
    )
    args = parser.parse_args()
    if args.user:
        # Everything is imported before the drop: afterwards the stdlib may be unreadable.
        import encodings.ascii  # noqa: F401  (handshake reads /proc/<pid>/status as ascii)

        import backend_server.backend  # noqa: F401

        uid, gid = (int(x) for x in args.user.split(":"))
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    trio.run(serve, args.export, args.socket)


if __name__ == "__main__":
    main()


@contextmanager
def temporary_server(prefix: str, export: Path | None = None) -> Iterator[ServerProcess]:
    """A `ServerProcess` on `export` (default: a fresh 0755 `export` beside the socket), its
    socket in a fresh directory every user can reach; both removed afterwards."""
    with temporary_world(prefix) as base:
        if export is None:
            export = base / "export"
            export.mkdir()
            export.chmod(0o755)
        with ServerProcess(export, base / "sock") as srv:
            yield srv
