"""Hostile local users for the limit tests: a child process that drops to another uid, takes
resources (connections, channels, handles) and holds them until the test lets go.

    with AsUser(65534, take) as report:   # take() -> (report, things to keep alive)
        ... the test checks that everyone else is still served ...

`take` runs in the child after setgroups/setgid/setuid; its report (anything picklable) comes
back to the test, or the exception it raised is raised in the test.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from channel.protocol import handshake
from channel.protocol.errors import HandshakeRefused
from channel.transport import handshake_io

NOBODY = 65534
#: How long a child may take to set up what it holds.
SETUP_TIMEOUT = 120.0


def _child(conn: multiprocessing.connection.Connection, uid: int, take: Callable[[], Any]) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    try:
        report, keep = take()
    except BaseException as exc:  # sent back to the test to raise there
        conn.send(("raised", exc))
        return
    conn.send(("ok", report))
    conn.recv()  # until the test lets go
    del keep


class AsUser:
    def __init__(self, uid: int, take: Callable[[], tuple[Any, Any]]) -> None:
        ctx = multiprocessing.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(child, uid, take))
        self._child_end = child

    def __enter__(self) -> Any:
        self._proc.start()
        self._child_end.close()
        if not self._conn.poll(SETUP_TIMEOUT):
            self._stop()
            raise AssertionError("the hostile child did not finish its setup")
        kind, value = self._conn.recv()
        if kind == "raised":
            self._stop()
            raise value
        return value

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _stop(self) -> None:
        try:
            self._conn.send("stop")
        except OSError:
            pass
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(10)


def idle_connections(path: str | Path, count: int, timeout: float = 10.0) -> tuple[Any, Any]:
    """Open `count` connections that never say hello; collect the answers that come within
    `timeout` of the last connect: (errno, reason) per refusal, in order, and the number of
    connections still waiting unanswered. Keeps the unanswered ones."""
    socks = []
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))  # blocking: waits while the listener's queue is full
        socks.append(sock)
    refusals, waiting = answers(socks, timeout, expect=None)
    return (refusals, len(waiting)), waiting


def answers(
    socks: list[socket.socket], timeout: float, expect: int | None
) -> tuple[list[tuple[int, str]], list[socket.socket]]:
    """Read the refusals that arrive on `socks`: until `expect` of them have (or, with None,
    until none arrives for a while, bounded by `timeout`)."""
    refusals: list[tuple[int, str]] = []
    waiting = list(socks)
    deadline = time.monotonic() + timeout
    while waiting and (expect is None or len(refusals) < expect):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        # With no count to wait for, a quiet 0.5 s means the rest are not being answered.
        ready, _, _ = select.select(waiting, [], [], left if expect is not None else min(left, 0.5))
        if not ready:
            if expect is None:
                break
            continue
        for sock in ready:
            waiting.remove(sock)
            refusals.append(refusal_of(sock))
    return refusals, waiting


def refusal_of(sock: socket.socket) -> tuple[int, str]:
    """The refusal a server or driver sent on `sock`, as (errno, reason)."""
    try:
        handshake.parse_answer(handshake_io.recv_message(sock))
    except HandshakeRefused as exc:
        return exc.errno or 0, exc.strerror or str(exc)
    finally:
        sock.close()
    raise AssertionError("a connection that never said hello was accepted")
