"""Helpers for driving the server's operations through a blocking client, shared by the
tests of tests/server/: `FS` (one method per operation, each returning the Reply) and the
attribute index `A` (and `world_dir`, from `tests.support.worlds`, which they all use)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from channel.protocol.codec import unpack_body
from channel.protocol.opcodes import ATTR_FIELDS, ROOT_INO, Op
from channel.transport.calls import Reply
from fusefront import commands
from tests.support.worlds import world_dir

__all__ = ["FS", "NOBODY", "A", "entry_ino", "world_dir"]

NOBODY = 65534
A = {name: i for i, name in enumerate(ATTR_FIELDS)}
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class FS:
    """Thin helpers over a client: each returns the Reply; `*_ok` variants check it."""

    def __init__(self, client: Any, **ident: int) -> None:
        self.client = client
        self.ident = ident

    def call(self, opcode: int, body: Any = None, **kw: Any) -> Reply:
        reply: Reply = self.client.call(opcode, body, **{**self.ident, **kw})
        return reply

    def ok(self, opcode: int, body: Any = None, **kw: Any) -> Reply:
        reply = self.call(opcode, body, **kw)
        assert reply.status == 0, f"{Op(opcode).name} {body!r}: {os.strerror(-reply.status)}"
        return reply

    # names
    def lookup(self, parent: int, name: bytes) -> Reply:
        return self.call(Op.LOOKUP, commands.named(name), ino=parent)

    def ino(self, path: bytes, parent: int = ROOT_INO) -> int:
        for part in path.split(b"/"):
            parent = self.ok(Op.LOOKUP, commands.named(part), ino=parent).body[0][0]
        return parent

    def mkdir(self, parent: int, name: bytes, mode: int = 0o755, umask: int = 0) -> Reply:
        return self.call(Op.MKDIR, commands.mkdir(name, mode), ino=parent, umask=umask)

    def create(
        self, parent: int, name: bytes, mode: int = 0o644, flags: int = os.O_RDWR, umask: int = 0
    ) -> Reply:
        body = commands.create(name, mode, flags)
        return self.call(Op.CREATE, body, ino=parent, umask=umask)

    def getattr(self, ino: int) -> list[int]:
        attr: list[int] = self.ok(Op.GETATTR, ino=ino).body
        return attr

    def open(self, ino: int, flags: int = os.O_RDWR) -> Reply:
        return self.call(Op.OPEN, commands.open_flags(flags), ino=ino)

    def write(self, fh: int, data: bytes, offset: int = 0) -> Reply:
        return self.call(Op.WRITE, data=data, fh=fh, offset=offset)

    def read(self, fh: int, size: int, offset: int = 0) -> Reply:
        return self.call(Op.READ, fh=fh, offset=offset, read_size=size)

    def release(self, fh: int) -> Reply:
        return self.call(Op.RELEASE, fh=fh)

    def setattr(self, ino: int, fh: int = 0, **changes: Any) -> Reply:
        return self.call(Op.SETATTR, changes, ino=ino, fh=fh)

    def readdir_all(self, ino: int, page: int = 65536) -> list[tuple[bytes, list[int], int]]:
        fh = self.ok(Op.OPENDIR, ino=ino).value
        entries: list[tuple[bytes, list[int], int]] = []
        offset = 0
        try:
            while True:
                reply = self.ok(Op.READDIR, fh=fh, offset=offset, read_size=page)
                items = unpack_body(reply.data) if reply.data else []
                count, ends = reply.body
                assert count == len(items)
                entries.extend((n, a, o) for n, a, o in items)
                offset = items[-1][2] if items else offset
                if ends:  # and it is true: nothing follows
                    after = self.ok(Op.READDIR, fh=fh, offset=offset, read_size=page)
                    assert after.body == [0, True]
                    return entries
                assert items, "a page that does not end the listing must carry entries"
        finally:
            self.ok(Op.RELEASEDIR, fh=fh)


def entry_ino(reply: Reply) -> int:
    assert reply.status == 0, os.strerror(-reply.status)
    ino: int = reply.body[0][0]
    return ino


def run_workers(worker: Callable[[int], None], count: int, timeout: float = 300) -> None:
    """Run `worker(0)` ... `worker(count - 1)` in threads at once and wait for all of them
    (each within `timeout`); a thread still running after that fails the test."""
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert all(not t.is_alive() for t in threads), "a worker thread did not finish"
