"""`ringfs mount SOCKET MOUNTPOINT [-o opts] [-f]`: mount a running server."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from channel.transport.handshake_io import read_secret
from fusefront.cli import logs
from fusefront.cli.daemon import run_in_background
from fusefront.cli.notify import notify
from fusefront.cli.runtime import default_log
from fusefront.mountinfo import MountError
from fusefront.options import MountOptions, OptionError


def add_mount_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint")
    p.add_argument(
        "-o",
        dest="options",
        action="append",
        metavar="OPTS",
        help="comma-separated: cache=none|auto|always, writeback, noxattr, transport=shm|socket, "
        "debug, noallow_other, nodefault_permissions (opting out of the defaults: "
        "default_permissions, and allow_other when root mounts), and FUSE options (ro, fsname=...)",
    )
    p.add_argument(
        "-f",
        dest="foreground",
        action="store_true",
        help="stay in the foreground (SIGTERM, SIGINT or SIGHUP unmount and exit 0)",
    )
    p.add_argument("-d", "--debug", action="store_true", help="debug logging (implies -f)")
    logs.add_log_arguments(p)


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "mount", help="mount a running server", description="Mount a server started by `serve`."
    )
    p.add_argument("socket", help="the server's Unix socket")
    p.add_argument(
        "--secret-file", help="present this secret (a server run with --secret-file wants it)"
    )
    add_mount_arguments(p)
    p.set_defaults(run=run)


def mount_main(
    args: argparse.Namespace,
    *,
    socket_path: str,
    export: str | None,
    secret: bytes | None = None,
) -> int:
    """Shared by `mount` and `up`: parse options, then mount in the foreground or background.
    Returns once the mount is ready (background) or has ended (foreground)."""
    try:
        opts = MountOptions.parse(args.options)
    except OptionError as exc:
        print(f"ringfs: {exc}", file=sys.stderr)
        return 2
    opts.debug = opts.debug or args.debug
    background = not (args.foreground or opts.debug)
    if opts.debug:
        args.debug = True
    level = logs.level_of(args)

    def body(detach: Callable[[], None]) -> None:
        from fusefront.mount import run_driver  # trio and pyfuse3: only for a mount

        def ready() -> None:
            detach()
            if background:
                logs.configure(args, background=True, fallback_file=default_log(args.mountpoint))
            notify(f"READY=1\nMAINPID={os.getpid()}")

        run_driver(
            args.mountpoint,
            opts,
            socket_path=socket_path,
            export=export,
            ready=ready,
            secret=secret,
            log_level=level,
        )

    if background:
        return run_in_background(body)
    try:
        body(lambda: None)
    except MountError as exc:
        print(f"ringfs: {exc}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        secret = read_secret(args.secret_file)
    except OSError as exc:
        print(f"ringfs: cannot read the secret file: {exc}", file=sys.stderr)
        return 2
    return mount_main(args, socket_path=args.socket, export=None, secret=secret)
