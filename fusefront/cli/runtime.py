"""The per-user runtime directory: default server sockets and, without syslog, logs.

`$XDG_RUNTIME_DIR/ringfs` when the session has one, `/run/ringfs` for root, otherwise
`/tmp/ringfs-UID`. A directory in /tmp is created 0700 by us and used only if it is a real
directory (not a symlink) that we own and nobody else can write: another user cannot
pre-create it to catch our sockets.
"""

from __future__ import annotations

import hashlib
import os

from channel.transport.handshake_io import socket_path_problem
from fusefront.mountinfo import MountError, info_dir, own_directory


def runtime_dir() -> str:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    # Root's, without XDG: others may pass through (not list): server sockets are 0600
    # themselves, and the drivers' control sockets and descriptions there are for every user.
    path, mode = (os.path.join(xdg, "ringfs"), 0o700) if xdg else info_dir(os.geteuid())
    return own_directory(path, mode)


def mount_digest(mountpoint: str) -> str:
    return hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:16]


def default_socket(mountpoint: str) -> str:
    return os.path.join(runtime_dir(), f"{mount_digest(mountpoint)}.sock")


def default_log(mountpoint: str) -> str:
    """A backgrounded mount's log when there is no syslog socket (rotated, see logs.py)."""
    return os.path.join(runtime_dir(), f"{mount_digest(mountpoint)}.log")


def check_socket_path(path: str) -> None:
    """A socket `up`'s server will create at `path` (see `socket_path_problem`)."""
    problem = socket_path_problem(path)
    if problem is not None:
        raise MountError(f"cannot create socket {path}: {problem}")
