"""The msgpack bodies of the file-system commands, one function per opcode: the one encoder the
driver (`fusefront.driver`), the application channels' plans (`fusefront.direct`) and the
tests' helper build them with, so a body's layout is written once on the client side. The
server decodes them (`backend_server.dispatch` and the `ops_*` modules); the header fields
(`ino`, `fh`, `offset`, ...) travel beside the body, not in it.
"""

from __future__ import annotations

from typing import Any

Body = list[Any]


def named(name: bytes) -> Body:
    """LOOKUP, UNLINK, RMDIR: one entry of the directory `ino`."""
    return [name]


def mknod(name: bytes, mode: int, rdev: int) -> Body:
    return [name, mode, rdev]


def mkdir(name: bytes, mode: int) -> Body:
    return [name, mode]


def symlink(name: bytes, target: bytes) -> Body:
    return [name, target]


def rename(name: bytes, new_parent: int, new_name: bytes, flags: int = 0) -> Body:
    """RENAME of `name` in the directory `ino` to `new_name` in `new_parent`."""
    return [name, new_parent, new_name, flags]


def link(new_parent: int, new_name: bytes) -> Body:
    """LINK of the inode `ino` as `new_name` in `new_parent`."""
    return [new_parent, new_name]


def open_flags(flags: int) -> Body:
    """OPEN and RESTORE_HANDLE: the open(2) flags."""
    return [flags]


def create(name: bytes, mode: int, flags: int) -> Body:
    return [name, mode, flags]


def access(mode: int) -> Body:
    return [mode]


def resolve(parts: list[bytes], count_lookup: bool) -> Body:
    """RESOLVE of a path's components beneath `ino`; `count_lookup` makes the server count
    a lookup of the result (given back later with BATCH_FORGET)."""
    return [parts, count_lookup]
