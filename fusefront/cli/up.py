"""`ringfs up EXPORT MOUNTPOINT [-o opts] [-f]`: start a server for EXPORT and mount it.

The mount process starts the server as its own child and stops it when the mount ends, so
`ringfs umount MOUNTPOINT` leaves no process behind.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from typing import Any

from fusefront.cli.mount import add_mount_arguments, mount_main


def runtime_dir() -> str:
    base = os.environ.get("XDG_RUNTIME_DIR") or ("/run" if os.geteuid() == 0 else "/tmp")
    path = os.path.join(base, "ringfs")
    os.makedirs(path, exist_ok=True)
    # Others may pass through (not list): server sockets are 0600 themselves, and the
    # drivers' control sockets beside them are meant for every local user.
    os.chmod(path, 0o711)
    return path


def default_socket(mountpoint: str) -> str:
    digest = hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:16]
    return os.path.join(runtime_dir(), f"{digest}.sock")


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "up", help="start a server for EXPORT and mount it (the everyday one-command use)"
    )
    p.add_argument("export", help="directory to export")
    add_mount_arguments(p)
    p.add_argument("--socket", help="server socket path (default: under /run/ringfs)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.export):
        print(f"ringfs: export {args.export} is not a directory", file=sys.stderr)
        return 1
    socket_path = args.socket or default_socket(args.mountpoint)
    return mount_main(args, socket_path=socket_path, export=os.path.abspath(args.export))
