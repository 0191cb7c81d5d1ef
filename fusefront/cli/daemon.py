"""Backgrounding a mount: fork, let the child mount, return once the mount is ready.

The parent waits on a pipe: the child writes `ok` once the mount is ready (FUSE's INIT done
and a request answered), or the error message that stopped it, so `ringfs mount`/`up`
without `-f` return only when the mount can be used, and fail with the real reason
otherwise. Until then the child's stderr is the caller's, so libfuse's own messages reach
the caller's terminal; afterwards the mount logs where fusefront.cli.logs points it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def run_in_background(body: Callable[[Callable[[], None]], None]) -> int:
    """Run `body(ready)` in a daemonised child; return 0 once it calls `ready()`, 1 if it
    fails first (its message goes to stderr)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the long-lived mount process
        os.close(read_end)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        status = 0

        def ready() -> None:
            os.write(write_end, b"ok")
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)

        try:
            body(ready)
        except BaseException as exc:  # the parent prints it; the child only reports it
            status = 1
            try:
                os.write(write_end, f"error: {exc}".encode())
            except OSError:
                pass
        os._exit(status)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 4096):
        chunks.append(chunk)
        if b"".join(chunks) == b"ok":
            break
    os.close(read_end)
    message = b"".join(chunks).decode(errors="replace")
    if message == "ok":
        return 0
    if not message:
        _, status = os.waitpid(pid, 0)
        message = f"error: the mount process exited with status {os.waitstatus_to_exitcode(status)}"
    print(f"ringfs: {message.removeprefix('error: ')}", file=sys.stderr)
    return 1
