"""`ringfs mount SOCKET MOUNTPOINT [-o opts] [-f]`: mount a running server."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from channel.handshake import read_secret
from fusefront.cli.daemon import run_in_background
from fusefront.mount import MountError, run_driver
from fusefront.options import MountOptions, OptionError


def add_mount_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint")
    p.add_argument(
        "-o",
        dest="options",
        action="append",
        metavar="OPTS",
        help="comma-separated: cache=none|auto|always, writeback, transport=shm|socket, debug, "
        "noallow_other, nodefault_permissions (opting out of the defaults: default_permissions, "
        "and allow_other when root mounts), and FUSE options (ro, fsname=...)",
    )
    p.add_argument("-f", dest="foreground", action="store_true", help="stay in the foreground")
    p.add_argument("-d", "--debug", action="store_true", help="debug logging (implies -f)")


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("mount", help="mount a running server")
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
    """Shared by `mount` and `up`: parse options, then mount in the foreground or background."""
    try:
        opts = MountOptions.parse(args.options)
    except OptionError as exc:
        print(f"ringfs: {exc}", file=sys.stderr)
        return 2
    opts.debug = opts.debug or args.debug

    def body(ready: Any) -> None:
        run_driver(
            args.mountpoint, opts, socket_path=socket_path, export=export, ready=ready,
            secret=secret,
        )  # fmt: skip

    if args.foreground or opts.debug:
        try:
            body(lambda: None)
        except MountError as exc:
            print(f"ringfs: {exc}", file=sys.stderr)
            return 1
        return 0
    return run_in_background(body)


def run(args: argparse.Namespace) -> int:
    secret = None
    if args.secret_file:
        try:
            secret = read_secret(args.secret_file)
        except OSError as exc:
            print(f"ringfs: cannot read the secret file: {exc}", file=sys.stderr)
            return 2
    return mount_main(args, socket_path=args.socket, export=None, secret=secret)
