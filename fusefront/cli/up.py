"""`ringfs up EXPORT MOUNTPOINT [-o opts] [-f]`: start a server for EXPORT and mount it.

The mount process starts the server as its own child and stops it when the mount ends, so
`ringfs umount MOUNTPOINT` leaves no process behind.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from fusefront.cli.mount import add_mount_arguments, mount_main
from fusefront.cli.runtime import check_socket_path, default_socket


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "up",
        help="start a server for EXPORT and mount it (the everyday one-command use)",
        description="Start a server for EXPORT and mount it on MOUNTPOINT; returns once the "
        "mount is ready (the mount process stays in the background unless -f).",
    )
    p.add_argument("export", help="directory to export")
    add_mount_arguments(p)
    p.add_argument(
        "--socket",
        help="server socket path (default: under $XDG_RUNTIME_DIR/ringfs, /run/ringfs for "
        "root, else /tmp/ringfs-UID)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.export):
        print(f"ringfs: export {args.export} is not a directory", file=sys.stderr)
        return 1
    if args.socket:
        check_socket_path(args.socket)
    socket_path = args.socket or default_socket(args.mountpoint)
    return mount_main(args, socket_path=socket_path, export=os.path.abspath(args.export))
