"""Running part of a test as another user: a forked child drops to a uid, gid and group list.

The suite runs as root; permission tests need the kernel to see an ordinary user. `as_user`
forks, sets the supplementary groups first, then the gid, then the uid (the order in which
root can still do each), runs the work and sends its result (or the exception it raised)
back through a pipe.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
from collections.abc import Callable, Sequence
from typing import Any

NOBODY = 65534


def as_user(
    work: Callable[[], Any], uid: int = NOBODY, gid: int = NOBODY, groups: Sequence[int] = ()
) -> Any:
    """Run `work` in a child that became uid/gid/groups; its result, or raise what it raised."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()

    def run() -> None:
        try:
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            child.send(("ok", work()))
        except BaseException as exc:  # sent back to the test to assert on
            child.send(("raised", exc))

    proc = ctx.Process(target=run)
    proc.start()
    child.close()
    try:
        if not parent.poll(60):
            raise TimeoutError("the child running as another user did not answer in 60 s")
        kind, value = parent.recv()
    finally:
        proc.join(30)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
    if kind == "raised":
        raise value
    return value


def outcome(call: Callable[[], object]) -> str:
    """ "ok", or the errno name the call failed with: comparable between two file systems."""
    try:
        call()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"
